"""Password rotation end to end: ``csms station rotate-password`` against a real fleet
(``csms gateway`` + two ``csms manager`` processes on a private Mosquitto and Redis) and
stations built with the ``ocpp`` package, 2.0.1 (SetVariables BasicAuthPassword) and 1.6
(ChangeConfiguration AuthorizationKey).

Stations are registered with ``csms station add --profile 1 --password ...`` and connect with
HTTP Basic auth (security profile 1); after an accepted rotation the gateway admits the new
password and refuses the old one. A 1.6 station that reconnects with its new key right after
answering Accepted is admitted before any manager stored the answer (the pending password).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import signal
import string
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.exceptions import InvalidStatus

from csms.credentials import password_from_authorization_key, verify_password
from services.models import StationRecord
from services.redis_store import RedisStationRegistry
from tests.integration.fleet import Fleet
from tests.timing import timeout

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(
    _mosquitto: tuple[str, Any], _redis: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    fleet = Fleet(_mosquitto[0], _redis[0], tmp_path_factory.mktemp("rotation"), managers=2)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
async def registry(fleet: Fleet) -> AsyncIterator[RedisStationRegistry]:
    client = aioredis.from_url(fleet.redis_url)
    try:
        yield RedisStationRegistry(client, fleet.redis_prefix)
    finally:
        await client.aclose()


class Station201(ChargePoint201):
    """Answers SetVariables with ``status`` and keeps the passwords it was given."""

    status = "Accepted"
    passwords: list[str]

    @on("SetVariables")
    async def on_set_variables(
        self, set_variable_data: list[dict[str, Any]], **_: Any
    ) -> result201.SetVariables:
        results = []
        for entry in set_variable_data:
            if entry["variable"]["name"] == "BasicAuthPassword":
                self.passwords.append(entry["attribute_value"])
            results.append(
                {
                    "attribute_type": entry.get("attribute_type", "Actual"),
                    "attribute_status": self.status,
                    "component": entry["component"],
                    "variable": entry["variable"],
                }
            )
        return result201.SetVariables(set_variable_result=results)


class Station16(ChargePoint16):
    """Answers ChangeConfiguration with ``status`` and keeps the keys it was given."""

    status = "Accepted"
    passwords: list[str]

    @on("ChangeConfiguration")
    async def on_change_configuration(
        self, key: str, value: str, **_: Any
    ) -> result16.ChangeConfiguration:
        if key == "AuthorizationKey":
            self.passwords.append(password_from_authorization_key(value))
        return result16.ChangeConfiguration(status=self.status)


def _password() -> str:
    """A password both versions accept (20 letters and digits)."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(20))


def _basic(station_id: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{station_id}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Connected:
    """A station connected with Basic auth, its ocpp ChargePoint running."""

    def __init__(self, station: Station16 | Station201, ws: Any, task: asyncio.Task[None]):
        self.station, self.ws, self.task = station, ws, task

    async def close(self) -> None:
        self.task.cancel()
        await self.ws.close()


async def connect(fleet: Fleet, version: str, station_id: str, password: str) -> Connected:
    ws = await websockets.connect(
        fleet.url(station_id),
        subprotocols=[version],  # type: ignore[list-item]
        additional_headers=_basic(station_id, password),
    )
    assert ws.subprotocol == version
    station: Station16 | Station201
    if version == "ocpp1.6":
        station = Station16(station_id, ws, response_timeout=10)
    else:
        station = Station201(station_id, ws, response_timeout=10)
    station.passwords = []
    task = asyncio.create_task(station.start())
    if version == "ocpp1.6":
        boot = await station.call(
            call16.BootNotification(charge_point_model="M", charge_point_vendor="V")
        )
    else:
        boot = await station.call(
            call201.BootNotification(
                charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp"
            )
        )
    assert boot.status == "Accepted"
    return Connected(station, ws, task)


async def heartbeat(connected: Connected, version: str) -> None:
    request = call16.Heartbeat() if version == "ocpp1.6" else call201.Heartbeat()
    await connected.station.call(request)


async def wait_online(registry: RedisStationRegistry, station_id: str) -> StationRecord:
    for _ in range(100):
        record = await registry.get(station_id)
        if record is not None and record.online:
            return record
        await asyncio.sleep(0.1)
    raise AssertionError(f"{station_id} never showed online in the registry")


async def manager_logged(fleet: Fleet, event: str, station_id: str) -> dict[str, object]:
    """The first record of ``event`` about ``station_id`` a manager logs (polls the logs)."""
    deadline = time.monotonic() + timeout(30)
    while time.monotonic() < deadline:
        for process in fleet.manager_processes:
            for record in process.log_records():
                if record.get("event") == event and record.get("station") == station_id:
                    return record
        await asyncio.sleep(0.1)
    raise AssertionError(f"no manager logged {event!r} for {station_id}")


async def cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    """``csms ...`` against the fleet, in a thread so the stations keep answering."""
    return await asyncio.to_thread(fleet.cli, *args)


async def register(fleet: Fleet, version: str, password: str) -> str:
    station_id = f"ROT{version[-3:]}-{uuid.uuid4().hex[:6]}"
    args = ("--profile", "1", "--password", password, "--versions", version)
    added = await cli(fleet, "station", "add", station_id, *args)
    assert added.returncode == 0, added.stderr
    assert password not in added.stdout + added.stderr
    return station_id


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp1.6"])
async def test_accepted_rotation_updates_the_registry(
    fleet: Fleet, registry: RedisStationRegistry, version: str
) -> None:
    old_password = _password()
    station_id = await register(fleet, version, old_password)
    connected = await connect(fleet, version, station_id, old_password)
    try:
        before = await wait_online(registry, station_id)
        assert verify_password(old_password, before.password_hash or "")

        rotated = await cli(fleet, "station", "rotate-password", station_id, "--wait", "30")

        assert rotated.returncode == 0, rotated.stderr
        (new_password,) = connected.station.passwords
        after = await registry.get(station_id)
        assert after is not None
        assert verify_password(new_password, after.password_hash or "")
        assert not verify_password(old_password, after.password_hash or "")
        assert (after.security_profile, after.allowed_versions) == (1, [version])
        assert after.online and after.connection == before.connection
        # The station keeps its connection; nothing logged the password.
        await heartbeat(connected, version)
        for process in fleet.processes:
            text = process.log_path.read_text(errors="replace")
            assert new_password not in text
            assert new_password.encode().hex().upper() not in text
        assert new_password not in rotated.stdout + rotated.stderr
        events = [r for p in fleet.manager_processes for r in p.log_records()]
        assert any(
            r.get("event") == "password_changed" and r.get("station") == station_id for r in events
        )
    finally:
        await connected.close()
    # From the next connection on, the gateway checks the new password.
    again = await connect(fleet, version, station_id, new_password)
    await again.close()
    with pytest.raises(InvalidStatus) as refused:
        await connect(fleet, version, station_id, old_password)
    assert refused.value.response.status_code == 401


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp1.6"])
async def test_rejected_rotation_leaves_the_registry_unchanged(
    fleet: Fleet, registry: RedisStationRegistry, version: str
) -> None:
    old_password = _password()
    station_id = await register(fleet, version, old_password)
    connected = await connect(fleet, version, station_id, old_password)
    connected.station.status = "Rejected"
    try:
        before = await wait_online(registry, station_id)

        rotated = await cli(fleet, "station", "rotate-password", station_id, "--wait", "30")

        assert rotated.returncode == 1, rotated.stderr
        assert "Rejected" in rotated.stderr
        assert len(connected.station.passwords) == 1
        # The managers get the answer too: once one has logged its decision, it has written
        # whatever it (wrongly) would have.
        decision = await manager_logged(fleet, "password_not_changed", station_id)
        assert decision.get("level", decision.get("log_level")) == "warning", decision
        after = await registry.get(station_id)
        assert after is not None and after.password_hash == before.password_hash
        await heartbeat(connected, version)
    finally:
        await connected.close()


async def test_station_add_keeps_live_state_and_rotation_needs_a_connected_station(
    fleet: Fleet, registry: RedisStationRegistry
) -> None:
    password = _password()
    station_id = await register(fleet, "ocpp2.0.1", password)
    connected = await connect(fleet, "ocpp2.0.1", station_id, password)
    try:
        before = await wait_online(registry, station_id)
        args = ("--registration", "Pending", "--certificate-identity", "cs.example")
        changed = await cli(fleet, "station", "add", station_id, *args)
        assert changed.returncode == 0, changed.stderr
        after = await registry.get(station_id)
        assert after is not None
        assert after.registration == "Pending" and after.certificate_identity == "cs.example"
        assert after.password_hash == before.password_hash
        assert after.online and after.connection == before.connection and after.boot is not None
    finally:
        await connected.close()
    for _ in range(100):
        record = await registry.get(station_id)
        if record is not None and not record.online:
            break
        await asyncio.sleep(0.1)
    offline = await cli(fleet, "station", "rotate-password", station_id, "--wait", "5")
    assert offline.returncode == 2 and "offline" in offline.stderr
    unknown = await cli(fleet, "station", "rotate-password", "NO-SUCH-STATION", "--wait", "5")
    assert unknown.returncode == 2 and "not in the registry" in unknown.stderr


async def test_station_add_with_generated_password(
    fleet: Fleet, registry: RedisStationRegistry
) -> None:
    station_id = f"GEN-{uuid.uuid4().hex[:6]}"
    added = await cli(fleet, "station", "add", station_id, "--profile", "2", "--generate-password")
    assert added.returncode == 0, added.stderr
    lines = dict(line.split(": ", 1) for line in added.stdout.splitlines()[1:])
    password = lines["password (shown once, only its hash is stored)"]
    assert len(password) == 20  # suits 1.6 too: no versions were given
    assert password_from_authorization_key(lines["AuthorizationKey for OCPP 1.6 (hex)"]) == password
    record = await registry.get(station_id)
    assert record is not None and record.security_profile == 2 and record.known
    assert verify_password(password, record.password_hash or "")
    raw = await registry.client.get(f"{fleet.redis_prefix}station:{station_id}")
    assert isinstance(raw, bytes) and password.encode() not in raw

    refused = await cli(fleet, "station", "add", station_id, "--password", "short-one")
    assert refused.returncode == 2 and "short-one" not in refused.stderr
    cert_with_password = await cli(
        fleet, "station", "add", station_id, "--profile", "3", "--password", password
    )
    assert cert_with_password.returncode == 2 and "client certificate" in cert_with_password.stderr
    no_password = await cli(fleet, "station", "add", f"NOPW-{station_id}", "--profile", "1")
    assert no_password.returncode == 2 and "--generate-password" in no_password.stderr


class ReconnectingStation16(Station16):
    """A 1.6 station of the security whitepaper: once it answered Accepted to a new
    AuthorizationKey, it opens a new connection with that key at once."""

    fleet: Fleet
    reconnected: asyncio.Future[Any]
    """The new socket, or the ``InvalidStatus`` the gateway refused it with."""

    @after("ChangeConfiguration")
    async def reconnect_with_new_key(self, key: str, value: str, **_: Any) -> None:
        if key != "AuthorizationKey":
            return
        try:
            ws = await websockets.connect(
                self.fleet.url(self.id),
                subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                additional_headers=_basic(self.id, password_from_authorization_key(value)),
            )
        except InvalidStatus as exc:
            self.reconnected.set_result(exc)
        else:
            self.reconnected.set_result(ws)


def _signal_managers(fleet: Fleet, signum: signal.Signals) -> None:
    for manager in fleet.manager_processes:
        assert manager.process is not None
        manager.process.send_signal(signum)


async def test_16_station_reconnecting_at_once_with_its_new_key_is_admitted(
    fleet: Fleet, registry: RedisStationRegistry
) -> None:
    old_password = _password()
    station_id = await register(fleet, "ocpp1.6", old_password)
    ws = await websockets.connect(
        fleet.url(station_id),
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        additional_headers=_basic(station_id, old_password),
    )
    station = ReconnectingStation16(station_id, ws, response_timeout=10)
    station.passwords, station.fleet = [], fleet
    station.reconnected = asyncio.get_running_loop().create_future()
    connected = Connected(station, ws, asyncio.create_task(station.start()))
    reconnected: Any = None
    try:
        boot = await station.call(
            call16.BootNotification(charge_point_model="M", charge_point_vendor="V")
        )
        assert boot.status == "Accepted"
        await wait_online(registry, station_id)
        # Managers paused: the Accepted answer waits in the broker, so the reconnection surely
        # comes before any manager stored the new hash (the window is ~100 ms otherwise).
        _signal_managers(fleet, signal.SIGSTOP)
        try:
            rotating = asyncio.create_task(
                cli(fleet, "station", "rotate-password", station_id, "--wait", "30")
            )
            reconnected = await asyncio.wait_for(station.reconnected, 20)
            assert not isinstance(reconnected, InvalidStatus), reconnected.response
            assert reconnected.subprotocol == "ocpp1.6"
            (new_password,) = station.passwords
            during = await registry.get(station_id)
            assert during is not None
            assert verify_password(old_password, during.password_hash or "")
            assert verify_password(new_password, during.pending_password_hash or "")
        finally:
            _signal_managers(fleet, signal.SIGCONT)
        rotated = await rotating
        assert rotated.returncode == 0, rotated.stderr
        after_rotation = await registry.get(station_id)
        assert after_rotation is not None
        assert after_rotation.password_hash == during.pending_password_hash
        assert after_rotation.pending_password_hash is None
        admitted = [
            r
            for r in fleet.gateway.log_records()
            if r.get("event") == "station admitted" and r.get("station") == station_id
        ]
        assert admitted[-1].get("reason") == "password verified (rotation pending)", admitted
    finally:
        if reconnected is not None and not isinstance(reconnected, InvalidStatus):
            await reconnected.close()
        await connected.close()
    again = await connect(fleet, "ocpp1.6", station_id, new_password)
    await again.close()
    with pytest.raises(InvalidStatus) as refused:
        await connect(fleet, "ocpp1.6", station_id, old_password)
    assert refused.value.response.status_code == 401


class LateStation201(Station201):
    """Takes the new password, but answers after the gateway's call timeout (5 s here): the
    CSMS never learns that it did."""

    delay = 0.0

    @on("SetVariables")
    async def on_set_variables(
        self, set_variable_data: list[dict[str, Any]], **_: Any
    ) -> result201.SetVariables:
        result = await super().on_set_variables(set_variable_data)
        await asyncio.sleep(self.delay)
        return result


async def test_a_lost_rotation_outcome_never_locks_the_station_out(
    fleet: Fleet, registry: RedisStationRegistry
) -> None:
    """Rotation 1 is taken by the station but its answer comes too late; rotation 2 is
    rejected. The station uses password 1: it must still get in, and its login settles it."""
    old_password = _password()
    station_id = await register(fleet, "ocpp2.0.1", old_password)
    ws = await websockets.connect(
        fleet.url(station_id),
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        additional_headers=_basic(station_id, old_password),
    )
    station = LateStation201(station_id, ws, response_timeout=10)
    station.passwords, station.delay = [], 7.0
    connected = Connected(station, ws, asyncio.create_task(station.start()))
    try:
        boot = await station.call(
            call201.BootNotification(
                charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp"
            )
        )
        assert boot.status == "Accepted"
        await wait_online(registry, station_id)
        first = await cli(fleet, "station", "rotate-password", station_id, "--wait", "20")
        assert first.returncode != 0 and "did not answer" in first.stderr, first.stderr
        (taken,) = station.passwords
        await asyncio.sleep(station.delay)  # its late answer is dropped by the gateway
        station.status, station.delay = "Rejected", 0.0
        second = await cli(fleet, "station", "rotate-password", station_id, "--wait", "20")
        assert second.returncode == 1 and "Rejected" in second.stderr, second.stderr
    finally:
        await connected.close()
    again = await connect(fleet, "ocpp2.0.1", station_id, taken)
    await again.close()
    for _ in range(100):
        record = await registry.get(station_id)
        if record is not None and verify_password(taken, record.password_hash or ""):
            break
        await asyncio.sleep(0.1)
    assert record is not None and verify_password(taken, record.password_hash or "")
    assert record.pending_password_hash is None and record.unsettled_password_hashes == []
    with pytest.raises(InvalidStatus) as refused:
        await connect(fleet, "ocpp2.0.1", station_id, old_password)
    assert refused.value.response.status_code == 401
