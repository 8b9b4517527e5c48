"""``csms station log ID``: a station's OCPP frames from the message log (operator API,
``GET /v1/stations/{id}/messages``), oldest first; ``--follow`` then prints new frames as
they are written (the route's Server-Sent Events) until interrupted."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cli.api_client import ApiClient, add_api_flags, print_json, segment

__all__ = ["add_station_command", "line"]

DEFAULT_LIMIT = 50
_PAYLOAD_WIDTH = 160


def add_station_command(station_commands: Any) -> None:
    """``csms station log ID [--follow] [--action A] [--since ISO] [--json]``."""
    parser = station_commands.add_parser(
        "log",
        help="a station's OCPP frames, both directions (operator API)",
        description="The station's most recent frames (--limit), oldest first, or every "
        "frame from --since on; --follow then prints new ones as they come (Ctrl-C stops). "
        "Passwords and keys show as <redacted>. With --json: one JSON array, or with "
        "--follow one JSON object per line.",
    )
    parser.add_argument("station_id")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new frames")
    parser.add_argument("--action", help="only frames of this action")
    parser.add_argument("--direction", choices=["in", "out"], help="in: from the station")
    parser.add_argument("--since", metavar="ISO", help="frames at or after this time")
    parser.add_argument("--until", metavar="ISO", help="frames at or before this time")
    parser.add_argument(
        "--limit",
        type=_count,
        default=DEFAULT_LIMIT,
        help=f"most recent frames shown (default {DEFAULT_LIMIT}; 0 with --follow: none)",
    )
    add_api_flags(parser)
    parser.set_defaults(api_command=_station_log)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def line(entry: dict[str, Any]) -> str:
    """One frame on one line: time, direction, type, action, message id, then the payload
    (or the error) and the outcome."""
    arrow = "<-" if entry["direction"] == "in" else "->"
    if entry.get("error_code") or entry["type"] in ("timeout", "undelivered"):
        detail = " ".join(
            str(part) for part in (entry.get("error_code"), entry.get("error_description")) if part
        )
    else:
        detail = json.dumps(entry.get("payload"), ensure_ascii=False, separators=(",", ":"))
    if len(detail) > _PAYLOAD_WIDTH:
        detail = detail[: _PAYLOAD_WIDTH - 3] + "..."
    outcome = f" [{entry['outcome']}]" if entry.get("outcome") else ""
    action = entry.get("action") or "-"
    return (
        f"{entry['time']} {arrow} {entry['type']:<11} {action:<28} "
        f"{entry['message_id']} {detail}{outcome}"
    )


def _station_log(client: ApiClient, args: argparse.Namespace) -> int:
    path = f"/stations/{segment(args.station_id)}/messages"
    filters = {"action": args.action, "direction": args.direction}
    entries: list[dict[str, Any]] = []
    if args.since is not None:
        params = {**filters, "since": args.since, "until": args.until, "order": "asc"}
        entries = client.items(path, params, limit=None if args.follow else args.limit or None)
    elif args.limit:
        params = {**filters, "until": args.until, "order": "desc"}
        entries = client.items(path, params, limit=args.limit)
        entries.reverse()
    if args.json and not args.follow:
        print_json(entries)
        return 0
    for entry in entries:
        _show(entry, args.json)
    if not args.follow:
        return 0
    try:
        with client.stream(path, {**filters, "follow": True}) as response:
            for text in response.iter_lines():
                if text.startswith("data: "):
                    _show(json.loads(text[6:]), args.json)
    except KeyboardInterrupt:
        return 0
    return 0


def _show(entry: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(entry, ensure_ascii=False), flush=True)
    else:
        print(line(entry), flush=True)
