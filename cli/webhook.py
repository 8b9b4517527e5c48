"""``csms webhook``: subscribe receivers to events and look at their deliveries, through
the operator API (``/v1/webhooks``; adding and removing need an admin key).

    csms webhook add URL --secret S [--events a,b] [--station X ...] [--description D]
    csms webhook list / show ID / rm ID / test ID / deliveries ID [--limit N]   [--json]

``--secret -`` reads the secret from stdin (a flag is visible to other users in ``ps``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli.api_client import EXIT_REFUSED, ApiClient, add_api_flags, cell, print_json, table
from cli.common import CommandError, progress

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    """The ``webhook`` command group."""
    group = commands.add_parser("webhook", help="webhook subscriptions (operator API)")
    sub = group.add_subparsers(dest="webhook_command", required=True)

    add = sub.add_parser("add", help="subscribe a receiver URL to events")
    add.add_argument("url", help="receiver URL (https outside a lab)")
    add.add_argument(
        "--secret", required=True, help="signing secret, 16+ characters ('-' = read stdin)"
    )
    add.add_argument(
        "--events", default="*", help="comma-separated event kinds, or * (default) for all"
    )
    add.add_argument(
        "--station",
        action="append",
        dest="stations",
        help="only this station's events (repeat for more)",
    )
    add.add_argument("--description", help="what the receiver is for")
    add_api_flags(add)
    add.set_defaults(api_command=_add)

    listing = sub.add_parser("list", help="list subscriptions")
    add_api_flags(listing)
    listing.set_defaults(api_command=_list)

    for name, help_text, command in (
        ("show", "one subscription", _show),
        ("rm", "unsubscribe (pending deliveries are dropped)", _remove),
        ("test", "send a webhook.test event to the receiver", _test),
        ("deliveries", "recent deliveries, newest first", _deliveries),
    ):
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument("webhook_id")
        if name == "deliveries":
            parser.add_argument("--limit", type=int, default=50, help="at most this many")
        add_api_flags(parser, as_json=name != "rm")
        parser.set_defaults(api_command=command)


def _secret(value: str) -> str:
    if value != "-":
        return value
    secret = sys.stdin.readline().strip()
    if not secret:
        raise CommandError("no secret on stdin", EXIT_REFUSED)
    return secret


def _add(client: ApiClient, args: argparse.Namespace) -> int:
    events = [kind.strip() for kind in args.events.split(",") if kind.strip()]
    body: dict[str, Any] = {"url": args.url, "secret": _secret(args.secret), "events": events}
    if args.stations:
        body["station_ids"] = args.stations
    if args.description:
        body["description"] = args.description
    created = client.request("POST", "/webhooks", body=body).json()
    if args.json:
        print_json(created)
    else:
        print(created["id"], flush=True)
        progress(f"subscribed {created['url']} to {', '.join(created['events'])}")
    return 0


def _list(client: ApiClient, args: argparse.Namespace) -> int:
    found = client.items("/webhooks")
    if args.json:
        print_json(found)
        return 0
    if not found:
        progress("no webhooks")
        return 0
    rows = [
        [
            sub["id"],
            sub["active"],
            ",".join(sub["events"]),
            ",".join(sub["station_ids"]) if sub["station_ids"] else "*",
            sub["url"],
        ]
        for sub in found
    ]
    print(table(["ID", "ACTIVE", "EVENTS", "STATIONS", "URL"], rows), flush=True)
    return 0


def _show(client: ApiClient, args: argparse.Namespace) -> int:
    sub = client.get(f"/webhooks/{args.webhook_id}")
    if args.json:
        print_json(sub)
        return 0
    auth = sub.get("auth")
    facts = [
        ("id", sub["id"]),
        ("url", sub["url"]),
        ("active", sub["active"]),
        ("events", ", ".join(sub["events"])),
        ("stations", ", ".join(sub["station_ids"]) if sub["station_ids"] else "all"),
        ("description", sub["description"]),
        ("oauth2", f"{auth['client_id']} at {auth['token_url']}" if auth else None),
        ("created", sub["created_at"]),
        ("updated", sub["updated_at"]),
    ]
    width = max(len(name) for name, _ in facts)
    print("\n".join(f"{name + ':':<{width + 1}}  {cell(value)}" for name, value in facts))
    sys.stdout.flush()
    return 0


def _remove(client: ApiClient, args: argparse.Namespace) -> int:
    client.request("DELETE", f"/webhooks/{args.webhook_id}")
    progress(f"webhook {args.webhook_id} removed")
    return 0


def _test(client: ApiClient, args: argparse.Namespace) -> int:
    queued = client.request("POST", f"/webhooks/{args.webhook_id}/test").json()
    if args.json:
        print_json(queued)
    else:
        print(queued["delivery_id"], flush=True)
        progress("webhook.test queued; see csms webhook deliveries " + args.webhook_id)
    return 0


def _deliveries(client: ApiClient, args: argparse.Namespace) -> int:
    found = client.items(f"/webhooks/{args.webhook_id}/deliveries", limit=max(1, args.limit))
    if args.json:
        print_json(found)
        return 0
    if not found:
        progress("no deliveries")
        return 0
    rows = [
        [
            item["event_id"],
            item["event_kind"],
            item["state"],
            item["attempts"],
            item["last_status"],
            item["next_attempt_at"],
            item["last_error"],
        ]
        for item in found
    ]
    headers = ["EVENT", "KIND", "STATE", "TRIES", "STATUS", "NEXT TRY", "ERROR"]
    print(table(headers, rows), flush=True)
    return 0
