"""``csms token``: provision idTokens in the shared token store."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, get_args

from cli.common import CommandError, add_setting_flags, require_redis
from csms.config import Settings, TokenType

__all__ = ["add_commands", "run"]


def add_commands(commands: Any) -> None:
    """The ``token`` command group."""
    token = commands.add_parser("token", help="manage the token store")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    add_token = token_commands.add_parser("add", help="provision an idToken")
    add_token.add_argument("id_token")
    add_token.add_argument(
        "--status", choices=["Accepted", "Blocked", "Expired", "Invalid"], default="Accepted"
    )
    add_token.add_argument(
        "--expiry",
        help="ISO 8601 date-time after which the token is Expired, e.g. 2030-12-31T23:59:59Z "
        "(no offset = UTC)",
    )
    add_token.add_argument(
        "--allow-past-expiry",
        action="store_true",
        help="store an --expiry that has already passed (the token is Expired at once)",
    )
    add_token.add_argument("--group", dest="group_id", help="group idToken (parentIdTag)")
    add_token.add_argument(
        "--type",
        dest="token_type",
        choices=list(get_args(TokenType)),
        help="2.0.1 idToken type the token must be presented as (default any)",
    )
    add_setting_flags(add_token)


def run(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(_token_add(settings, args))
    return 0


def _check_expiry(expiry: str | None, *, allow_past: bool) -> None:
    """Refuse an unreadable ``--expiry``, and one already passed unless ``allow_past``."""
    import datetime as dt

    from services.rules import parse_time

    if expiry is None:
        if allow_past:
            raise CommandError("--allow-past-expiry goes with --expiry")
        return
    moment = parse_time(expiry)
    if moment is None:
        raise CommandError(
            f"--expiry {expiry!r} is not an ISO 8601 date-time; e.g. 2030-12-31T23:59:59Z"
        )
    if moment <= dt.datetime.now(dt.UTC) and not allow_past:
        raise CommandError(
            f"--expiry {expiry} has already passed: the token would be Expired at once "
            "(add --allow-past-expiry to store it anyway, or --status Expired)"
        )


async def _token_add(settings: Settings, args: argparse.Namespace) -> None:
    from services.factory import open_services
    from services.models import AuthorizationStatus, TokenRecord

    _check_expiry(args.expiry, allow_past=args.allow_past_expiry)
    require_redis(settings)
    async with open_services(settings) as services:
        await services.tokens.put(
            TokenRecord(
                id_token=args.id_token,
                status=AuthorizationStatus(args.status),
                token_type=args.token_type,
                expiry=args.expiry,
                group_id=args.group_id,
            )
        )
    print(f"token {args.id_token}: {args.status}")
