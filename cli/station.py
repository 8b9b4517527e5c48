"""``csms station``: register stations and rotate their passwords (in the stores), list and
show them (through the operator API)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from cli import message_log, rules
from cli.api_client import ApiClient, Progress, add_api_flags, cell, print_json, segment, table
from cli.common import (
    CommandError,
    add_setting_flags,
    parse_versions,
    progress,
    read_secret,
    require_redis,
)
from csms.config import Settings

__all__ = ["add_commands", "run"]


def add_commands(commands: Any) -> None:
    """The ``station`` command group."""
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
    add_setting_flags(add_station)

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
    add_setting_flags(rotate)
    _add_api_commands(station_commands)
    rules.add_station_command(station_commands)
    message_log.add_station_command(station_commands)


def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.station_command == "rotate-password":
        return asyncio.run(_rotate_password(settings, args.station_id, args.wait))
    asyncio.run(_station_add(settings, args))
    return 0


_REFUSALS = {
    "password_unusable": "{message} (--versions narrows the versions it must suit)",
    "password_without_basic_auth": "a password is for security profile 1 or 2: add --profile 1 "
    "(ws) or --profile 2 (wss)",
    "password_with_certificate": "security profile 3 authenticates with a client certificate, "
    "not a password",
    "password_required": "security profile {profile} uses HTTP Basic auth: give --password or "
    "--generate-password",
}
"""What ``station add`` says for each refusal of :mod:`operations.stations` (its flags)."""


async def _station_add(settings: Settings, args: argparse.Namespace) -> None:
    """Register (or update) a station (:func:`operations.stations.register`).

    Only the fields given change; connection and boot facts are kept. Without
    ``--registration`` a registered station keeps its registration and any other becomes
    Accepted.
    """
    import msgspec

    from csms.credentials import authorization_key
    from operations.stations import StationChange, StationRefused, register
    from services.factory import open_services
    from services.models import RegistrationStatus

    station_id: str = args.station_id
    versions = parse_versions(args.versions)
    password: str | None = args.password
    if password == "-":
        password = read_secret("password: ")
    require_redis(settings)
    change = StationChange(
        registration=RegistrationStatus(args.registration) if args.registration else None,
        security_profile=args.profile,
        password=password if password is not None else msgspec.UNSET,
        generate_password=args.generate_password,
        certificate_identity=(
            args.certificate_identity if args.certificate_identity is not None else msgspec.UNSET
        ),
        allowed_versions=versions,
    )
    async with open_services(settings) as services:
        try:
            saved = await register(services.stations, station_id, change, exist_ok=True)
        except StationRefused as exc:
            template = _REFUSALS.get(exc.refusal.value, "{message}")
            raise CommandError(template.format(message=exc, profile=exc.profile)) from None
    record = saved.record
    facts = [
        f"registration {record.registration.value}",
        f"security profile {record.security_profile}",
    ]
    if record.password_hash is not None:
        facts.append("password set" if saved.password_changed else "password kept")
    if record.certificate_identity is not None:
        facts.append(f"certificate identity {record.certificate_identity}")
    if record.allowed_versions:
        facts.append(f"versions {','.join(record.allowed_versions)}")
    print(f"station {station_id}: {', '.join(facts)}")
    generated = saved.generated_password
    if generated is not None:
        print(f"password (shown once, only its hash is stored): {generated}")
        if "ocpp1.6" in saved.password_versions:
            print(f"AuthorizationKey for OCPP 1.6 (hex): {authorization_key(generated)}")


async def _rotate_password(settings: Settings, station_id: str, wait: float) -> int:
    """``csms station rotate-password``: see the command's description for exit statuses."""
    from cli.processes import mqtt_bus
    from csms.topics import Topics
    from operations.calls import CallSender
    from operations.password import RotationRefused, RotationStatus, rotate_and_confirm
    from services.action_rules import ActionDenied
    from services.factory import open_services

    if not settings.broker_url or not settings.redis_url:
        raise CommandError(
            "rotating a password needs the fleet: set --broker-url (the broker the gateways "
            "use) and --redis-url (the managers' registry), or CSMS_BROKER_URL / "
            "CSMS_REDIS_URL; the embedded default cannot be reached from another process"
        )
    if wait <= 0:
        raise CommandError("--wait must be a positive number of seconds")
    topics = Topics(prefix=settings.topic_prefix, group=settings.shared_group)
    bus = mqtt_bus(settings, "cli")
    async with open_services(settings) as services, bus:
        connect_wait = max(1.0, min(10.0, wait))
        if not await bus.wait_connected(connect_wait):
            raise CommandError(
                f"not connected to the MQTT broker within {connect_wait:g} s "
                "(the log above says why)"
            )
        async with CallSender(bus, topics, origin="cli", rules=services.action_rules) as sender:
            ticker = asyncio.create_task(_tick(wait))
            try:
                result = await rotate_and_confirm(
                    sender, services.stations, station_id, wait=wait, progress=progress
                )
            except (RotationRefused, ActionDenied) as exc:
                raise CommandError(str(exc)) from None
            finally:
                ticker.cancel()
    if result.status is RotationStatus.STORED:
        progress(
            f"done: the registry holds the new password of {station_id}; "
            "it applies from the station's next connection"
        )
        return 0
    if result.status is RotationStatus.REFUSED:
        progress(f"{station_id} did not take the new password: {result.reason}; password unchanged")
        return 1
    progress(
        f"outcome unknown: {result.reason}; the new password stays accepted at login until the "
        "station shows which one it uses"
    )
    return 3


async def _tick(wait: float) -> None:
    """Say every 5 s that the command is still waiting."""
    waited = 0
    while True:
        await asyncio.sleep(5)
        waited += 5
        progress(f"  still waiting ({waited} s of {wait:.0f} s)")


# --- through the operator API: list, show --------------------------------------------------


def _add_api_commands(station_commands: Any) -> None:
    """``station list`` and ``station show``: read the registry through the operator API."""
    listing = station_commands.add_parser(
        "list",
        help="list stations (operator API)",
        description="Stations as the registry knows them, in id order; every page is read.",
    )
    state = listing.add_mutually_exclusive_group()
    state.add_argument("--online", dest="online", action="store_true", default=None)
    state.add_argument("--offline", dest="online", action="store_false")
    listing.add_argument("--registration", choices=["Accepted", "Pending", "Rejected"])
    listing.add_argument("--prefix", help="only ids starting with this")
    listing.add_argument("--limit", type=_positive, help="at most this many stations")
    add_api_flags(listing)
    listing.set_defaults(api_command=_station_list)

    show = station_commands.add_parser(
        "show",
        help="one station: boot info, connectors, active transactions (operator API)",
    )
    show.add_argument("station_id")
    add_api_flags(show)
    show.set_defaults(api_command=_station_show)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _station_list(client: ApiClient, args: argparse.Namespace) -> int:
    params = {"online": args.online, "registration": args.registration, "prefix": args.prefix}
    stations = client.items("/stations", params, limit=args.limit, progress=Progress("stations"))
    if args.json:
        print_json(stations)
        return 0
    if not stations:
        progress("no stations match")
        return 0
    rows = [
        [
            item["station_id"],
            item["online"],
            item["registration"],
            item["ocpp_version"],
            _boot_name(item.get("boot")),
            item["security_profile"],
            item["last_seen"],
        ]
        for item in stations
    ]
    headers = ["STATION", "ONLINE", "REGISTRATION", "VERSION", "MODEL", "PROFILE", "LAST SEEN"]
    print(table(headers, rows), flush=True)
    return 0


def _boot_name(boot: dict[str, Any] | None) -> str | None:
    return f"{boot['vendor']} {boot['model']}" if boot else None


def _station_show(client: ApiClient, args: argparse.Namespace) -> int:
    station = client.get(f"/stations/{segment(args.station_id)}")
    if args.json:
        print_json(station)
        return 0
    boot = station.get("boot") or {}
    facts = [
        ("station", station["station_id"]),
        ("registration", station["registration"]),
        ("online", station["online"]),
        ("OCPP version", station["ocpp_version"]),
        ("gateway", station["gateway"]),
        ("connected at", station["connected_at"]),
        ("disconnected at", station["disconnected_at"]),
        ("last seen", station["last_seen"]),
        ("security profile", station["security_profile"]),
        ("password", "set" if station["has_password"] else None),
        ("vendor", boot.get("vendor")),
        ("model", boot.get("model")),
        ("serial number", boot.get("serial_number")),
        ("firmware", boot.get("firmware_version")),
        ("last boot", station["last_boot_at"]),
        ("boot reason", boot.get("reason")),
    ]
    width = max(len(name) for name, _ in facts)
    print("\n".join(f"{name + ':':<{width + 1}}  {cell(value)}" for name, value in facts))
    connectors = station["connectors"]
    print(f"\nconnectors ({len(connectors)}):")
    if connectors:
        rows = [
            [c["evse_id"], c["connector_id"], c["status"], c["error_code"], c["at"]]
            for c in connectors
        ]
        print(table(["EVSE", "CONNECTOR", "STATUS", "ERROR", "SINCE"], rows))
    active = station["active_transactions"]
    print(f"\nactive transactions ({len(active)}):")
    if active:
        rows = [
            [tx["transaction_id"], tx["evse_id"], tx["id_token"], tx["started_at"], tx["energy_wh"]]
            for tx in active
        ]
        print(table(["TRANSACTION", "EVSE", "TOKEN", "STARTED", "ENERGY WH"], rows))
    sys.stdout.flush()
    return 0
