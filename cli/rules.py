"""``csms station rules`` and ``csms rules defaults``: read and change action rules through
the operator API (``/v1/stations/{id}/rules``, ``/v1/rules/defaults/{version}``).

Without change flags a command shows the rules. ``--allow-station-call``,
``--deny-station-call``, ``--allow-csms-call`` and ``--deny-csms-call`` (repeatable, or
comma-separated) each replace that one list and keep the rest; ``--clear`` starts from no
rules (alone: removes them all).
"""

from __future__ import annotations

import argparse
from typing import Any

from cli.api_client import ApiClient, add_api_flags, print_json, segment, table
from csms.versions import supported

__all__ = ["add_commands", "add_station_command"]

_LISTS = (
    ("station_calls", "allow", "allow_station_call"),
    ("station_calls", "deny", "deny_station_call"),
    ("csms_calls", "allow", "allow_csms_call"),
    ("csms_calls", "deny", "deny_csms_call"),
)
_SIDES = ("station_calls", "csms_calls")
_HOW = (
    "Without change flags the rules are shown. Each of --allow-station-call, "
    "--deny-station-call, --allow-csms-call and --deny-csms-call replaces that one list and "
    "keeps the others; --clear starts from no rules (alone: removes them). Deny wins over "
    "allow; BootNotification cannot be denied."
)


def _add_change_flags(parser: argparse.ArgumentParser) -> None:
    for side, kind, dest in _LISTS:
        calls = "Calls the station sends" if side == "station_calls" else "calls sent to it"
        what = "allow only these" if kind == "allow" else "deny these"
        parser.add_argument(
            f"--{dest.replace('_', '-')}",
            dest=dest,
            action="append",
            metavar="ACTION",
            help=f"{side} ({calls}): {what} (repeat or comma-separate; replaces this list)",
        )
    parser.add_argument(
        "--clear", action="store_true", help="start from no rules (alone: remove them)"
    )
    add_api_flags(parser)


def add_station_command(station_commands: Any) -> None:
    """``csms station rules ID [...]``."""
    parser = station_commands.add_parser(
        "rules",
        help="show or change a station's action rules (operator API)",
        description="A station's own action rules and the effective ones (its own, else its "
        "version's defaults). " + _HOW,
    )
    parser.add_argument("station_id")
    _add_change_flags(parser)
    parser.set_defaults(api_command=_station_rules)


def add_commands(commands: Any) -> None:
    """``csms rules defaults VERSION [...]``."""
    group = commands.add_parser("rules", help="action rules of every station of a version")
    rules_commands = group.add_subparsers(dest="rules_command", required=True)
    parser = rules_commands.add_parser(
        "defaults",
        help="show or change a version's default action rules (operator API)",
        description="The rules of stations of VERSION that have none of their own, per "
        "direction. " + _HOW,
    )
    parser.add_argument("version", choices=[version.value for version in supported()])
    _add_change_flags(parser)
    parser.set_defaults(api_command=_default_rules)


def _changes(args: argparse.Namespace) -> dict[tuple[str, str], list[str]]:
    """The lists the flags replace: (side, kind) -> actions."""
    changes: dict[tuple[str, str], list[str]] = {}
    for side, kind, dest in _LISTS:
        given: list[str] | None = getattr(args, dest)
        if given is not None:
            names = [name.strip() for value in given for name in value.split(",")]
            changes[(side, kind)] = [name for name in names if name]
    return changes


def _body(current: dict[str, Any], changes: dict[tuple[str, str], list[str]]) -> dict[str, Any]:
    """The PUT body: ``current`` rules (the API's shape) with the changed lists replaced."""
    body: dict[str, Any] = {}
    for side in _SIDES:
        rule = current.get(side)
        if rule is None and not any(key[0] == side for key in changes):
            continue
        merged = {"allow": None, "deny": []} if rule is None else dict(rule)
        for (changed_side, kind), names in changes.items():
            if changed_side == side:
                merged[kind] = names
        body[side] = merged
    return body


def _station_rules(client: ApiClient, args: argparse.Namespace) -> int:
    path = f"/stations/{segment(args.station_id)}/rules"
    changes = _changes(args)
    if args.clear and not changes:
        client.request("DELETE", path)
        view = client.get(path)
    elif args.clear or changes:
        current = {} if args.clear else client.get(path)["rules"]
        view = client.request("PUT", path, body=_body(current, changes)).json()
    else:
        view = client.get(path)
    if args.json:
        print_json(view)
        return 0
    version = view["version"] or "never connected: only its own rules apply"
    print(f"station {view['station_id']} ({version})")
    rows = [
        [
            side,
            _describe(view["rules"][side]),
            _describe(view["effective"][side]),
            view["effective"][side]["source"],
        ]
        for side in _SIDES
    ]
    print(table(["DIRECTION", "OWN RULE", "EFFECTIVE", "FROM"], rows), flush=True)
    return 0


def _default_rules(client: ApiClient, args: argparse.Namespace) -> int:
    path = f"/rules/defaults/{segment(args.version)}"
    changes = _changes(args)
    if args.clear or changes:
        current = {} if args.clear else client.get(path)["rules"]
        view = client.request("PUT", path, body=_body(current, changes)).json()
    else:
        view = client.get(path)
    if args.json:
        print_json(view)
        return 0
    print(f"defaults of {view['version']}")
    rows = [[side, _describe(view["rules"][side])] for side in _SIDES]
    print(table(["DIRECTION", "RULE"], rows), flush=True)
    return 0


def _describe(rule: dict[str, Any] | None) -> str:
    """A rule for people: ``only A,B; deny C``, ``everything`` or ``-`` (no rule)."""
    if rule is None:
        return "-"
    parts = []
    if rule.get("allow") is not None:
        parts.append("only " + (",".join(rule["allow"]) or "nothing"))
    if rule.get("deny"):
        parts.append("deny " + ",".join(rule["deny"]))
    return "; ".join(parts) or "everything"
