"""What every ``csms`` command shares: the setting flags, how settings are loaded, errors,
progress output and secrets read from stdin."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from pydantic import ValidationError

from csms.config import Settings, load_settings
from csms.versions import OcppVersion

__all__ = [
    "OCPP_VERSIONS",
    "CommandError",
    "add_setting_flags",
    "describe",
    "parse_versions",
    "progress",
    "read_secret",
    "require_redis",
    "settings_from",
]

OCPP_VERSIONS = tuple(version.value for version in OcppVersion)

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


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file (or CSMS_CONFIG)")
    for flag, dest, kind, help_text in _SETTING_FLAGS:
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {dest: getattr(args, dest) for _, dest, _, _ in _SETTING_FLAGS}
    return load_settings(args.config, **overrides)


class CommandError(Exception):
    """A command cannot do what was asked; the message says why (never a password)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse_versions(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    versions = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [v for v in versions if v not in OCPP_VERSIONS]
    if unknown:
        raise CommandError(
            f"unknown OCPP version {', '.join(unknown)}; use {', '.join(OCPP_VERSIONS)}"
        )
    return versions


def read_secret(prompt: str) -> str:
    """A secret from stdin: prompted without echo on a terminal, else the first line."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    return line.removesuffix("\n").removesuffix("\r")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def require_redis(settings: Settings) -> None:
    if not settings.redis_url:
        raise SystemExit(
            "this command writes to the shared stores: set --redis-url or CSMS_REDIS_URL "
            "(the embedded default keeps stations and tokens in the running process; "
            "preload them with [[stations]] / [[tokens]] in the config file instead)"
        )


def describe(exc: ValidationError) -> str:
    """The settings errors without the values given: a value may hold a password."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)
