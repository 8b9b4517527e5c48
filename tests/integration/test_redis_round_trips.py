"""Redis round trips per station message, counted on a real, private redis-server.

A round trip is one write of commands to the socket followed by reading their answers: one
command, or a whole pipeline or script. The client's connection class counts them (the
connection handshake aside), so the figure is what the manager waits for, not how many
commands Redis runs. Each hot-path message of both versions goes through the real manager
(in-process bus, the project's handlers and routers) on the Redis stores, after a warm-up
pass by another station has loaded the scripts, and costs at most two round trips: the
claim with the reads its handler needs, then the handler's writes with the stored answer.
The same messages on the in-memory stores give the same answers and leave the same state.

The unit of work behind it is tested here too: a concurrent write between the two round
trips makes the manager handle the Call again (applied once), and a commit that a stalled
Redis applies after the manager gave up leaves a stored answer the station's retry gets.

Both clients are counted: redis-py alone (stores built without the thin client), and the
stores as ``open_services`` builds them, the hot path on :mod:`services.resp` with the event
log in the Calls' units, where a message that appends an event (a boot, a status, a
transaction started or ended) still costs two round trips: the XADD is in the APPLY.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Any, ClassVar

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from csms.bus.memory import MemoryBroker
from csms.config import Settings, TariffSettings
from csms.envelope import Envelope, Kind
from csms.versions import OcppVersion, supported
from manager.context import CallContext
from manager.router import Router, default_routers
from manager.worker import Manager
from services import Services
from services.events import MemoryEventLog
from services.memory import (
    MemoryIdempotencyStore,
    MemoryStationRegistry,
    MemoryTokenStore,
    MemoryTransactionStore,
)
from services.models import (
    AuthorizationStatus,
    RegistrationStatus,
    TokenRecord,
    Transaction,
    TransactionChange,
)
from services.redis_events import RedisEventLog
from services.redis_store import (
    RedisIdempotencyStore,
    RedisStationRegistry,
    RedisTokenStore,
    RedisTransactionStore,
)
from services.resp import RespClient
from services.rules import encode_id
from services.tariff import ConfiguredTariff
from tests.servers import ServerProcess
from tests.unit.test_worker import StationSide, heartbeat_call, settled

pytestmark = pytest.mark.integration

MAX_ROUND_TRIPS = 2
AT = "2025-01-15T10:00:00.000Z"
TARIFF = TariffSettings(energy_price_per_kwh=Decimal("0.40"), session_fee=Decimal("0.50"))
WARM = {OcppVersion.OCPP16: "W16", OcppVersion.OCPP201: "W201"}
# Ids percent-encoded in keys: BEGIN's Lua encoding must name the records the stores do, or
# the handler's read of one costs a third round trip.
COUNTED = {OcppVersion.OCPP16: "S/16 é:1", OcppVersion.OCPP201: "S/201 ü:%2"}


class CountingConnection(aioredis.Connection):
    """A connection that records each round trip (the commands written before a read)."""

    trips: ClassVar[list[list[str]]]
    _pending: list[str]
    _handshake: bool = False

    def pack_command(self, *args: Any) -> list[bytes]:
        self._pending = [*getattr(self, "_pending", []), _name(args[0])]
        return super().pack_command(*args)

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        self._handshake = True
        try:
            await super().on_connect_check_health(check_health)
        finally:
            self._handshake = False

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        pending, self._pending = getattr(self, "_pending", []), []
        if not self._handshake:
            type(self).trips.append(pending)
        await super().send_packed_command(command, check_health)


def _name(arg: Any) -> str:
    return (arg.decode() if isinstance(arg, bytes) else str(arg)).upper()


def counting_client(url: str, **kwargs: Any) -> tuple[aioredis.Redis, list[list[str]]]:
    trips: list[list[str]] = []
    connection = type("Counting", (CountingConnection,), {"trips": trips})
    pool = aioredis.ConnectionPool.from_url(url, connection_class=connection, **kwargs)
    return aioredis.Redis(connection_pool=pool), trips


def counting_thin_client(url: str, trips: list[list[str]], **kwargs: Any) -> RespClient:
    """A thin client whose every socket write (its handshake aside) is one round trip in
    ``trips``, named by the commands it carried."""

    def count(commands: list[bytes]) -> None:
        trips.append([command.split(b"\r\n", 3)[2].decode().upper() for command in commands])

    return RespClient.from_url(url, trace=count, **kwargs)


def redis_services(client: aioredis.Redis, prefix: str, fast: RespClient | None = None) -> Services:
    """The Redis stores of the hot path; with ``fast`` as ``open_services`` builds them (the
    thin client, the event log holding a Call's events in its unit)."""
    services = Services(
        stations=RedisStationRegistry(client, prefix, fast=fast),
        tokens=RedisTokenStore(client, prefix, fast=fast),
        transactions=RedisTransactionStore(client, prefix, fast=fast),
        tariff=ConfiguredTariff(TARIFF),
        idempotency=RedisIdempotencyStore(client, prefix, fast=fast),
    )
    if fast is not None:
        services.events = RedisEventLog(client, prefix, fast=fast, in_calls=True)
    return services


def memory_services() -> Services:
    return Services(
        stations=MemoryStationRegistry(),
        tokens=MemoryTokenStore(),
        transactions=MemoryTransactionStore(),
        tariff=ConfiguredTariff(TARIFF),
        idempotency=MemoryIdempotencyStore(),
        events=MemoryEventLog(),
    )


@contextlib.asynccontextmanager
async def fleet_of_one(
    services: Services, routers: dict[OcppVersion, Router] | None = None
) -> AsyncIterator[tuple[Manager, StationSide]]:
    """A manager on ``services`` (provisioned) and a station side on one in-process bus."""
    for station_id in [*WARM.values(), *COUNTED.values()]:
        await services.stations.provision(station_id, RegistrationStatus.ACCEPTED)
    await services.tokens.put(TokenRecord(id_token="TAG1", status=AuthorizationStatus.ACCEPTED))
    broker = MemoryBroker()
    async with (
        broker.client() as bus,
        Manager(Settings(), bus, services, routers=routers) as manager,
        StationSide(broker) as side,
    ):
        yield manager, side


class Station:
    """One station's side of the bus: sends Calls and returns their answers (CSMS calls it
    gets meanwhile, such as CostUpdated, are set aside)."""

    def __init__(self, side: StationSide, station_id: str, version: str) -> None:
        self.side = side
        self.station_id = station_id
        self.version = version
        self._ids = 0

    async def call(
        self, action: str, payload: dict[str, Any], *, connection: str = "conn-1"
    ) -> Envelope:
        self._ids += 1
        call = heartbeat_call(
            station=self.station_id,
            message_id=f"m{self._ids}",
            version=self.version,
            action=action,
            payload=payload,
            connection=connection,
        )
        return await self.send(call)

    async def send(self, call: Envelope) -> Envelope:
        await self.side.send(call)
        while True:
            _, answer = await self.side.receive()
            if answer.kind is not Kind.CALL and answer.message_id == call.message_id:
                return answer


Measure = Callable[[str, dict[str, Any]], Awaitable[Envelope]]


async def session_v16(measure: Measure) -> None:
    await measure("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
    await measure("Heartbeat", {})
    await measure(
        "StatusNotification",
        {"connectorId": 1, "errorCode": "NoError", "status": "Preparing", "timestamp": AT},
    )
    await measure("Authorize", {"idTag": "TAG1"})
    started = await measure(
        "StartTransaction",
        {"connectorId": 1, "idTag": "TAG1", "meterStart": 1000, "timestamp": AT},
    )
    tx_id = started.payload["transactionId"]
    values = [
        {
            "timestamp": "2025-01-15T10:10:00.000Z",
            "sampledValue": [{"value": "1500", "measurand": "Energy.Active.Import.Register"}],
        }
    ]
    await measure("MeterValues", {"connectorId": 1, "transactionId": tx_id, "meterValue": values})
    stopped = await measure(
        "StopTransaction",
        {
            "transactionId": tx_id,
            "idTag": "TAG1",
            "meterStop": 2500,
            "timestamp": "2025-01-15T10:20:00.000Z",
        },
    )
    assert stopped.payload["idTagInfo"]["status"] == "Accepted"


TOKEN = {"idToken": "TAG1", "type": "ISO14443"}


def started_event(tx_id: str, at: str, wh: int) -> dict[str, Any]:
    return {
        "eventType": "Started",
        "triggerReason": "Authorized",
        "timestamp": at,
        "seqNo": 0,
        "transactionInfo": {"transactionId": tx_id},
        "idToken": TOKEN,
        "evse": {"id": 1, "connectorId": 1},
        "meterValue": [
            {"timestamp": at, "sampledValue": [{"value": wh, "context": "Transaction.Begin"}]}
        ],
    }


def updated_event(tx_id: str, seq_no: int, at: str, wh: int) -> dict[str, Any]:
    return {
        "eventType": "Updated",
        "triggerReason": "MeterValuePeriodic",
        "timestamp": at,
        "seqNo": seq_no,
        "transactionInfo": {"transactionId": tx_id, "chargingState": "Charging"},
        "meterValue": [{"timestamp": at, "sampledValue": [{"value": wh}]}],
    }


async def session_v201(measure: Measure) -> None:
    await measure(
        "BootNotification",
        {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"},
    )
    await measure("Heartbeat", {})
    await measure(
        "StatusNotification",
        {"timestamp": AT, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1},
    )
    await measure("Authorize", {"idToken": TOKEN})
    # A session whose Ended was lost: the next Started on its EVSE supersedes it.
    await measure("TransactionEvent", started_event("T:ü/0", "2025-01-15T09:00:00.000Z", 500))
    await measure("TransactionEvent", started_event("T:ü/1", AT, 1000))
    for seq_no in (1, 2):
        at = f"2025-01-15T10:{10 * seq_no}:00.000Z"
        await measure("TransactionEvent", updated_event("T:ü/1", seq_no, at, 1000 + 500 * seq_no))
    ended = await measure(
        "TransactionEvent",
        {
            "eventType": "Ended",
            "triggerReason": "EVDeparted",
            "timestamp": "2025-01-15T10:30:00.000Z",
            "seqNo": 3,
            "idToken": TOKEN,
            "transactionInfo": {"transactionId": "T:ü/1", "stoppedReason": "EVDisconnected"},
            "meterValue": [
                {
                    "timestamp": "2025-01-15T10:30:00.000Z",
                    "sampledValue": [{"value": 2600, "context": "Transaction.End"}],
                }
            ],
        },
    )
    assert ended.payload["totalCost"] == 1.14  # 0.50 + 1.6 kWh x 0.40


SESSIONS = {OcppVersion.OCPP16: session_v16, OcppVersion.OCPP201: session_v201}


def _label(action: str, payload: dict[str, Any]) -> str:
    if action != "TransactionEvent":
        return action
    info = payload["transactionInfo"]
    return f"{action} {payload['eventType']} {info['transactionId']} seqNo {payload['seqNo']}"


async def run_sessions(
    services: Services, trips: list[list[str]] | None = None
) -> tuple[dict[str, Envelope], dict[str, list[list[str]]]]:
    """Both versions' sessions, by a warm-up station then by the counted one: the counted
    station's answers and (with ``trips``) each message's round trips."""
    answers: dict[str, Envelope] = {}
    costs: dict[str, list[list[str]]] = {}
    async with fleet_of_one(services) as (manager, side):
        for version, session in SESSIONS.items():
            warm = Station(side, WARM[version], version)
            counted = Station(side, COUNTED[version], version)

            async def unmeasured(
                action: str, payload: dict[str, Any], warm: Station = warm
            ) -> Envelope:
                answer = await warm.call(action, payload)
                assert answer.kind is Kind.RESULT, answer
                return answer

            async def measured(
                action: str,
                payload: dict[str, Any],
                counted: Station = counted,
                version: str = version,
            ) -> Envelope:
                await settled(manager)
                if trips is not None:
                    trips.clear()
                answer = await counted.call(action, payload)
                await settled(manager)
                assert answer.kind is Kind.RESULT, answer
                label = f"{version} {_label(action, payload)}"
                answers[label] = answer
                if trips is not None:
                    costs[label] = list(trips)
                return answer

            await session(unmeasured)
            await session(measured)
    return answers, costs


async def state(services: Services, station_id: str) -> Any:
    """What the stores hold of ``station_id`` (the boot and last-seen times are clocks')."""
    record = await services.stations.get(station_id)
    assert record is not None and record.last_seen is not None
    listed = await services.transactions.list_transactions(station_id=station_id)
    transactions = {
        tx.transaction_id: (tx, await services.transactions.readings(station_id, tx.transaction_id))
        for tx in listed.items
    }
    return (
        msgspec.structs.replace(record, last_boot_at=None, last_seen=None),
        await services.stations.connector_statuses(station_id),
        transactions,
        await services.transactions.active(station_id),
    )


def _comparable(answer: Envelope) -> Any:
    return {k: v for k, v in answer.payload.items() if k != "currentTime"}


async def events_of(services: Services, station_id: str) -> list[tuple[str, str | None]]:
    """The kinds and keys of the station's events, in log order."""
    page = await services.events.read(None, limit=1000, station_id=station_id)
    return [(event.kind, event.key) for event in page.events]


@pytest.mark.parametrize("thin", [False, True], ids=["redis-py", "thin-client"])
async def test_hot_path_messages_cost_at_most_two_round_trips(redis_url: str, thin: bool) -> None:
    client, trips = counting_client(redis_url)
    fast = counting_thin_client(redis_url, trips) if thin else None
    try:
        services = redis_services(client, f"rt{uuid.uuid4().hex[:8]}:", fast)
        answers, costs = await run_sessions(services, trips)
        on_redis = [await state(services, station) for station in COUNTED.values()]
        events = [await events_of(services, station) for station in COUNTED.values()]
    finally:
        if fast is not None:
            await fast.aclose()
        await client.aclose()
    report = "\n".join(f"{label}: {len(found)} {found}" for label, found in costs.items())
    assert len(costs) == 16
    assert all(len(found) <= MAX_ROUND_TRIPS for found in costs.values()), report
    if thin:
        # Everything went through the thin client, as two scripts (BEGIN, APPLY) at most.
        assert all(trip in (["EVALSHA"],) for found in costs.values() for trip in found), report
        # And the event-producing messages appended their events within those two.
        assert events[0] and events[1]

    memory = memory_services()
    expected, _ = await run_sessions(memory)
    assert {k: _comparable(a) for k, a in answers.items()} == {
        k: _comparable(a) for k, a in expected.items()
    }
    assert on_redis == [await state(memory, station) for station in COUNTED.values()]
    if thin:
        assert events == [await events_of(memory, station) for station in COUNTED.values()]
    _, _, transactions, active = on_redis[1]
    superseded, _ = transactions["T:ü/0"]
    assert superseded.superseded_by == "T:ü/1" and superseded.cost is not None
    assert active == []


# --- the unit of work ------------------------------------------------------------------------


def racing_router(other: aioredis.Redis, prefix: str, runs: list[str]) -> dict[OcppVersion, Router]:
    """The project's routers, with a MeterValues handler that, on its first run only, has
    another manager write the same transaction after the handler decided its own write."""
    routers = default_routers()
    v16 = routers[OcppVersion.OCPP16]
    real = v16.handlers["MeterValues"]

    async def meter_values(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        answer = await real(ctx, payload)
        runs.append(ctx.message_id)
        if len(runs) == 1:
            competitor = RedisTransactionStore(other, prefix)

            def suspend(old: Transaction | None) -> Transaction | TransactionChange:
                assert old is not None
                return msgspec.structs.replace(old, charging_state="SuspendedEV")

            await competitor.update(ctx.station_id, str(payload["transactionId"]), suspend)
        return answer

    routers[OcppVersion.OCPP16] = Router(
        OcppVersion.OCPP16, {**v16.handlers, "MeterValues": meter_values}, v16.result_handlers
    )
    return routers


async def test_a_write_between_the_round_trips_has_the_call_handled_again(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Another manager changes the transaction after the handler read it and before its
    writes are stored: nothing of the first run is stored, the Call is handled again on the
    fresh record, and both changes are kept (the reading counted once)."""
    prefix = f"rt{uuid.uuid4().hex[:8]}:"
    runs: list[str] = []
    client, trips = counting_client(redis_url)
    services = redis_services(client, prefix)
    try:
        async with fleet_of_one(services, racing_router(redis_client, prefix, runs)) as (_, side):
            station = Station(side, COUNTED[OcppVersion.OCPP16], OcppVersion.OCPP16)
            await station.call(
                "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}
            )
            started = await station.call(
                "StartTransaction",
                {"connectorId": 1, "idTag": "TAG1", "meterStart": 1000, "timestamp": AT},
            )
            tx_id = started.payload["transactionId"]
            values = [
                {
                    "timestamp": "2025-01-15T10:10:00.000Z",
                    "sampledValue": [
                        {"value": "1500", "measurand": "Energy.Active.Import.Register"}
                    ],
                }
            ]
            trips.clear()
            answer = await station.call(
                "MeterValues", {"connectorId": 1, "transactionId": tx_id, "meterValue": values}
            )
            handled_twice = list(trips)
        tx = await services.transactions.get(station.station_id, str(tx_id))
        readings = await services.transactions.readings(station.station_id, str(tx_id))
    finally:
        await client.aclose()
    assert answer.kind is Kind.RESULT and answer.payload == {}
    assert len(runs) == 2
    assert tx is not None
    assert (tx.charging_state, tx.energy_wh) == ("SuspendedEV", 500.0)
    assert [reading.wh for reading in readings] == [1000.0, 1500.0]
    # BEGIN and the APPLY whose check failed, then the second run's reads and checked
    # write, one at a time, and the stored answer.
    assert handled_twice[:2] == [["EVALSHA"], ["EVALSHA"]], handled_twice
    assert handled_twice[-2:] == [["EVALSHA"], ["SET"]], handled_twice


def freezing_router(redis: ServerProcess, runs: list[str]) -> dict[OcppVersion, Router]:
    """The project's routers with a StatusNotification handler that, on its first run,
    freezes Redis (SIGSTOP): the Call's writes and answer reach it after the manager gave up."""
    routers = default_routers()
    v201 = routers[OcppVersion.OCPP201]
    real = v201.handlers["StatusNotification"]

    async def status(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        runs.append(ctx.message_id)
        if len(runs) == 1:
            assert redis.process is not None
            os.kill(redis.process.pid, signal.SIGSTOP)
        return await real(ctx, payload)

    routers[OcppVersion.OCPP201] = Router(
        OcppVersion.OCPP201, {**v201.handlers, "StatusNotification": status}, v201.result_handlers
    )
    return routers


async def test_writes_a_stalled_redis_applies_late_answer_the_retry(
    redis_url: str, redis_client: aioredis.Redis, redis_process: ServerProcess
) -> None:
    """The second round trip times out (Redis frozen): the station gets InternalError. Redis
    then applies the writes with the answer, atomically, so the station's retry (a new
    delivery attempt) gets that stored answer and the handler does not run again."""
    prefix = f"rt{uuid.uuid4().hex[:8]}:"
    runs: list[str] = []
    client, _ = counting_client(redis_url, socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
    services = redis_services(client, prefix)
    status = {"timestamp": AT, "connectorStatus": "Faulted", "evseId": 1, "connectorId": 2}
    try:
        async with fleet_of_one(services, freezing_router(redis_process, runs)) as (_, side):
            station = Station(side, COUNTED[OcppVersion.OCPP201], OcppVersion.OCPP201)
            call = heartbeat_call(
                station=station.station_id,
                version=OcppVersion.OCPP201,
                action="StatusNotification",
                payload=status,
            )
            try:
                failed = await station.send(call)
            finally:
                assert redis_process.process is not None
                os.kill(redis_process.process.pid, signal.SIGCONT)
            # Redis runs what it had received before the client gave up.
            connectors = f"{prefix}connectors:{encode_id(station.station_id)}"
            for _ in range(200):
                if await redis_client.hlen(connectors):
                    break
                await asyncio.sleep(0.05)
            retried = await station.send(msgspec.structs.replace(call, connection="conn-2"))
        statuses = await services.stations.connector_statuses(station.station_id)
    finally:
        await client.aclose()
    assert (failed.kind, failed.error_code) == (Kind.ERROR, "InternalError")
    assert failed.error_description == "storage temporarily unavailable"
    assert retried.kind is Kind.RESULT and retried.payload == {}
    assert runs == ["m1"]
    assert [(s.connector_id, s.status) for s in statuses] == [(2, "Faulted")]


def test_every_supported_version_has_a_session() -> None:
    assert set(SESSIONS) == set(supported())
