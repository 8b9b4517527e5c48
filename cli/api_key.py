"""``csms api-key``: create, list and revoke operator API keys in the shared store.

Like ``csms token add``, these write to Redis directly (the API's replicas read the same
store), so a first admin key can be made before any API runs. A created key is printed once,
on stdout alone (scripts capture it); only its hash is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from typing import Any

from cli.common import CommandError, add_setting_flags, progress, require_redis
from csms.config import Settings
from services.api_keys import ApiKeyRecord, Scope, issue_key

__all__ = ["add_commands", "run"]


def add_commands(commands: Any) -> None:
    """The ``api-key`` command group."""
    group = commands.add_parser("api-key", help="manage operator API keys")
    sub = group.add_subparsers(dest="api_key_command", required=True)
    create = sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("name", help="who or what uses the key")
    create.add_argument(
        "--scope", choices=[scope.value for scope in Scope], default=Scope.READ.value
    )
    add_setting_flags(create)
    listing = sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    add_setting_flags(listing)
    revoke = sub.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id", help="the key id (csms_<key id>_...)")
    add_setting_flags(revoke)


def run(settings: Settings, args: argparse.Namespace) -> int:
    require_redis(settings)
    command = args.api_key_command
    if command == "create":
        asyncio.run(_create(settings, args.name, Scope(args.scope)))
    elif command == "list":
        asyncio.run(_list(settings, as_json=args.json))
    else:
        asyncio.run(_revoke(settings, args.key_id))
    return 0


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def _create(settings: Settings, name: str, scope: Scope) -> None:
    from services.factory import open_services

    if not 1 <= len(name) <= 64:
        raise CommandError("the name must be 1 to 64 characters")
    issued = issue_key(name, scope, _now())
    async with open_services(settings) as services:
        await services.api_keys.put(issued.record)
    progress(f"created {scope.value} key {issued.record.key_id} ({name}); it is shown only now:")
    print(issued.key, flush=True)


def _row(record: ApiKeyRecord) -> str:
    state = f"revoked {record.revoked_at}" if record.revoked_at else "active"
    return f"{record.key_id}  {record.scope.value:<7}  {record.created_at}  {state}  {record.name}"


async def _list(settings: Settings, *, as_json: bool) -> None:
    from services.factory import open_services

    async with open_services(settings) as services:
        cursor: str | None = None
        while True:
            page = await services.api_keys.list_keys(cursor=cursor, limit=1000)
            for record in page.items:
                if as_json:
                    fields = {
                        "key_id": record.key_id,
                        "name": record.name,
                        "scope": record.scope.value,
                        "created_at": record.created_at,
                        "revoked_at": record.revoked_at,
                    }
                    print(json.dumps(fields))
                else:
                    print(_row(record))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    sys.stdout.flush()


async def _revoke(settings: Settings, key_id: str) -> None:
    from services.factory import open_services

    if key_id.startswith("csms_"):
        key_id = key_id.split("_")[1]  # a whole key was pasted: its id part
    async with open_services(settings) as services:
        record = await services.api_keys.revoke(key_id, _now())
    if record is None:
        raise CommandError(f"no API key {key_id}")
    progress(f"revoked key {record.key_id} ({record.name}) at {record.revoked_at}")
