"""``csms tx``: list, show and export charging transactions through the operator API.

The filters are those of ``GET /v1/transactions``: ``--station``, ``--token``, ``--active``
/ ``--ended`` (``state``), ``--since`` / ``--until`` (``started_after`` <= start <
``started_before``, ISO 8601). ``tx export`` streams ``GET /v1/transactions.csv`` to a file
or stdout, counting rows on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import IO, Any

import httpx

from cli.api_client import (
    EXIT_FAILED,
    ApiClient,
    Progress,
    add_api_flags,
    cell,
    print_json,
    segment,
    table,
)
from cli.common import CommandError, progress

__all__ = ["CsvRows", "add_commands"]


def add_commands(commands: Any) -> None:
    """The ``tx`` command group."""
    group = commands.add_parser("tx", help="list, show and export transactions (operator API)")
    sub = group.add_subparsers(dest="tx_command", required=True)

    listing = sub.add_parser("list", help="list transactions, newest first")
    _add_filters(listing)
    listing.add_argument("--limit", type=_positive, help="at most this many transactions")
    add_api_flags(listing)
    listing.set_defaults(api_command=_list)

    show = sub.add_parser("show", help="one transaction with its meter readings")
    show.add_argument("station_id")
    show.add_argument("transaction_id")
    add_api_flags(show)
    show.set_defaults(api_command=_show)

    export = sub.add_parser(
        "export",
        help="download transactions as CSV",
        description="Stream GET /v1/transactions.csv to -o FILE (written whole or not at "
        "all) or to stdout; rows so far are counted on stderr.",
    )
    _add_filters(export)
    export.add_argument("-o", "--output", help="file to write (default stdout)")
    add_api_flags(export, as_json=False)
    export.set_defaults(api_command=_export)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--station", help="only this station's")
    parser.add_argument("--token", help="only those of this idToken / idTag")
    state = parser.add_mutually_exclusive_group()
    state.add_argument(
        "--active", dest="state", action="store_const", const="Active", help="only running ones"
    )
    state.add_argument(
        "--ended", dest="state", action="store_const", const="Ended", help="only ended ones"
    )
    parser.add_argument("--since", help="started at or after this ISO 8601 time")
    parser.add_argument("--until", help="started before this ISO 8601 time")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "station": args.station,
        "token": args.token,
        "state": args.state,
        "started_after": args.since,
        "started_before": args.until,
    }


def _kwh(wh: float | None) -> str | None:
    return None if wh is None else f"{wh / 1000:.3f}"


def _cost(cost: dict[str, Any] | None) -> str | None:
    return f"{cost['total']} {cost['currency']}" if cost else None


def _list(client: ApiClient, args: argparse.Namespace) -> int:
    found = client.items(
        "/transactions", _filters(args), limit=args.limit, progress=Progress("transactions")
    )
    if args.json:
        print_json(found)
        return 0
    if not found:
        progress("no transactions match")
        return 0
    rows = [
        [
            tx["station_id"],
            tx["transaction_id"],
            tx["state"],
            tx["evse_id"] if tx["evse_id"] is not None else tx["connector_id"],
            tx["id_token"],
            tx["started_at"],
            tx["ended_at"],
            _kwh(tx["energy_wh"]),
            _cost(tx["cost"]),
        ]
        for tx in found
    ]
    headers = ["STATION", "TRANSACTION", "STATE", "EVSE", "TOKEN", "STARTED", "ENDED", "KWH"]
    print(table([*headers, "COST"], rows), flush=True)
    return 0


def _show(client: ApiClient, args: argparse.Namespace) -> int:
    tx = client.get(f"/transactions/{segment(args.station_id)}/{segment(args.transaction_id)}")
    if args.json:
        print_json(tx)
        return 0
    cost = tx.get("cost")
    facts = [
        ("station", tx["station_id"]),
        ("transaction", tx["transaction_id"]),
        ("state", tx["state"]),
        ("OCPP version", tx["version"]),
        ("EVSE", tx["evse_id"]),
        ("connector", tx["connector_id"]),
        ("token", tx["id_token"]),
        ("token type", tx["id_token_type"]),
        ("started", tx["started_at"]),
        ("ended", tx["ended_at"]),
        ("stop reason", tx["stop_reason"]),
        ("charging state", tx["charging_state"]),
        ("meter start Wh", tx["meter_start_wh"]),
        ("meter stop Wh", tx["meter_stop_wh"]),
        ("energy kWh", _kwh(tx["energy_wh"])),
        ("cost", _cost(cost)),
        ("superseded by", tx["superseded_by"]),
    ]
    if cost:
        facts.append(
            ("cost parts", f"energy {cost['energy']}, time {cost['time']}, fee {cost['fee']}")
        )
    width = max(len(name) for name, _ in facts)
    print("\n".join(f"{name + ':':<{width + 1}}  {cell(value)}" for name, value in facts))
    readings = tx["readings"]
    print(f"\nreadings ({len(readings)}):")
    if readings:
        print(table(["AT", "WH", "CONTEXT"], [[r["at"], r["wh"], r["context"]] for r in readings]))
    sys.stdout.flush()
    return 0


def _export(client: ApiClient, args: argparse.Namespace) -> int:
    output: str | None = args.output
    counter = Progress("rows")
    if output is None or output == "-":
        sys.stdout.flush()  # the CSV goes to the bytes underneath
        rows = _download(client, args, sys.stdout.buffer, counter)
        sys.stdout.buffer.flush()
        counter.done(f"exported {_transactions(rows)}")
        return 0
    target = Path(output)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("wb") as file:
            rows = _download(client, args, file, counter)
        os.replace(partial, target)
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    counter.done(f"exported {_transactions(rows)} to {output}")
    return 0


def _transactions(count: int) -> str:
    return f"{count} transaction{'' if count == 1 else 's'}"


def _download(
    client: ApiClient, args: argparse.Namespace, sink: IO[bytes], counter: Progress
) -> int:
    """Copy the CSV to ``sink`` as it arrives; the number of transactions (rows after the
    header)."""
    rows = CsvRows()
    with client.stream("/transactions.csv", _filters(args)) as response:
        try:
            for chunk in response.iter_bytes():
                sink.write(chunk)
                counter.update(rows.feed(chunk))
        except httpx.TransportError as exc:
            raise CommandError(
                f"the export was cut short after {_transactions(rows.count)} "
                f"({exc or type(exc).__name__})",
                EXIT_FAILED,
            ) from None
    return rows.done()


class CsvRows:
    """Counts the data rows of RFC 4180 CSV fed in chunks of any size: line ends inside
    quoted fields are not row ends, and the header row is not counted."""

    def __init__(self) -> None:
        self._lines = 0
        self._quoted = False
        self._open_line = False

    @property
    def count(self) -> int:
        return max(self._lines - 1, 0)

    def feed(self, chunk: bytes) -> int:
        """Count ``chunk``; the rows so far."""
        for index, part in enumerate(chunk.split(b'"')):
            if index:  # a quote came before this part: "" inside a field toggles twice
                self._quoted = not self._quoted
                self._open_line = True
            if self._quoted or b"\n" not in part:
                self._open_line = self._open_line or bool(part)
                continue
            self._lines += part.count(b"\n")
            self._open_line = not part.endswith(b"\n")
        return self.count

    def done(self) -> int:
        """The rows, counting a last one without its line end."""
        if self._open_line:
            self._lines += 1
            self._open_line = False
        return self.count
