"""``csms`` command line.

    csms run        gateway + manager in one process (embedded default without broker/Redis)
    csms gateway    one gateway instance (needs --broker-url)
    csms manager    one manager instance (needs --broker-url; --redis-url for shared state)
    csms station add ID [--registration Accepted|Pending|Rejected]
    csms token add ID [--status ...] [--expiry ISO] [--group ID]

Every setting can also come from a TOML file (--config) or ``CSMS_*`` environment variables;
see :mod:`csms.config`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from csms.config import Settings, load_settings
from csms.logs import configure_logging

_SETTING_FLAGS: list[tuple[str, str, type, str]] = [
    ("--broker-url", "broker_url", str, "MQTT broker, mqtt://[user:pass@]host:port or mqtts://"),
    ("--redis-url", "redis_url", str, "Redis, redis://host:port/db or rediss://"),
    ("--topic-prefix", "topic_prefix", str, "MQTT topic prefix (default cs)"),
    ("--shared-group", "shared_group", str, "MQTT shared-subscription group of managers"),
    ("--host", "listen_host", str, "WebSocket listen address (default 127.0.0.1)"),
    ("--port", "listen_port", int, "WebSocket listen port (default 9000)"),
    ("--heartbeat-interval", "heartbeat_interval", int, "seconds, sent in BootNotification"),
    ("--call-timeout", "call_timeout", float, "seconds a station has to answer a CSMS call"),
    ("--max-frame-bytes", "max_frame_bytes", int, "largest WebSocket frame accepted"),
    ("--concurrency", "manager_concurrency", int, "messages a manager handles at once"),
    ("--unknown-stations", "unknown_stations", str, "accept | pending | reject"),
    ("--unknown-tokens", "unknown_tokens", str, "reject | accept"),
    ("--log-format", "log_format", str, "console | json"),
    ("--log-level", "log_level", str, "debug | info | warning | error"),
]


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file (or CSMS_CONFIG)")
    for flag, dest, kind, help_text in _SETTING_FLAGS:
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csms", description="OCPP 1.6 / 2.0.1 CSMS")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "gateway + manager in one process"),
        ("gateway", "a gateway instance (WebSocket ⇄ MQTT)"),
        ("manager", "a manager instance (MQTT shared subscription)"),
    ):
        _add_setting_flags(commands.add_parser(name, help=help_text))

    station = commands.add_parser("station", help="manage the station registry")
    station_commands = station.add_subparsers(dest="station_command", required=True)
    add_station = station_commands.add_parser("add", help="register a station")
    add_station.add_argument("station_id")
    add_station.add_argument(
        "--registration", choices=["Accepted", "Pending", "Rejected"], default="Accepted"
    )
    _add_setting_flags(add_station)

    token = commands.add_parser("token", help="manage the token store")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    add_token = token_commands.add_parser("add", help="provision an idToken")
    add_token.add_argument("id_token")
    add_token.add_argument(
        "--status", choices=["Accepted", "Blocked", "Expired", "Invalid"], default="Accepted"
    )
    add_token.add_argument("--expiry", help="ISO 8601 date-time after which the token is Expired")
    add_token.add_argument("--group", dest="group_id", help="group idToken (parentIdTag)")
    add_token.add_argument("--type", dest="token_type", help="2.0.1 idToken type, e.g. ISO14443")
    _add_setting_flags(add_token)
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {dest: getattr(args, dest) for _, dest, _, _ in _SETTING_FLAGS}
    return load_settings(args.config, **overrides)


async def _station_add(settings: Settings, station_id: str, registration: str) -> None:
    from services.factory import open_services
    from services.models import RegistrationStatus, StationRecord

    _require_redis(settings)
    async with open_services(settings) as services:
        record = await services.stations.get(station_id) or StationRecord(station_id=station_id)
        record.registration = RegistrationStatus(registration)
        record.known = True
        await services.stations.put(record)
    print(f"station {station_id}: registration {registration}")


async def _token_add(settings: Settings, args: argparse.Namespace) -> None:
    from services.factory import open_services
    from services.models import AuthorizationStatus, TokenRecord

    _require_redis(settings)
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


def _require_redis(settings: Settings) -> None:
    if not settings.redis_url:
        raise SystemExit(
            "this command writes to the shared stores: set --redis-url or CSMS_REDIS_URL "
            "(the embedded default keeps stations and tokens in the running process; "
            "preload them with [[stations]] / [[tokens]] in the config file instead)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings_from(args)
    except ValidationError as exc:
        print(f"csms: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"csms: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)

    from csms import app

    try:
        if args.command == "run":
            asyncio.run(app.run_all_in_one(settings))
        elif args.command == "gateway":
            asyncio.run(app.run_gateway(settings))
        elif args.command == "manager":
            asyncio.run(app.run_manager(settings))
        elif args.command == "station":
            asyncio.run(_station_add(settings, args.station_id, args.registration))
        elif args.command == "token":
            asyncio.run(_token_add(settings, args))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"csms: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
