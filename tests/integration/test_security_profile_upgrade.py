"""Security-profile upgrade (OCPP 2.0.1 A05, 1.6 security whitepaper) end to end: the embedded
CSMS (gateway + manager on the in-process bus) with real plain and TLS listeners, stations as
real WebSocket clients, and the CSMS call sent through the operations layer's CallSender.

A profile-1 station that accepts SecurityProfile=2 keeps being admitted at profile 1 until it
connects over TLS with Basic auth; that connection raises its registered profile to 2, after
which a plain-ws connection is refused. A Rejected answer records nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from csms.bus.memory import MemoryBroker
from csms.config import Settings
from csms.credentials import hash_password
from csms.topics import Topics
from gateway.server import Gateway
from manager.worker import Manager
from operations.calls import CallOutcome, CallSender, Outcome
from services import Services
from services.events import EventKind
from services.factory import open_services
from services.interfaces import StationRegistry
from services.memory import MemoryStationRegistry
from services.models import RegistrationStatus, StationCredentials, StationRecord
from services.redis_store import RedisStationRegistry
from tests.certs import Pki, client_context, make_pki
from tests.integration.test_security_profiles import (
    PLAIN,
    TLS_MIXED,
    V16,
    V201,
    basic,
    open_ws,
    refused,
    security_settings,
)
from tests.timing import timeout

pytestmark = pytest.mark.integration

PASSWORD = "Upgrade-password-0123456789"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), station_ids=["CP3"])


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


class Csms:
    """A running embedded CSMS and a CallSender on its bus."""

    def __init__(self, gateway: Gateway, services: Services, sender: CallSender) -> None:
        self.gateway, self.services, self.sender = gateway, services, sender

    async def register(self, station_id: str, password_hash: str) -> None:
        await self.services.stations.put(
            StationRecord(
                station_id=station_id,
                registration=RegistrationStatus.ACCEPTED,
                security_profile=1,
                password_hash=password_hash,
            )
        )

    async def record(self, station_id: str) -> StationRecord:
        record = await self.services.stations.get(station_id)
        assert record is not None
        return record

    async def send(
        self, station_id: str, version: str, action: str, payload: dict[str, Any]
    ) -> CallOutcome:
        """Send once the gateway holds the station (a call to nobody is OFFLINE)."""
        async with asyncio.timeout(timeout(10)):
            while True:
                outcome = await self.sender.send(
                    station_id, version, action, payload, timeout=timeout(10)
                )
                if outcome.outcome is not Outcome.OFFLINE:
                    return outcome
                await asyncio.sleep(0.02)

    async def connected_anew(self, station_id: str, before: str | None) -> StationRecord:
        """The record once the manager stored a connection other than ``before``."""
        return await self.until(station_id, lambda r: r.online and r.connection != before)

    async def until(self, station_id: str, check: Callable[[StationRecord], bool]) -> StationRecord:
        """The station's record once ``check`` holds for it."""
        async with asyncio.timeout(timeout(10)):
            while not check(record := await self.record(station_id)):  # noqa: ASYNC110 (a store)
                await asyncio.sleep(0.02)
        return record


@contextlib.asynccontextmanager
async def embedded(settings: Settings) -> AsyncIterator[Csms]:
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(settings))
        broker = MemoryBroker()
        manager_bus = await stack.enter_async_context(broker.client())
        gateway_bus = await stack.enter_async_context(broker.client())
        sender_bus = await stack.enter_async_context(broker.client())
        await stack.enter_async_context(Manager(settings, manager_bus, services))
        gateway = await stack.enter_async_context(
            Gateway(settings, gateway_bus, registry=services.stations)
        )
        topics = Topics(prefix=settings.topic_prefix, group=settings.shared_group)
        sender = await stack.enter_async_context(CallSender(sender_bus, topics, origin="test"))
        yield Csms(gateway, services, sender)


@pytest.fixture
async def csms(pki: Pki) -> AsyncIterator[Csms]:
    async with embedded(security_settings(pki)) as running:
        yield running


# -- the station side: raw OCPP-J frames ----------------------------------------------------


async def answer_call(ws: ClientConnection, answer: Callable[[str, dict[str, Any]], Any]) -> str:
    """Read the CSMS's next Call and send ``answer(action, payload)`` as its CallResult."""
    frame = json.loads(await ws.recv())
    assert frame[0] == 2, frame
    _, message_id, action, payload = frame
    await ws.send(json.dumps([3, message_id, answer(action, payload)]))
    return str(action)


async def heartbeat(ws: ClientConnection) -> None:
    """A Heartbeat and its answer. The manager handles a station's messages in arrival
    order, so once it is answered the station's earlier answer has been handled too."""
    message_id = f"hb-{next(_ids)}"
    await ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
    while True:
        frame = json.loads(await ws.recv())
        if frame[0] in (3, 4) and frame[1] == message_id:
            return


def security_profile_call(version: str, profile: int) -> tuple[str, dict[str, Any]]:
    if version == V16:
        return "ChangeConfiguration", {"key": "SecurityProfile", "value": str(profile)}
    return "SetVariables", {
        "setVariableData": [
            {
                "component": {"name": "SecurityCtrlr"},
                "variable": {"name": "SecurityProfile"},
                "attributeValue": str(profile),
            }
        ]
    }


def answering(status: str) -> Callable[[str, dict[str, Any]], Any]:
    def answer(action: str, payload: dict[str, Any]) -> Any:
        if action == "ChangeConfiguration":
            return {"status": status}
        if action == "SetNetworkProfile":
            return {"status": status}
        return {
            "setVariableResult": [
                {
                    "attributeStatus": status,
                    "component": entry["component"],
                    "variable": entry["variable"],
                }
                for entry in payload["setVariableData"]
            ]
        }

    return answer


async def ask_upgrade(
    csms: Csms,
    ws: ClientConnection,
    station_id: str,
    version: Subprotocol,
    status: str,
    call: tuple[str, dict[str, Any]] | None = None,
) -> None:
    """Send the upgrade call, answer it with ``status``, and wait until the manager has
    handled the answer."""
    action, payload = call or security_profile_call(version, 2)
    answered: Awaitable[str] = asyncio.ensure_future(answer_call(ws, answering(status)))
    outcome = await csms.send(station_id, version, action, payload)
    assert outcome.outcome is Outcome.RESULT, outcome
    assert await answered == action
    await heartbeat(ws)


def tls_station(csms: Csms, pki: Pki, station_id: str, version: Subprotocol) -> Any:
    return open_ws(
        csms.gateway.url_for(station_id, TLS_MIXED),
        version,
        headers=basic(station_id, PASSWORD),
        tls=client_context(pki),
    )


def plain_station(csms: Csms, station_id: str, version: Subprotocol) -> Any:
    return open_ws(
        csms.gateway.url_for(station_id, PLAIN), version, headers=basic(station_id, PASSWORD)
    )


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [V201, V16], ids=["2.0.1", "1.6"])
async def test_accepted_upgrade_is_raised_by_a_tls_connection_then_ws_is_refused(
    csms: Csms, pki: Pki, password_hash: str, version: Subprotocol
) -> None:
    station_id = f"UP-{version}"
    await csms.register(station_id, password_hash)
    async with await plain_station(csms, station_id, version) as ws:
        await ask_upgrade(csms, ws, station_id, version, "Accepted")
    record = await csms.record(station_id)
    assert (record.security_profile, record.pending_security_profile) == (1, 2)

    # The station moves up: TLS + Basic auth is profile 2.
    async with await tls_station(csms, pki, station_id, version) as ws:
        record = await csms.until(station_id, lambda r: r.security_profile == 2)
        assert record.pending_security_profile is None
        await heartbeat(ws)  # the connection works at its new profile
    page = await csms.services.events.read(
        kinds=frozenset({EventKind.STATION_SECURITY_PROFILE_RAISED.value}), station_id=station_id
    )
    assert [event.data["security_profile"] for event in page.events] == [2]

    # Profile 1 (Basic auth over plain ws) is a downgrade now.
    response = await refused(
        csms.gateway.url_for(station_id, PLAIN), version, headers=basic(station_id, PASSWORD)
    )
    assert response.status_code == 403
    assert b"downgrade refused" in response.body
    # ... and profile 2 still connects.
    async with await tls_station(csms, pki, station_id, version) as ws:
        await heartbeat(ws)
    assert (await csms.record(station_id)).security_profile == 2


@pytest.mark.parametrize("version", [V201, V16], ids=["2.0.1", "1.6"])
async def test_station_reconnecting_at_its_old_profile_stays_at_it_and_is_admitted(
    csms: Csms, password_hash: str, version: Subprotocol
) -> None:
    station_id = f"STAY-{version}"
    await csms.register(station_id, password_hash)
    async with await plain_station(csms, station_id, version) as ws:
        await ask_upgrade(csms, ws, station_id, version, "Accepted")
    before = (await csms.record(station_id)).connection
    for _ in range(2):
        async with await plain_station(csms, station_id, version) as ws:
            await heartbeat(ws)
            record = await csms.connected_anew(station_id, before)
            before = record.connection
    record = await csms.record(station_id)
    assert (record.security_profile, record.pending_security_profile) == (1, 2)
    page = await csms.services.events.read(
        kinds=frozenset({EventKind.STATION_SECURITY_PROFILE_RAISED.value}), station_id=station_id
    )
    assert page.events == []


@pytest.mark.parametrize("version", [V201, V16], ids=["2.0.1", "1.6"])
async def test_rejected_upgrade_records_nothing(
    csms: Csms, pki: Pki, password_hash: str, version: Subprotocol
) -> None:
    station_id = f"NO-{version}"
    await csms.register(station_id, password_hash)
    async with await plain_station(csms, station_id, version) as ws:
        await ask_upgrade(csms, ws, station_id, version, "Rejected")
    record = await csms.record(station_id)
    assert (record.security_profile, record.pending_security_profile) == (1, None)
    # A TLS connection (profile 2 is above the registered 1: admitted) raises nothing ...
    before = record.connection
    async with await tls_station(csms, pki, station_id, version) as ws:
        await heartbeat(ws)
        record = await csms.connected_anew(station_id, before)
    assert (record.security_profile, record.pending_security_profile) == (1, None)
    # ... so plain ws keeps working.
    async with await plain_station(csms, station_id, version) as ws:
        await heartbeat(ws)
    assert (await csms.record(station_id)).security_profile == 1


async def test_accepted_set_network_profile_with_a_higher_profile_is_pending(
    csms: Csms, pki: Pki, password_hash: str
) -> None:
    """2.0.1 A05 by a new network connection profile: SetNetworkProfile Accepted (then the
    operator's NetworkConfigurationPriority and reset) is the upgrade."""
    station_id = "NETPROFILE"
    await csms.register(station_id, password_hash)
    call = (
        "SetNetworkProfile",
        {
            "configurationSlot": 2,
            "connectionData": {
                "ocppVersion": "OCPP20",
                "ocppTransport": "JSON",
                "ocppCsmsUrl": "wss://csms.example/ocpp",
                "messageTimeout": 30,
                "securityProfile": 2,
                "ocppInterface": "Wired0",
            },
        },
    )
    async with await plain_station(csms, station_id, V201) as ws:
        await ask_upgrade(csms, ws, station_id, V201, "Accepted", call)
    assert (await csms.record(station_id)).pending_security_profile == 2
    async with await tls_station(csms, pki, station_id, V201) as ws:
        await csms.until(station_id, lambda r: r.security_profile == 2)
        await heartbeat(ws)


# -- the registry: memory and Redis -----------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def registry(request: pytest.FixtureRequest) -> StationRegistry:
    if request.param == "memory":
        return MemoryStationRegistry()
    client: aioredis.Redis = request.getfixturevalue("redis_client")
    return RedisStationRegistry(client, f"t{uuid.uuid4().hex[:8]}:")


async def test_registry_records_and_raises_an_upgrade(registry: StationRegistry) -> None:
    assert await registry.set_pending_security_profile("ABSENT", 2) is False
    assert await registry.raise_security_profile("ABSENT", 2) is None
    await registry.put(StationRecord(station_id="CS1", security_profile=2))
    assert await registry.set_pending_security_profile("CS1", 2) is False  # not above
    assert await registry.set_pending_security_profile("CS1", 1) is False  # never lower
    assert await registry.raise_security_profile("CS1", 3) is None  # nothing pending
    assert await registry.set_pending_security_profile("CS1", 3) is True
    before = await registry.get("CS1")
    assert before is not None and before.pending_security_profile == 3
    assert await registry.raise_security_profile("CS1", 2) is None  # below the upgrade
    assert await registry.get("CS1") == before
    assert await registry.raise_security_profile("CS1", 3) == 3
    after = await registry.get("CS1")
    assert after is not None
    assert (after.security_profile, after.pending_security_profile) == (3, None)
    assert msgspec.structs.replace(after, security_profile=2, pending_security_profile=3) == before
    assert await registry.raise_security_profile("CS1", 3) is None  # settled: a repeat is a no-op
    with pytest.raises(ValueError, match="security profile"):
        await registry.set_pending_security_profile("CS1", 4)


async def test_operator_setting_the_profile_settles_the_upgrade(registry: StationRegistry) -> None:
    await registry.put(StationRecord(station_id="CS1", security_profile=1))
    assert await registry.set_pending_security_profile("CS1", 2) is True
    record = await registry.set_credentials("CS1", StationCredentials(security_profile=2))
    assert (record.security_profile, record.pending_security_profile) == (2, None)
    assert await registry.set_pending_security_profile("CS1", 3) is True
    record = await registry.set_credentials("CS1", StationCredentials(security_profile=2))
    assert record.pending_security_profile == 3  # still above: still pending
