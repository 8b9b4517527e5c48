"""``csms events``: state-change events through the operator API (``GET /v1/events``).

Without ``--follow`` it prints the events the log keeps (after ``--after``), page by page;
with it, it follows the live stream (Server-Sent Events) until interrupted or ``--limit``
events were printed, and reconnects after a lost connection from the last event it
printed, so none is missed or printed twice. One line per event for people; ``--json``
prints each event as one JSON line (for ``jq``). A gap the log could not fill (the events
were older than it keeps) is reported on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx

from cli.api_client import EXIT_OK, EXIT_REFUSED, ApiClient, ApiRequestError, add_api_flags
from cli.common import CommandError

__all__ = ["add_commands", "format_event"]

RECONNECT_PAUSE = 1.0
"""Seconds before following again after the stream was lost."""
PAGE = 1000


def add_commands(commands: Any) -> None:
    """The ``events`` command."""
    parser = commands.add_parser(
        "events",
        help="print state-change events, or follow them live (operator API)",
        description="Events the log keeps, oldest first, or with --follow the live stream "
        "(Ctrl-C ends it). --after resumes after an event id.",
    )
    parser.add_argument("--follow", "-f", action="store_true", help="follow the live stream")
    parser.add_argument(
        "--kind",
        action="append",
        metavar="KIND",
        help="only events of this kind (repeatable; e.g. transaction.ended)",
    )
    parser.add_argument("--station", help="only this station's events")
    parser.add_argument("--after", metavar="ID", help="events after this event id")
    parser.add_argument("--limit", type=_positive, help="stop after this many events")
    add_api_flags(parser)
    parser.set_defaults(api_command=_events)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    return json.dumps(value, ensure_ascii=False)


def format_event(event: dict[str, Any]) -> str:
    """One line for people: time, kind, station, then the facts that are set."""
    facts = " ".join(
        f"{name}={_value(value)}"
        for name, value in (event.get("data") or {}).items()
        if value is not None
    )
    station = event.get("station_id") or "-"
    return f"{event.get('at', '')}  {event.get('kind', ''):<22} {station}  {facts}".rstrip()


class _Printer:
    def __init__(self, as_json: bool, limit: int | None) -> None:
        self.as_json = as_json
        self.left = limit
        self.last_id: str | None = None

    @property
    def done(self) -> bool:
        return self.left is not None and self.left <= 0

    def show(self, event: dict[str, Any]) -> None:
        if self.as_json:
            line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        else:
            line = format_event(event)
        print(line, flush=True)
        self.last_id = event.get("id") or self.last_id
        if self.left is not None:
            self.left -= 1


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {"kinds": ",".join(args.kind) if args.kind else None, "station_id": args.station}


def _events(client: ApiClient, args: argparse.Namespace) -> int:
    printer = _Printer(args.json, args.limit)
    printer.last_id = args.after
    if args.follow:
        _follow(client, args, printer)
    else:
        _pages(client, args, printer)
    return EXIT_OK


def _pages(client: ApiClient, args: argparse.Namespace, printer: _Printer) -> None:
    while not printer.done:
        want = PAGE if printer.left is None else min(PAGE, printer.left)
        page = client.get(
            "/events",
            {**_params(args), "follow": False, "after": printer.last_id, "limit": want},
        )
        if page.get("truncated"):
            _lost(printer.last_id)
        for event in page["items"]:
            printer.show(event)
        if not page["items"]:
            return
        printer.last_id = page.get("last_id") or printer.last_id


def _lost(after: str | None) -> None:
    print(
        f"csms: events after {after} are no longer kept (event_retention); some were missed",
        file=sys.stderr,
        flush=True,
    )


def _follow(client: ApiClient, args: argparse.Namespace, printer: _Printer) -> None:
    connected_once = False
    while not printer.done:
        try:
            with client.stream(
                "/events", {**_params(args), "follow": True, "after": printer.last_id}
            ) as response:
                connected_once = True
                _read_stream(response, printer)
        except CommandError as exc:
            # Refusals (4xx) and a first connection that fails end the command; a stream
            # lost later (a restart, a store outage) is followed again from the last event.
            refused = isinstance(exc, ApiRequestError) and exc.exit_code == EXIT_REFUSED
            if not connected_once or refused:
                raise
            print(f"csms: {exc}; reconnecting", file=sys.stderr, flush=True)
        except httpx.HTTPError as exc:
            print(f"csms: stream lost ({exc or type(exc).__name__}); reconnecting", file=sys.stderr)
        if not printer.done:
            time.sleep(RECONNECT_PAUSE)


def _read_stream(response: httpx.Response, printer: _Printer) -> None:
    """Print the stream's events until it ends or the limit is reached."""
    kind = "message"
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            continue
        if data:
            payload = json.loads("\n".join(data))
            if kind == "truncated":
                _lost(payload.get("after"))
            else:
                printer.show(payload)
                if printer.done:
                    return
        kind, data = "message", []
