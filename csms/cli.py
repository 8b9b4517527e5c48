"""``csms`` command line.

    csms run        gateway + manager in one process (embedded default without broker/Redis)
    csms gateway    one gateway instance (needs --broker-url)
    csms manager    one manager instance (needs --broker-url; --redis-url for shared state)
    csms station add ID [--registration Accepted|Pending|Rejected] [--profile 0-3]
                        [--password P | --password - | --generate-password]
                        [--certificate-identity CN] [--versions ocpp1.6,ocpp2.0.1]
    csms station rotate-password ID [--wait SECONDS]
    csms password generate [--version ocpp1.6|ocpp2.0.1] [--length N]
    csms password hash [--version ...] [--authorization-key]   (password on stdin)
    csms token add ID [--status ...] [--expiry ISO [--allow-past-expiry]] [--group ID]
                      [--type ISO14443|eMAID|...]

Every setting can also come from a TOML file (--config) or ``CSMS_*`` environment variables;
see :mod:`csms.config`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_args

from pydantic import ValidationError

from csms.config import Settings, TokenType, load_settings
from csms.logs import configure_logging
from services.interfaces import StoreUnavailable
from services.models import OCPP_VERSIONS

if TYPE_CHECKING:
    from csms.bus import Bus
    from csms.envelope import Envelope
    from services import Services

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
        "--registration",
        choices=["Accepted", "Pending", "Rejected"],
        help="default: Accepted for a new station; a registered station keeps its registration",
    )
    add_station.add_argument(
        "--profile",
        type=int,
        choices=[0, 1, 2, 3],
        help="security profile: 0 none, 1 Basic auth, 2 TLS + Basic auth, 3 client certificate",
    )
    secret = add_station.add_mutually_exclusive_group()
    secret.add_argument(
        "--password", help="Basic auth password ('-' reads it from stdin); only its hash is kept"
    )
    secret.add_argument(
        "--generate-password",
        action="store_true",
        help="generate a password valid for the station's versions and print it once",
    )
    add_station.add_argument(
        "--certificate-identity",
        help="profile 3: name the client certificate must carry (default: the station id)",
    )
    add_station.add_argument(
        "--versions", help="OCPP versions the station may use, e.g. ocpp1.6,ocpp2.0.1 (default any)"
    )
    _add_setting_flags(add_station)

    rotate = station_commands.add_parser(
        "rotate-password",
        help="give a connected station a new Basic auth password",
        description="Send the station a new password (2.0.1 SetVariables BasicAuthPassword, "
        "1.6 ChangeConfiguration AuthorizationKey) and wait until the registry holds its hash. "
        "Exit status: 0 accepted and stored; 1 the station did not accept (password "
        "unchanged); 2 nothing sent (settings, unknown or offline station, broker); "
        "3 no outcome within --wait.",
    )
    rotate.add_argument("station_id")
    rotate.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the outcome (default 60)"
    )
    _add_setting_flags(rotate)

    password = commands.add_parser("password", help="station passwords (HTTP Basic auth)")
    password_commands = password.add_subparsers(dest="password_command", required=True)
    generate = password_commands.add_parser(
        "generate", help="print a random password (default: valid for 1.6 and 2.0.1)"
    )
    generate.add_argument("--version", choices=list(OCPP_VERSIONS))
    generate.add_argument("--length", type=int, help="characters (1.6: 16-20, 2.0.1: 16-40)")
    hash_command = password_commands.add_parser(
        "hash",
        help="read a password on stdin, print its hash (for password_hash in [[stations]])",
    )
    hash_command.add_argument(
        "--version", choices=list(OCPP_VERSIONS), help="check the password against its rules"
    )
    hash_command.add_argument(
        "--authorization-key",
        action="store_true",
        help="the input is an OCPP 1.6 AuthorizationKey (hex); hash the password it encodes",
    )

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
    _add_setting_flags(add_token)
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {dest: getattr(args, dest) for _, dest, _, _ in _SETTING_FLAGS}
    return load_settings(args.config, **overrides)


class CommandError(Exception):
    """A command cannot do what was asked; the message says why (never a password)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _parse_versions(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    versions = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [v for v in versions if v not in OCPP_VERSIONS]
    if unknown:
        raise CommandError(
            f"unknown OCPP version {', '.join(unknown)}; use {', '.join(OCPP_VERSIONS)}"
        )
    return versions


def _read_secret(prompt: str) -> str:
    """A secret from stdin: prompted without echo on a terminal, else the first line."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    return line.removesuffix("\n").removesuffix("\r")


def _check_password_for(password: str, versions: Sequence[str]) -> None:
    from services.credentials import check_password

    for version in versions:
        try:
            check_password(password, version=version)
        except ValueError as exc:
            raise CommandError(
                f"password not usable for {version}: {exc} (--versions narrows the versions "
                "it must suit)"
            ) from None


async def _station_add(settings: Settings, args: argparse.Namespace) -> None:
    """Register (or update) a station: credentials if any were given, then registration.

    Only the fields given change; connection and boot facts are kept. Without
    ``--registration`` a registered station keeps its registration and any other becomes
    Accepted.
    """
    from services.credentials import authorization_key, generate_password, hash_password
    from services.factory import open_services
    from services.models import RegistrationStatus, StationCredentials

    station_id: str = args.station_id
    versions = _parse_versions(args.versions)
    password: str | None = args.password
    if password == "-":
        password = _read_secret("password: ")
    _require_redis(settings)
    async with open_services(settings) as services:
        record = await services.stations.get(station_id)
        profile = args.profile
        if profile is None:
            profile = record.security_profile if record is not None else 0
        # The versions the password must suit: those allowed, else the one the station
        # speaks, else both.
        targets: Sequence[str] = versions or (
            (record.allowed_versions or ([record.ocpp_version] if record.ocpp_version else []))
            if record is not None
            else []
        )
        targets = list(targets) or list(OCPP_VERSIONS)
        if args.generate_password:
            version = "ocpp1.6" if "ocpp1.6" in targets else "ocpp2.0.1"
            password = generate_password(version=version)
        if password is not None:
            _check_password_for(password, targets)
            if profile == 0:
                raise CommandError(
                    "a password is for security profile 1 or 2: add --profile 1 (ws) or "
                    "--profile 2 (wss)"
                )
            if profile == 3:
                raise CommandError(
                    "security profile 3 authenticates with a client certificate, not a password"
                )
        elif profile in (1, 2) and (record is None or record.password_hash is None):
            raise CommandError(
                f"security profile {profile} uses HTTP Basic auth: give --password or "
                "--generate-password"
            )
        fields: dict[str, Any] = {}
        if args.profile is not None:
            fields["security_profile"] = args.profile
        if password is not None:
            fields["password_hash"] = await asyncio.to_thread(hash_password, password)
        if args.certificate_identity is not None:
            fields["certificate_identity"] = args.certificate_identity
        if versions is not None:
            fields["allowed_versions"] = versions
        if fields:
            # Credentials first: the station is never Accepted without the ones asked for.
            await services.stations.set_credentials(station_id, StationCredentials(**fields))
        if args.registration is not None:
            await services.stations.provision(station_id, RegistrationStatus(args.registration))
        elif record is None or not record.known:
            await services.stations.provision(station_id, RegistrationStatus.ACCEPTED)
        record = await services.stations.get(station_id)
    assert record is not None
    facts = [
        f"registration {record.registration.value}",
        f"security profile {record.security_profile}",
    ]
    if record.password_hash is not None:
        facts.append("password set" if password is not None else "password kept")
    if record.certificate_identity is not None:
        facts.append(f"certificate identity {record.certificate_identity}")
    if record.allowed_versions:
        facts.append(f"versions {','.join(record.allowed_versions)}")
    print(f"station {station_id}: {', '.join(facts)}")
    if args.generate_password and password is not None:
        print(f"password (shown once, only its hash is stored): {password}")
        if "ocpp1.6" in targets:
            print(f"AuthorizationKey for OCPP 1.6 (hex): {authorization_key(password)}")


def _password_generate(args: argparse.Namespace) -> None:
    from services.credentials import (
        OCPP16_KEY_MAX_BYTES,
        OCPP16_KEY_MIN_BYTES,
        OCPP201_PASSWORD_MAX,
        OCPP201_PASSWORD_MIN,
        generate_password,
    )

    # Without --version: 1.6 rules, which give a password 2.0.1 accepts too.
    version = args.version or "ocpp1.6"
    low, high = (
        (OCPP16_KEY_MIN_BYTES, OCPP16_KEY_MAX_BYTES)
        if version == "ocpp1.6"
        else (OCPP201_PASSWORD_MIN, OCPP201_PASSWORD_MAX)
    )
    length = args.length if args.length is not None else high
    if not low <= length <= high:
        what = version if args.version else "a password for both versions"
        raise CommandError(f"{what} has {low}-{high} characters, not {length}")
    print(generate_password(length, version=version))


def _password_hash(args: argparse.Namespace) -> None:
    from services.credentials import (
        check_password,
        hash_password,
        password_from_authorization_key,
    )

    if args.authorization_key:
        try:
            password = password_from_authorization_key(_read_secret("AuthorizationKey: ").strip())
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    else:
        password = _read_secret("password: ")
        versions = [args.version] if args.version else list(OCPP_VERSIONS)
        problems = []
        for version in versions:
            try:
                check_password(password, version=version)
            except ValueError as exc:
                problems.append(f"{version}: {exc}")
        if len(problems) == len(versions):
            raise CommandError("password not usable: " + "; ".join(problems))
    print(hash_password(password))


async def _rotate_password(settings: Settings, station_id: str, wait: float) -> int:
    """``csms station rotate-password``: see the command's description for exit statuses."""
    from csms.bus.mqtt import MqttBus
    from csms.topics import Topics
    from manager.call_maker import CallMaker
    from manager.password_rotation import RotationRefused, rotate_password, rotation_version
    from services.factory import open_services

    if not settings.broker_url or not settings.redis_url:
        raise CommandError(
            "rotating a password needs the fleet: set --broker-url (the broker the gateways "
            "use) and --redis-url (the managers' registry), or CSMS_BROKER_URL / "
            "CSMS_REDIS_URL; the embedded default cannot be reached from another process"
        )
    if wait <= 0:
        raise CommandError("--wait must be a positive number of seconds")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with open_services(settings) as services:
        try:
            version = await rotation_version(services.stations, station_id)
        except RotationRefused as exc:
            raise CommandError(str(exc)) from None
        before = await services.stations.get(station_id)
        old_hash = before.password_hash if before is not None else None
        topics = Topics(prefix=settings.topic_prefix, group=settings.shared_group)
        bus = MqttBus(
            settings.broker_url,
            client_id_prefix="csms-cli",
            publish_timeout=settings.publish_timeout,
            tls_ca_file=settings.broker_ca_file,
            tls_cert_file=settings.broker_cert_file,
            tls_key_file=settings.broker_key_file,
        )
        async with bus:
            connect_wait = max(1.0, min(10.0, wait))
            if not await bus.wait_connected(connect_wait):
                raise CommandError(
                    f"not connected to the MQTT broker within {connect_wait:g} s "
                    "(the log above says why)"
                )
            # A plain subscription gets a copy of the station's answer; the managers' shared
            # subscription gets the one that updates the registry.
            await bus.subscribe(topics.inbound(version, station_id))
            try:
                rotation = await rotate_password(
                    CallMaker(bus, topics, origin="cli"), services.stations, station_id, version
                )
            except RotationRefused as exc:
                raise CommandError(str(exc)) from None
            _progress(f"sent {rotation.action} to {station_id} ({version}); waiting for its answer")
            answer = await _station_answer(bus, rotation.message_id, deadline, loop)
        if answer is None:
            _progress(f"no answer from {station_id} within {wait:g} s: outcome unknown")
            return 3
        refusal = _refusal(version, answer)
        if refusal is not None:
            _progress(f"{station_id} did not take the new password: {refusal}; password unchanged")
            return 1
        _progress(f"{station_id} accepted; waiting for a manager to store the new password hash")
        if await _hash_stored(services, station_id, rotation.password, old_hash, deadline, loop):
            _progress(
                f"done: the registry holds the new password of {station_id}; "
                "it applies from the station's next connection"
            )
            return 0
        _progress(
            f"{station_id} accepted the new password but the registry did not show it within "
            f"{wait:g} s: check that managers are running"
        )
        return 3


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _station_answer(
    bus: Bus, message_id: str, deadline: float, loop: asyncio.AbstractEventLoop
) -> Envelope | None:
    """The gateway's envelope answering ``message_id`` (result, error, timeout,
    undelivered), None when ``deadline`` passes first. Prints progress every 5 s."""
    import msgspec

    from csms.envelope import Kind, decode_envelope

    started = loop.time()
    ticker = asyncio.create_task(_tick(started, deadline, loop))
    try:
        async with asyncio.timeout_at(deadline):
            async for message in bus.messages():
                try:
                    envelope = decode_envelope(message.payload)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                request = envelope.request
                if envelope.kind is not Kind.CALL and request and request.message_id == message_id:
                    return envelope
    except TimeoutError:
        return None
    finally:
        ticker.cancel()
    return None


async def _tick(started: float, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
    while True:
        await asyncio.sleep(5)
        waited = loop.time() - started
        _progress(f"  still waiting ({waited:.0f} s of {deadline - started:.0f} s)")


def _refusal(version: str, answer: Envelope) -> str | None:
    """Why the station did not take the password, None when it accepted it."""
    from csms.envelope import Kind
    from manager.password_rotation import rotation_status

    if answer.kind is Kind.RESULT:
        status = rotation_status(
            version, answer.payload if isinstance(answer.payload, dict) else {}
        )
        if status == "Accepted":
            return None
        if status == "RebootRequired":
            return "it answered RebootRequired (it would switch only after a reboot)"
        return f"it answered {status or 'without a status for the password'}"
    if answer.kind is Kind.ERROR:
        return f"it answered CallError {answer.error_code}: {answer.error_description or ''}"
    if answer.kind is Kind.TIMEOUT:
        return "it did not answer within the gateway's call timeout"
    return f"the call was not delivered ({answer.error_description or answer.error_code})"


async def _hash_stored(
    services: Services,
    station_id: str,
    password: str,
    old_hash: str | None,
    deadline: float,
    loop: asyncio.AbstractEventLoop,
) -> bool:
    """Poll the registry until its hash checks ``password``; False at ``deadline``."""
    from services.credentials import verify_password

    while True:
        record = await services.stations.get(station_id)
        current = record.password_hash if record is not None else None
        changed = current is not None and current != old_hash
        if changed and await asyncio.to_thread(verify_password, password, current or ""):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.2)


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


def _describe(exc: ValidationError) -> str:
    """The settings errors without the values given: a value may hold a password."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "password":
        try:
            if args.password_command == "generate":
                _password_generate(args)
            else:
                _password_hash(args)
        except CommandError as exc:
            print(f"csms: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            return 130
        return 0
    try:
        settings = _settings_from(args)
    except ValidationError as exc:
        print(f"csms: invalid settings:\n{_describe(exc)}", file=sys.stderr)
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
        elif args.command == "station" and args.station_command == "rotate-password":
            return asyncio.run(_rotate_password(settings, args.station_id, args.wait))
        elif args.command == "station":
            asyncio.run(_station_add(settings, args))
        elif args.command == "token":
            asyncio.run(_token_add(settings, args))
    except CommandError as exc:
        print(f"csms: {exc}", file=sys.stderr)
        return exc.exit_code
    except StoreUnavailable as exc:
        print(f"csms: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"csms: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
