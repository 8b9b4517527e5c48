"""The manager worker on the in-process bus: answers, idempotency, sharing, ordering, events."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from csms.bus import Message
from csms.bus.memory import MemoryBroker, MemoryBus
from csms.config import Settings
from csms.envelope import (
    ConnectionEvent,
    ConnectionEventKind,
    Envelope,
    GatewayPresence,
    GatewayState,
    Kind,
    OriginalCall,
    decode_envelope,
    encode,
)
from csms.rpc import RpcError
from csms.topics import Topics
from csms.versions import OcppVersion, supported
from manager.context import CallContext, CallHandler, OcppError, ResultContext, ResultHandler
from manager.idempotency import claim_owner, idempotency_key, read_ahead
from manager.router import Router
from manager.worker import Manager
from services import Services, StoreUnavailable
from services.interfaces import ReadAhead
from services.memory import (
    MemoryIdempotencyStore,
    MemoryStationRegistry,
    MemoryTokenStore,
    MemoryTransactionStore,
)
from services.models import RegistrationStatus, StationRecord
from services.tariff import ConfiguredTariff
from tests.timing import timeout

TOPICS = Topics()
NOW = "2026-01-01T00:00:00.000Z"
WAIT = 3.0
"""Seconds a wait may take before the test fails (scaled by ``CSMS_TEST_TIMEOUT_FACTOR``)."""


def make_services(idempotency: Any = None) -> Services:
    return Services(
        stations=MemoryStationRegistry(),
        tokens=MemoryTokenStore(),
        transactions=MemoryTransactionStore(),
        tariff=ConfiguredTariff(),
        idempotency=idempotency or MemoryIdempotencyStore(),
    )


def heartbeat_call(
    station: str = "CP1",
    message_id: str = "m1",
    version: str = OcppVersion.OCPP16,
    connection: str = "conn-1",
    action: str = "Heartbeat",
    payload: dict[str, Any] | None = None,
) -> Envelope:
    return Envelope(
        kind=Kind.CALL,
        station=station,
        version=version,
        message_id=message_id,
        action=action,
        payload=payload if payload is not None else {},
        gateway="gw-1",
        connection=connection,
    )


class CountingHeartbeat:
    """Answers Heartbeat and counts the runs per (station, message id)."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str]] = []

    async def __call__(self, ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        self.runs.append((ctx.station_id, ctx.message_id))
        return {"currentTime": ctx.now_iso()}


class StationSide:
    """What a gateway does, reduced to publishing calls and reading answers."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.bus: MemoryBus = broker.client()
        self._messages: AsyncIterator[Message] | None = None

    async def __aenter__(self) -> StationSide:
        await self.bus.__aenter__()
        await self.bus.subscribe(f"{TOPICS.prefix}/out/#")
        self._messages = self.bus.messages()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.bus.__aexit__()

    async def send(self, envelope: Envelope) -> None:
        await self.bus.publish(TOPICS.inbound(envelope.version, envelope.station), encode(envelope))

    async def event(self, event: ConnectionEvent) -> None:
        await self.bus.publish(TOPICS.event(event.version, event.station), encode(event))

    async def receive(self) -> tuple[Message, Envelope]:
        assert self._messages is not None
        message = await asyncio.wait_for(anext(self._messages), timeout(WAIT))
        return message, decode_envelope(message.payload)

    async def nothing(self, *managers: Manager) -> None:
        """Assert that ``managers``, once done with everything sent so far, published
        nothing more here: the in-process broker delivers at publish time, so whatever they
        published is already queued."""
        await settled(*managers)
        assert self.bus._queue.empty(), f"unexpected message on {self.bus._queue.get_nowait()}"


async def settled(*managers: Manager) -> None:
    """Wait until each manager has read everything the in-process broker delivered to it
    and finished handling it (:meth:`Manager.idle` alone may run before its reader has
    taken a message just published from the bus)."""
    async with asyncio.timeout(timeout(WAIT)):
        while True:
            for manager in managers:
                await manager.idle()
            buses = [manager.bus for manager in managers]
            assert all(isinstance(bus, MemoryBus) for bus in buses)
            if all(bus._queue.empty() for bus in buses if isinstance(bus, MemoryBus)):
                return
            await asyncio.sleep(0)  # let the readers take what is queued


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
async def station(broker: MemoryBroker) -> AsyncIterator[StationSide]:
    async with StationSide(broker) as side:
        yield side


@contextlib.asynccontextmanager
async def running(
    broker: MemoryBroker,
    services: Services | None = None,
    *,
    handlers: dict[str, CallHandler] | None = None,
    result_handlers: dict[str, ResultHandler] | None = None,
    concurrency: int = 32,
    **kwargs: Any,
) -> AsyncIterator[Manager]:
    settings = Settings(
        manager_concurrency=concurrency,
        gateway_heartbeat_interval=kwargs.pop("gateway_heartbeat_interval", 5.0),
    )
    async with (
        broker.client() as bus,
        Manager(
            settings,
            bus,
            services or make_services(),
            routers={
                version: Router(version, handlers or {}, result_handlers or {})
                for version in supported()
            },
            compile_schemas=kwargs.pop("compile_schemas", False),
            **kwargs,
        ) as manager,
    ):
        yield manager


@contextlib.contextmanager
def no_errors_logged() -> Iterator[list[Any]]:
    with capture_logs() as logs:
        yield logs
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []


# -- answering --------------------------------------------------------------------------------


async def test_call_is_answered_on_the_outbound_topic(
    broker: MemoryBroker, station: StationSide
) -> None:
    heartbeat = CountingHeartbeat()
    async with running(broker, handlers={"Heartbeat": heartbeat}, compile_schemas=True) as m:
        await station.send(heartbeat_call(station="CP/1+#", message_id="abc"))
        message, answer = await station.receive()
    assert message.topic == TOPICS.outbound(OcppVersion.OCPP16, "CP/1+#")
    assert message.properties == {"message_id": "abc", "station": "CP/1+#"}
    assert answer.kind is Kind.RESULT
    assert (answer.station, answer.version, answer.message_id) == (
        "CP/1+#",
        OcppVersion.OCPP16,
        "abc",
    )
    assert (answer.gateway, answer.connection) == ("gw-1", "conn-1")
    assert set(answer.payload) == {"currentTime"}
    assert heartbeat.runs == [("CP/1+#", "abc")]
    assert m.stats.calls == 1


async def test_both_versions_are_routed(broker: MemoryBroker, station: StationSide) -> None:
    async with running(broker, handlers={"Heartbeat": CountingHeartbeat()}):
        await station.send(heartbeat_call(version=OcppVersion.OCPP201))
        message, answer = await station.receive()
    assert message.topic == TOPICS.outbound(OcppVersion.OCPP201, "CP1")
    assert answer.kind is Kind.RESULT and answer.version == OcppVersion.OCPP201


async def test_refusals_are_answered(broker: MemoryBroker, station: StationSide) -> None:
    services = make_services()
    await services.stations.put(
        StationRecord(station_id="CP1", registration=RegistrationStatus.ACCEPTED)
    )
    async with running(broker, services, handlers={"Heartbeat": CountingHeartbeat()}):
        await station.send(heartbeat_call(action="Reset", payload={"type": "Hard"}))
        _, answer = await station.receive()
        assert (answer.kind, answer.error_code) == (Kind.ERROR, "NotSupported")
        await station.send(heartbeat_call(message_id="m2", payload={"x": 1}))
        _, answer = await station.receive()
        assert answer.error_code == "FormationViolation"
        assert answer.error_details == {"field": "", "rule": "additionalProperties"}


@pytest.mark.parametrize("registration", [RegistrationStatus.PENDING, RegistrationStatus.REJECTED])
async def test_station_not_accepted_learns_nothing_from_refusals(
    broker: MemoryBroker, station: StationSide, registration: RegistrationStatus
) -> None:
    """B02.FR.09 / B03.FR.07: the registration is checked before the schema, so a station
    that is not Accepted cannot probe which payloads or actions the CSMS would take."""
    services = make_services()
    await services.stations.put(StationRecord(station_id="CP1", registration=registration))
    async with running(
        broker,
        services,
        handlers={
            "Heartbeat": CountingHeartbeat(),
            "Authorize": ok_handler,
            "BootNotification": ok_handler,
        },
    ):
        cases: list[tuple[str, dict[str, Any]]] = [
            ("Authorize", {"idTag": 5}),
            ("Reset", {"type": "Hard"}),
            ("NoSuchAction", {}),
        ]
        for index, (action, payload) in enumerate(cases):
            await station.send(
                heartbeat_call(message_id=f"m{index}", action=action, payload=payload)
            )
            _, answer = await station.receive()
            assert (answer.kind, answer.error_code) == (Kind.ERROR, "SecurityError"), action
        # BootNotification keeps its schema answer: it is how a station gets registered.
        await station.send(heartbeat_call(message_id="b", action="BootNotification", payload={}))
        _, answer = await station.receive()
        assert answer.error_code == "OccurenceConstraintViolation"


async def ok_handler(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    return {"idTagInfo": {"status": "Accepted"}}


async def test_last_seen_is_touched(broker: MemoryBroker, station: StationSide) -> None:
    services = make_services()
    await services.stations.put(StationRecord(station_id="CP1"))
    async with running(broker, services, handlers={"Heartbeat": CountingHeartbeat()}) as m:
        await station.send(heartbeat_call())
        await station.receive()
        await m.idle()
    record = await services.stations.get("CP1")
    assert record is not None and record.last_seen is not None


# -- idempotency ------------------------------------------------------------------------------


async def test_duplicate_call_gets_the_same_answer_without_rerunning(
    broker: MemoryBroker, station: StationSide
) -> None:
    heartbeat = CountingHeartbeat()
    async with running(broker, handlers={"Heartbeat": heartbeat}) as m:
        await station.send(heartbeat_call())
        _, first = await station.receive()
        await m.idle()
        # The retry arrives on a new socket: the answer must follow it there.
        await station.send(heartbeat_call(connection="conn-2"))
        _, second = await station.receive()
        assert m.stats.replayed == 1
    assert heartbeat.runs == [("CP1", "m1")]
    assert (second.kind, second.payload, second.message_id) == (
        first.kind,
        first.payload,
        first.message_id,
    )
    assert second.connection == "conn-2"


async def test_the_answer_is_stored_before_the_station_gets_it(
    broker: MemoryBroker, station: StationSide
) -> None:
    """A station that has its answer finds it stored (a retry on any instance replays it)
    and its last-seen time recorded, however long that bookkeeping takes."""

    class SlowStore(MemoryIdempotencyStore):
        async def complete(self, key: str, answer: bytes, ttl: float) -> None:
            for _ in range(20):
                await asyncio.sleep(0)
            await super().complete(key, answer, ttl)

    services = make_services(SlowStore())
    await services.stations.put(StationRecord(station_id="CP1"))
    call = heartbeat_call()
    async with running(broker, services, handlers={"Heartbeat": CountingHeartbeat()}):
        await station.send(call)
        _, answer = await station.receive()
        stored = await services.idempotency.claim(idempotency_key(call), "another attempt", 10)
        record = await services.stations.get("CP1")
    assert isinstance(stored, bytes) and decode_envelope(stored).payload == answer.payload
    assert record is not None and record.last_seen is not None


def test_read_ahead_names_what_the_hot_path_handlers_read() -> None:
    token = {"idToken": "TAG1", "type": "ISO14443"}
    started = {
        "eventType": "Started",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "T1"},
        "idToken": token,
    }

    def ahead(action: str, payload: dict[str, Any]) -> ReadAhead:
        return read_ahead(heartbeat_call(action=action, payload=payload))

    assert ahead("Heartbeat", {}) == ReadAhead("CP1")
    assert ahead("Authorize", {"idToken": token}) == ReadAhead("CP1", tokens=("TAG1",))
    assert ahead("TransactionEvent", started) == ReadAhead(
        "CP1",
        tokens=("TAG1",),
        transactions=("T1",),
        seq_no=("T1", 0),
        active=True,
        token_transactions=("TAG1",),
    )
    # Queued while offline: no ConcurrentTx check, so the token's transactions are not read.
    offline = ahead("TransactionEvent", {**started, "offline": True, "eventType": "Started"})
    assert offline.active and offline.token_transactions == ()
    assert ahead("StartTransaction", {"idTag": "T", "connectorId": 1}) == ReadAhead(
        "CP1", tokens=("T",), active=True, token_transactions=("T",), new_transaction_id=True
    )
    assert ahead("MeterValues", {"transactionId": 7}).transactions == ("7",)
    assert ahead("StopTransaction", {"transactionId": -1}).transactions == ()


async def test_same_message_id_with_other_payload_is_not_a_duplicate(
    broker: MemoryBroker, station: StationSide
) -> None:
    seen: list[dict[str, Any]] = []

    async def data_transfer(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        seen.append(payload)
        return {"status": "Accepted"}

    async with running(broker, handlers={"DataTransfer": data_transfer}) as m:
        for data in ("a", "b"):
            payload = {"vendorId": "v", "data": data}
            await station.send(heartbeat_call(action="DataTransfer", payload=payload))
            await station.receive()
            await m.idle()
    assert [p["data"] for p in seen] == ["a", "b"]


async def test_copy_of_a_call_in_progress_here_is_dropped(
    broker: MemoryBroker, station: StationSide
) -> None:
    """A redelivered copy of the delivery attempt this instance is handling already."""
    store = MemoryIdempotencyStore()
    call = heartbeat_call()
    heartbeat = CountingHeartbeat()
    async with running(
        broker, make_services(store), handlers={"Heartbeat": heartbeat}, instance_id="w1"
    ) as m:
        owner = claim_owner(call, "w1")
        assert await store.claim(idempotency_key(call), owner, 60) is True
        await station.send(call)
        await station.nothing(m)
        assert m.stats.duplicates_dropped == 1
    assert heartbeat.runs == []


@pytest.mark.parametrize("holder", ["another attempt", "another worker"])
async def test_stale_claim_does_not_swallow_a_retry(
    broker: MemoryBroker, station: StationSide, holder: str
) -> None:
    """A claim left by a crashed worker (or applied late by a stalled store) must not make
    the station's retry wait for the claim to expire: the retry is handled at once."""
    store = MemoryIdempotencyStore()
    call = heartbeat_call()
    heartbeat = CountingHeartbeat()
    stale = (
        claim_owner(msgspec.structs.replace(call, at=call.at - 25), "w1")
        if holder == "another attempt"
        else claim_owner(call, "crashed-worker")
    )
    assert await store.claim(idempotency_key(call), stale, 60) is True
    async with running(
        broker, make_services(store), handlers={"Heartbeat": heartbeat}, instance_id="w1"
    ) as m:
        await station.send(call)
        _, answer = await station.receive()
        assert answer.kind is Kind.RESULT
        assert m.stats.duplicates_dropped == 0
    assert len(heartbeat.runs) == 1


async def test_internal_error_is_not_stored_and_next_message_works(
    broker: MemoryBroker, station: StationSide
) -> None:
    runs: list[str] = []

    async def flaky(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        runs.append(ctx.message_id)
        if len(runs) == 1:
            raise RuntimeError("boom")
        return {"currentTime": NOW}

    async with running(broker, handlers={"Heartbeat": flaky}) as m:
        with capture_logs():
            await station.send(heartbeat_call())
            _, answer = await station.receive()
        assert (answer.kind, answer.error_code) == (Kind.ERROR, "InternalError")
        await m.idle()
        # The station retries the same call: the work is done again, not replayed.
        await station.send(heartbeat_call())
        _, answer = await station.receive()
        assert answer.kind is Kind.RESULT
        await station.send(heartbeat_call(message_id="m2"))
        _, answer = await station.receive()
        assert answer.kind is Kind.RESULT
        assert m.stats.internal_errors == 1
    assert runs == ["m1", "m1", "m2"]


async def test_ocpp_error_answers_are_stored(broker: MemoryBroker, station: StationSide) -> None:
    runs: list[str] = []

    async def refuse(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        runs.append(ctx.message_id)
        raise OcppError(RpcError.GENERIC, "no")

    async with running(broker, handlers={"Heartbeat": refuse}) as m:
        for _ in range(2):
            await station.send(heartbeat_call())
            _, answer = await station.receive()
            assert answer.error_code == "GenericError"
            await m.idle()
    assert runs == ["m1"]


class DownStore:
    async def claim(self, key: str, owner: str, ttl: float) -> bool:
        raise StoreUnavailable("redis down")

    async def complete(self, key: str, answer: bytes, ttl: float) -> None:
        raise StoreUnavailable("redis down")

    async def release(self, key: str) -> None:
        raise StoreUnavailable("redis down")


async def test_idempotency_store_outage_is_answered_promptly(
    broker: MemoryBroker, station: StationSide
) -> None:
    heartbeat = CountingHeartbeat()
    async with running(broker, make_services(DownStore()), handlers={"Heartbeat": heartbeat}):
        with capture_logs():
            await station.send(heartbeat_call())
            _, answer = await asyncio.wait_for(station.receive(), timeout(0.5))
    assert (answer.error_code, answer.error_description) == (
        "InternalError",
        "storage temporarily unavailable",
    )
    assert heartbeat.runs == []


async def test_answer_lost_to_bus_outage_is_replayed_on_retry(
    broker: MemoryBroker, station: StationSide
) -> None:
    runs: list[str] = []

    async def heartbeat(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        runs.append(ctx.message_id)
        broker.available = False  # the broker goes down while we work
        return {"currentTime": NOW}

    async with running(broker, handlers={"Heartbeat": heartbeat}) as m:
        with capture_logs() as logs:
            await station.send(heartbeat_call())
            await station.nothing(m)
        assert m.stats.publish_failures == 1
        assert any(e["log_level"] == "warning" for e in logs)
        broker.available = True
        # Retry gets the stored answer; the work is not repeated.
        await station.send(heartbeat_call())
        _, answer = await station.receive()
    assert answer.payload == {"currentTime": NOW}
    assert runs == ["m1"]


# -- fleet and concurrency --------------------------------------------------------------------


async def test_two_managers_in_one_group_share_the_work(
    broker: MemoryBroker, station: StationSide
) -> None:
    heartbeat = CountingHeartbeat()
    async with (
        running(broker, handlers={"Heartbeat": heartbeat}, instance_id="a") as a,
        running(broker, handlers={"Heartbeat": heartbeat}, instance_id="b") as b,
    ):
        for i in range(20):
            await station.send(heartbeat_call(station=f"CP{i}"))
        answers = [await station.receive() for _ in range(20)]
        await station.nothing(a, b)
    assert len(heartbeat.runs) == 20
    assert {envelope.station for _, envelope in answers} == {f"CP{i}" for i in range(20)}
    assert a.stats.calls > 0 and b.stats.calls > 0
    assert a.stats.calls + b.stats.calls == 20


async def test_per_station_order_holds_under_concurrency(
    broker: MemoryBroker, station: StationSide
) -> None:
    handled: dict[str, list[int]] = {}
    active = 0
    peak = 0
    rng = random.Random(7)

    async def data_transfer(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(rng.random() / 500)
        handled.setdefault(ctx.station_id, []).append(int(payload["data"]))
        active -= 1
        return {"status": "Accepted"}

    stations = [f"CP{i}" for i in range(6)]
    per_station = 15
    async with running(broker, handlers={"DataTransfer": data_transfer}, concurrency=8) as m:
        for n in range(per_station):
            for name in stations:
                payload = {"vendorId": "v", "data": str(n)}
                await station.send(
                    heartbeat_call(
                        station=name, message_id=f"m{n}", action="DataTransfer", payload=payload
                    )
                )
        for _ in range(per_station * len(stations)):
            await station.receive()
        await m.idle()
        assert m.active_stations == 0  # lanes are dropped once empty
        assert m.pending == 0
    assert handled == {name: list(range(per_station)) for name in stations}
    assert 1 < peak <= 8


async def test_a_slow_station_does_not_hold_up_others(
    broker: MemoryBroker, station: StationSide
) -> None:
    release = asyncio.Event()

    async def heartbeat(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        if ctx.station_id == "slow":
            await release.wait()
        return {"currentTime": NOW}

    async with running(broker, handlers={"Heartbeat": heartbeat}):
        await station.send(heartbeat_call(station="slow"))
        await station.send(heartbeat_call(station="fast"))
        _, first = await station.receive()
        assert first.station == "fast"
        release.set()
        _, second = await station.receive()
        assert second.station == "slow"


async def test_shutdown_lets_in_flight_work_finish(
    broker: MemoryBroker, station: StationSide
) -> None:
    started = asyncio.Event()

    async def heartbeat(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(0.05)
        return {"currentTime": NOW}

    async with running(broker, handlers={"Heartbeat": heartbeat}):
        await station.send(heartbeat_call())
        await asyncio.wait_for(started.wait(), timeout(WAIT))
    _, answer = await station.receive()
    assert answer.kind is Kind.RESULT


# -- robustness -------------------------------------------------------------------------------


async def test_garbage_on_the_bus_is_dropped(broker: MemoryBroker, station: StationSide) -> None:
    async with running(broker, handlers={"Heartbeat": CountingHeartbeat()}) as m:
        with no_errors_logged() as logs:
            await station.bus.publish(TOPICS.inbound(OcppVersion.OCPP16, "CP1"), b"not json")
            await station.bus.publish(
                TOPICS.inbound(OcppVersion.OCPP16, "CP1"), b'{"kind": "call"}'
            )
            await station.bus.publish(TOPICS.event(OcppVersion.OCPP16, "CP1"), b"[]")
            await station.bus.publish(f"{TOPICS.prefix}/in/extra/levels/here", b"{}")
            await station.send(heartbeat_call(version="ocpp9"))
            await station.send(heartbeat_call())
            _, answer = await station.receive()
        assert answer.kind is Kind.RESULT
        assert m.stats.dropped == 5
        assert len([e for e in logs if e["log_level"] == "warning"]) == 5


# -- answers to CSMS calls --------------------------------------------------------------------


async def test_results_reach_result_handlers_which_can_call_again(
    broker: MemoryBroker, station: StationSide
) -> None:
    contexts: list[ResultContext] = []

    async def on_reset(ctx: ResultContext) -> None:
        contexts.append(ctx)
        if ctx.timed_out:
            await ctx.calls.call(ctx.station_id, ctx.version, "Reset", {"type": "Immediate"})

    request = OriginalCall(message_id="c1", action="Reset", payload={"type": "Immediate"})
    async with running(broker, result_handlers={"Reset": on_reset}, instance_id="mgr-1") as m:
        for kind, extra in (
            (Kind.RESULT, {"payload": {"status": "Accepted"}}),
            (Kind.ERROR, {"error_code": "NotSupported"}),
            (Kind.TIMEOUT, {}),
            (Kind.UNDELIVERED, {"error_description": "queue full"}),
        ):
            await station.send(
                Envelope(
                    kind=kind,
                    station="CP1",
                    version=OcppVersion.OCPP201,
                    message_id="c1",
                    request=request,
                    **extra,
                )
            )
        message, follow_up = await station.receive()
        await m.idle()
        assert m.stats.results == 4
    assert [c.ok for c in contexts] == [True, False, False, False]
    assert contexts[1].error_code == "NotSupported"
    assert contexts[2].timed_out
    assert contexts[3].undelivered == "queue full"
    assert all(c.request == request for c in contexts)
    assert message.topic == TOPICS.outbound(OcppVersion.OCPP201, "CP1")
    assert (follow_up.kind, follow_up.action) == (Kind.CALL, "Reset")
    assert follow_up.meta["origin"] == "manager:mgr-1"


# -- connection events ------------------------------------------------------------------------


async def test_connection_events_update_the_registry(
    broker: MemoryBroker, station: StationSide
) -> None:
    services = make_services()
    registry = services.stations

    def event(kind: ConnectionEventKind, connection: str, at: float) -> ConnectionEvent:
        return ConnectionEvent(
            kind=kind,
            station="CP1",
            version=OcppVersion.OCPP201,
            gateway="gw-1",
            connection=connection,
            at=at,
        )

    async def stored() -> StationRecord:
        await settled(m)
        record = await registry.get("CP1")
        assert record is not None
        return record

    async with running(broker, services) as m:
        await station.event(event(ConnectionEventKind.CONNECTED, "conn-1", 1_700_000_000.0))
        record = await stored()
        assert record.online and record.connection == "conn-1" and record.gateway == "gw-1"
        assert record.connected_at == "2023-11-14T22:13:20.000Z"
        # A stale socket closing does not take the station offline.
        await station.event(event(ConnectionEventKind.CONNECTED, "conn-2", 1_700_000_010.0))
        await station.event(event(ConnectionEventKind.DISCONNECTED, "conn-1", 1_700_000_011.0))
        record = await stored()
        assert record.online and record.connection == "conn-2"
        await station.event(event(ConnectionEventKind.DISCONNECTED, "conn-2", 1_700_000_020.0))
        record = await stored()
        assert not record.online
        assert record.disconnected_at == "2023-11-14T22:13:40.000Z"
        assert m.stats.events == 4


class FlakyRegistry(MemoryStationRegistry):
    """A registry whose writes fail while ``down`` (a Redis outage)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def mark_connected(self, *args: Any, **kwargs: Any) -> None:
        if self.down:
            raise StoreUnavailable("redis down")
        await super().mark_connected(*args, **kwargs)


async def test_connection_events_refused_by_the_store_are_retried(
    broker: MemoryBroker, station: StationSide
) -> None:
    registry = FlakyRegistry()
    services = make_services()
    services.stations = registry
    async with running(broker, services) as m:
        await station.event(
            ConnectionEvent(
                kind=ConnectionEventKind.CONNECTED,
                station="CP1",
                version=OcppVersion.OCPP201,
                gateway="gw-1",
                connection="conn-1",
            )
        )
        await settled(m)
        assert await registry.get("CP1") is None
        registry.down = False  # Redis is back: the housekeeping retry stores it
        for _ in range(100):
            record = await registry.get("CP1")
            if record is not None:
                break
            await asyncio.sleep(0.05)
        assert record is not None and record.online and record.connection == "conn-1"
        assert m.stats.event_retries == 1


async def test_messages_are_acknowledged_only_once_handled(broker: MemoryBroker) -> None:
    """So that a broker that redelivers unacknowledged messages can give the work of a
    manager that died half way to another."""
    started, release = asyncio.Event(), asyncio.Event()
    acked: list[str] = []

    async def slow_heartbeat(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        assert acked == []  # not acknowledged on receipt
        started.set()
        await release.wait()
        return {"currentTime": "2026-01-01T00:00:00Z"}

    async with (
        running(broker, handlers={"Heartbeat": slow_heartbeat}) as m,
        broker.client() as gateway,
    ):
        await gateway.subscribe(TOPICS.outbound_any_version("CP1"))
        call = heartbeat_call()
        # Deliver straight into the manager's queue with an acknowledgement callback, as the
        # MQTT bus does with manual acknowledgement.
        m.bus._queue.put_nowait(  # type: ignore[attr-defined]
            Message(
                TOPICS.inbound(call.version, call.station),
                encode(call),
                {},
                lambda: acked.append("m1"),
            )
        )
        await asyncio.wait_for(started.wait(), timeout(WAIT))
        assert acked == [] and m.pending == 1
        release.set()
        await m.idle()
        assert acked == ["m1"]


async def test_gateway_presence_takes_stations_offline(
    broker: MemoryBroker, station: StationSide
) -> None:
    services = make_services()
    registry = services.stations
    async with running(broker, services, gateway_heartbeat_interval=0.05) as m:
        await registry.mark_connected(
            "CP1", OcppVersion.OCPP201, "gw-1", "c1", "2026-01-01T00:00:00Z"
        )
        await registry.mark_connected(
            "CP2", OcppVersion.OCPP201, "gw-2", "c2", "2026-01-01T00:00:00Z"
        )
        # gw-1's broker connection died: the broker publishes its last will.
        gone = GatewayPresence(state=GatewayState.GONE, gateway="gw-1")
        await station.bus.publish(TOPICS.gateway_presence("gw-1"), encode(gone))
        await settled(m)
        cp1, cp2 = await registry.get("CP1"), await registry.get("CP2")
        assert cp1 is not None and not cp1.online
        assert cp2 is not None and cp2.online
        # gw-2 stops renewing its lease (frozen, or killed while no manager heard its will).
        alive = GatewayPresence(state=GatewayState.ALIVE, gateway="gw-2", lease=0.01)
        await station.bus.publish(TOPICS.gateway_presence("gw-2"), encode(alive))
        for _ in range(100):
            cp2 = await registry.get("CP2")
            if cp2 is not None and not cp2.online:
                break
            await asyncio.sleep(0.05)
        assert cp2 is not None and not cp2.online
        assert m.stats.gateways_expired == 2


def test_default_wiring_loads_the_project_handlers() -> None:
    manager = Manager(Settings(), MemoryBroker().client(), make_services())
    for version in (OcppVersion.OCPP16, OcppVersion.OCPP201):
        router = manager.routers[version]
        assert {"BootNotification", "Heartbeat", "Authorize"} <= set(router.handlers)
        assert "Reset" not in router.handlers  # CSMS -> station only
