"""The manager worker: reads the shared ``in`` and ``events`` topics and answers stations.

A :class:`Manager` is stateless apart from what is in flight: any instance can take any
message because station state lives in the services and answers to CSMS calls carry their
original request. Messages are handled concurrently (bounded by
``settings.manager_concurrency``) yet in arrival order per station: each station with work
pending has a small queue ("lane"), and the lane disappears when empty, so memory follows the
stations active right now, not every station ever seen. Unlike the gateway's lanes, a
manager's lane always gets a task of its own, even when nothing would wait (memory stores):
handlers call operators' plug-ins (token stores, tariffs, signers over httpx), and those may
need a real task from their first step (anyio's cancel scopes do), which the eager start of
:mod:`csms.eager` does not give on Python 3.11. Measured, a task per lane costs nothing
visible in the embedded benchmark.

A semaphore slot is taken when a message is read and given back when it is done, so a slow
store makes the reader wait (back-pressure into the broker) instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import structlog

import ocpp_schemas
from csms.bus import Bus, BusUnavailable, Message, property_text
from csms.config import Settings
from csms.envelope import (
    ConnectionEvent,
    ConnectionEventKind,
    Envelope,
    GatewayState,
    Kind,
    decode_envelope,
    decode_event,
    decode_presence,
    encode,
)
from csms.rpc import RpcError
from csms.topics import Topics
from csms.versions import OcppVersion, error_code
from manager.common import certificates
from manager.common import events as state_events
from manager.context import CallHandler
from manager.idempotency import PlainCallUnit, claim_owner, idempotency_key, read_ahead, replay
from manager.metrics import CallCells, ManagerMetrics, ManagerStats
from manager.router import Deps, Router, default_routers, error_answer
from operations.call_maker import CallMaker
from services import Services, StoreUnavailable
from services.call_records import outcome_record
from services.interfaces import CallUnit, CallUnits
from services.message_log import answer_entry, call_entry, outcome_entries

__all__ = [
    "EVENT_RETRY_INTERVAL",
    "LEASE_FACTOR",
    "MAX_EVENT_RETRIES",
    "Manager",
    "ManagerStats",
    "default_instance_id",
]

_log = structlog.get_logger("manager.worker")

_INBOUND = "in"
_EVENTS = "events"
_PRESENCE = "gateways"

LEASE_FACTOR = 3
"""A gateway's lease lasts this many heartbeat intervals: one lost heartbeat is no outage."""
EVENT_RETRY_INTERVAL = 1.0
"""Seconds between retries of connection events the registry could not store."""
MAX_EVENT_RETRIES = 50_000
"""Connection events kept for a retry during a store outage; the oldest go first."""
MAX_TOPICS = 65_536
"""Stations whose ``out`` topic is kept encoded; beyond, the table starts again."""


@dataclass(slots=True)
class _Item:
    message: Message
    direction: str


_second: list[Any] = [None, ""]
"""The last whole second :func:`_iso_at` formatted, and its text up to the milliseconds."""


def _iso_at(unix_time: float) -> str:
    """``iso(datetime.fromtimestamp(unix_time, UTC))``, rounded the same way, at a third of
    the cost: it runs for every message, and most fall in the second of the one before."""
    fraction, whole = math.modf(unix_time)
    micro = round(fraction * 1e6)
    second = int(whole)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    elif micro < 0:
        second, micro = second - 1, micro + 1_000_000
    if _second[0] != second:
        t = time.gmtime(second)
        _second[0] = second
        _second[1] = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}."
        )
    return f"{_second[1]}{micro // 1000:03d}Z"


def default_instance_id() -> str:
    """``host-pid-random``: unique even with several managers in one process (tests)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Manager:
    """One manager instance: ``async with Manager(...) as m: await m.run_forever()``.

    The bus is owned by the caller (it may be shared with other components of the process);
    the manager subscribes on enter and unsubscribes on exit. ``routers`` maps each OCPP
    version to its router (default: :func:`manager.router.default_routers`, the project's
    handlers of every version in :data:`csms.versions.VERSIONS`); a version without a router
    is dropped with a warning.
    """

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        services: Services,
        *,
        instance_id: str | None = None,
        routers: Mapping[OcppVersion, Router] | None = None,
        compile_schemas: bool = True,
        drain_timeout: float = 5.0,
        claim_ttl: float | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.services = services
        self.instance_id = instance_id or default_instance_id()
        self.topics = Topics(prefix=settings.topic_prefix, group=settings.shared_group)
        # The calls handlers send on their own (CostUpdated, CertificateSigned, renewal
        # triggers) are held to the station's action rules like the operator's.
        self.calls = CallMaker(
            bus,
            self.topics,
            origin=f"manager:{self.instance_id}",
            rules=services.action_rules,
        )
        self.deps = Deps(services=services, settings=settings, calls=self.calls)
        self.routers: dict[str, Router] = {
            str(version): router
            for version, router in (routers if routers is not None else default_routers()).items()
        }
        self.metrics = ManagerMetrics(
            self, {version: router.actions for version, router in self.routers.items()}
        )
        """Prometheus metrics of this instance (manager/metrics.py)."""
        self.stats = ManagerStats(self.metrics)
        """Totals read from :attr:`metrics`."""
        self._compile_schemas = compile_schemas
        self._drain_timeout = drain_timeout
        # A claim only has to outlive the work: the gateway gives up on the answer after
        # answer_timeout anyway. Holding it for the full idempotency TTL would make a worker
        # crash mid-call swallow the station's retries for an hour.
        self._claim_ttl = claim_ttl or float(
            min(settings.idempotency_ttl, max(2 * settings.answer_timeout, 10.0))
        )
        self._slots = asyncio.Semaphore(settings.manager_concurrency)
        self._lanes: dict[str, deque[_Item]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer: asyncio.Task[None] | None = None
        self._subscriptions = (
            self.topics.shared_inbound(),
            self.topics.shared_events(),
            self.topics.shared_gateway_presence(),
        )
        self._presence_head = f"{settings.topic_prefix}/{_PRESENCE}/"
        self._log = _log.bind(instance=self.instance_id)
        self._failed_events: dict[str, ConnectionEvent] = {}
        """Connection events the registry could not store, by connection id, oldest first."""
        self._housekeeper: asyncio.Task[None] | None = None
        self._units_of: tuple[object, bool] | None = None
        self._out_topics: dict[tuple[str, str], str] = {}
        """(version, station) → ``out`` topic, up to :data:`MAX_TOPICS` entries."""
        """The idempotency store last asked about and whether it makes its own CallUnits."""

    # -- lifetime ---------------------------------------------------------------------------

    async def __aenter__(self) -> Manager:
        if self._compile_schemas:
            # ~2 s of CPU: off the loop so a co-hosted gateway keeps serving sockets.
            count = await asyncio.to_thread(ocpp_schemas.compile_all)
            self._log.debug("schemas compiled", validators=count)
        for topic_filter in self._subscriptions:
            await self.bus.subscribe(topic_filter)
        self._consumer = asyncio.create_task(self._consume(), name=f"manager:{self.instance_id}")
        self._consumer.add_done_callback(self._consumer_done)
        self._housekeeper = asyncio.create_task(
            self._housekeeping(), name=f"manager:{self.instance_id}:housekeeping"
        )
        self._log.info("manager started", subscriptions=list(self._subscriptions))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for topic_filter in self._subscriptions:
            try:
                await self.bus.unsubscribe(topic_filter)
            except Exception as exc:  # broker gone: nothing more will arrive anyway
                self._log.debug("unsubscribe failed", topic=topic_filter, error=str(exc))
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            await asyncio.gather(self._housekeeper, return_exceptions=True)
            self._housekeeper = None
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
            self._consumer = None
        if self._tasks:
            # Let in-flight work finish (answers published, idempotency completed).
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                self._log.warning("in-flight work cancelled at shutdown", lanes=len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        self._log.info("manager stopped")

    def _consumer_done(self, task: asyncio.Task[None]) -> None:
        # The process may never await run_forever(): a dead reader must at least be loud.
        if not task.cancelled() and task.exception() is not None:
            self._log.error("manager stopped reading the bus", exc_info=task.exception())

    async def run_forever(self) -> None:
        """Wait until the consumer stops (it only does on a bus failure, which is raised)."""
        if self._consumer is None:
            raise RuntimeError("use 'async with Manager(...)' before run_forever()")
        await asyncio.shield(self._consumer)

    @property
    def active_stations(self) -> int:
        """Stations with messages queued or in progress on this instance."""
        return len(self._lanes)

    @property
    def pending(self) -> int:
        """Messages read from the bus and not finished yet."""
        return sum(len(lane) for lane in self._lanes.values())

    @property
    def events_waiting(self) -> int:
        """Connection events the registry refused, kept for a retry."""
        return len(self._failed_events)

    @property
    def reading(self) -> bool:
        """True while this instance reads the bus (its reader task is alive)."""
        return self._consumer is not None and not self._consumer.done()

    async def idle(self) -> None:
        """Wait until nothing read from the bus is still in progress (tests)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # -- reading and ordering ---------------------------------------------------------------

    async def _consume(self) -> None:
        async for message in self.bus.messages():
            if message.topic.startswith(self._presence_head):
                await self._slots.acquire()
                self._enqueue(message.topic, _Item(message, _PRESENCE))
                continue
            try:
                direction, _, station = self.topics.parse(message.topic)
            except ValueError:
                self.metrics.drop["unknown_topic"].inc()
                self._log.warning("message on an unknown topic dropped", topic=message.topic)
                message.ack()
                continue
            if direction not in (_INBOUND, _EVENTS):
                self._log.debug("message not for the manager ignored", topic=message.topic)
                message.ack()
                continue
            await self._slots.acquire()
            self._enqueue(station, _Item(message, direction))

    def _enqueue(self, station: str, item: _Item) -> None:
        lane = self._lanes.get(station)
        if lane is not None:
            lane.append(item)
            return
        lane = deque((item,))
        self._lanes[station] = lane
        task = asyncio.create_task(self._drain(station, lane))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, station: str, lane: deque[_Item]) -> None:
        """Handle one station's messages in order; the lane is removed once empty."""
        try:
            while lane:
                item = lane[0]
                try:
                    await self._process(item)
                except Exception:
                    self.metrics.drop["failed"].inc()
                    self._log.exception("message handling failed", topic=item.message.topic)
                finally:
                    # Acknowledged once handled (or given up on), never on receipt: see
                    # csms.bus.Message.ack.
                    item.message.ack()
                    lane.popleft()
                    self._slots.release()
        finally:
            # Reached with an empty lane, or on cancellation at shutdown.
            for _ in lane:
                self._slots.release()
            lane.clear()
            if self._lanes.get(station) is lane:
                del self._lanes[station]

    async def _process(self, item: _Item) -> None:
        message = item.message
        if item.direction == _EVENTS:
            await self._on_event(message)
            return
        if item.direction == _PRESENCE:
            await self._on_presence(message)
            return
        try:
            envelope = decode_envelope(message.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.metrics.drop["undecodable"].inc()
            self._log.warning("undecodable envelope dropped", topic=message.topic, error=str(exc))
            return
        router = self.routers.get(envelope.version)
        if router is None:
            self.metrics.drop["unknown_version"].inc()
            self._log.warning(
                "envelope of an unknown OCPP version dropped",
                station=envelope.station,
                version=envelope.version,
            )
            return
        if envelope.kind is Kind.CALL:
            await self._on_call(envelope, router)
        else:
            self.metrics.result(envelope.version, envelope.action, envelope.kind).inc()
            await self._on_result(envelope, router)

    # -- station Calls ----------------------------------------------------------------------

    async def _on_call(self, envelope: Envelope, router: Router) -> None:
        self.services.message_log.record(call_entry(envelope))  # buffered: no round trip
        cells = self.metrics.calls(envelope.version, envelope.action)
        rejection, handler = router.check_call(envelope)
        if handler is None:
            # Deterministic refusals need no idempotency round trip and work during a store
            # outage; a station that is not Accepted gets SecurityError instead.
            assert rejection is not None
            rejection = await router.registration_rejection(envelope, self.deps) or rejection
            await self._answer(rejection, cells)
            await self._touch(envelope)
            return
        log = self._log.bind(
            station=envelope.station,
            version=envelope.version,
            action=envelope.action,
            message_id=envelope.message_id,
        )
        internal = router.code(RpcError.INTERNAL_ERROR)
        key = idempotency_key(envelope)
        owner = claim_owner(envelope, self.instance_id)
        # The claim, last-seen and what the handler reads, then the handler's writes with the
        # answer: two Redis round trips (services.interfaces.CallUnit).
        async with self._unit(envelope, key, owner, log) as unit:
            try:
                claim = await unit.claim()
            except Exception as exc:
                self.metrics.store_error["idempotency"].inc()
                if isinstance(exc, StoreUnavailable):
                    log.warning("idempotency store unavailable", error=str(exc))
                else:
                    log.exception("idempotency claim failed")
                unavailable = error_answer(envelope, internal, "storage temporarily unavailable")
                await self._answer(unavailable, cells)
                return
            if claim is False:
                # This very delivery attempt is being handled by this instance already (a
                # redelivered copy); its answer goes to the station.
                cells.dropped.inc()
                log.debug("duplicate copy of a call in progress here, dropped")
                return
            if isinstance(claim, bytes):
                try:
                    stored = replay(claim, envelope)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("stored answer unreadable, handling again", error=str(exc))
                else:
                    log.debug("duplicate call answered from the idempotency store")
                    await self._answer(stored, cells, replayed=True)
                    return
            handled = await self._handle(envelope, router, handler, unit, cells, log)
        if handled is None:
            # Something the handler's writes were decided from changed before they were
            # stored (nothing was): handle the Call again, each write checked on its own.
            log.debug("call handled again: what it read changed meanwhile")
            plain = self._plain_unit(envelope, key, owner, log)
            handled = await self._handle(envelope, router, handler, plain, cells, log)
            assert handled is not None  # a plain unit stores whatever it is given
        await self._publish(*handled, cells)

    def _unit(self, envelope: Envelope, key: str, owner: str, log: Any) -> CallUnit:
        """The Call's unit: the idempotency store's own (Redis), else a plain one."""
        idempotency = self.services.idempotency
        if self._call_units(idempotency):
            ahead = read_ahead(envelope)
            return cast(CallUnits, idempotency).unit(
                key, owner, self._claim_ttl, ahead=ahead, seen_at=_iso_at(envelope.at)
            )
        return self._plain_unit(envelope, key, owner, log)

    def _call_units(self, idempotency: object) -> bool:
        """Whether ``idempotency`` makes its own units, decided once per store: an
        ``isinstance`` against a runtime-checkable Protocol walks its members each time."""
        known = self._units_of
        if known is None or known[0] is not idempotency:
            known = self._units_of = (idempotency, isinstance(idempotency, CallUnits))
        return known[1]

    def _plain_unit(self, envelope: Envelope, key: str, owner: str, log: Any) -> PlainCallUnit:
        return PlainCallUnit(
            self.services.idempotency,
            key,
            owner,
            self._claim_ttl,
            touch=lambda: self._touch(envelope),
            bookkeeping=lambda step, failure: self._store(step, log, failure),
        )

    async def _handle(
        self,
        envelope: Envelope,
        router: Router,
        handler: CallHandler,
        unit: CallUnit,
        cells: CallCells,
        log: Any,
    ) -> tuple[Envelope, bytes] | None:
        """Run the handler, then store its writes with its answer (before the answer is
        published: a station never gets an answer the store does not hold). Returns the
        answer to publish and its encoding; None when ``unit`` stored nothing because what
        the writes were decided from changed meanwhile."""
        internal = router.code(RpcError.INTERNAL_ERROR)
        started = time.perf_counter()
        answer = await router.call_handler(envelope, handler, self.deps, log)
        cells.latency.observe(time.perf_counter() - started)
        answer, encoded, stored = self._encode(answer)
        log.debug("call handled", outcome=str(answer.kind), error_code=answer.error_code)
        if stored is None or (answer.kind is Kind.ERROR and answer.error_code == internal):
            # Transient (store outage, bug): let a retry of the station do the work again.
            await self._store(unit.release(), log, "idempotency release failed")
            return answer, encoded
        try:
            if not await unit.complete(stored, float(self.settings.idempotency_ttl)):
                return None
        except Exception as exc:
            self.metrics.store_error["idempotency"].inc()
            if isinstance(exc, StoreUnavailable):
                log.warning("call not stored: store unavailable", error=str(exc))
            else:
                log.exception("call not stored")
            await self._store(unit.release(), log, "idempotency release failed")
            failed = error_answer(envelope, internal, "storage temporarily unavailable")
            answer, encoded, _ = self._encode(failed)
        return answer, encoded

    async def _answer(
        self, answer: Envelope, cells: CallCells, *, replayed: bool = False
    ) -> bytes | None:
        """Publish an answer on the station's ``out`` topic and count its outcome in
        ``cells`` (``duplicate`` when ``replayed`` from the idempotency store); returns the
        encoded answer (None when it could not be encoded). Bus failures are logged: the
        gateway times the station's call out with an InternalError of its own."""
        answer, encoded, stored = self._encode(answer)
        await self._publish(answer, encoded, cells, replayed=replayed)
        return stored

    def _encode(self, answer: Envelope) -> tuple[Envelope, bytes, bytes | None]:
        """``answer`` (an InternalError when it cannot be encoded), its encoding, and what
        the idempotency store may keep of it (None for that InternalError)."""
        try:
            encoded = encode(answer)
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError) as exc:
            self._log.error(
                "answer could not be encoded",
                station=answer.station,
                action=answer.action,
                message_id=answer.message_id,
                error=str(exc),
            )
            answer = error_answer(
                answer, error_code(answer.version, RpcError.INTERNAL_ERROR), "internal error"
            )
            return answer, encode(answer), None
        return answer, encoded, encoded

    async def _publish(
        self, answer: Envelope, encoded: bytes, cells: CallCells, *, replayed: bool = False
    ) -> None:
        """Publish an encoded answer and count its outcome (see :meth:`_answer`)."""
        if replayed:
            cells.duplicate.inc()
        elif answer.kind is Kind.RESULT:
            cells.answered.inc()
        else:
            cells.error(answer.error_code).inc()
        published = True
        try:
            await self.bus.publish(
                self._outbound(answer.version, answer.station),
                encoded,
                properties={
                    "message_id": property_text(answer.message_id),
                    "station": property_text(answer.station),
                },
            )
        except BusUnavailable as exc:
            published = False
            self.metrics.publish_failures.inc()
            self._log.warning(
                "answer not published: bus unavailable",
                station=answer.station,
                message_id=answer.message_id,
                error=str(exc),
            )
        except Exception:
            published = False
            self.metrics.publish_failures.inc()
            self._log.exception(
                "answer not published", station=answer.station, message_id=answer.message_id
            )
        self.services.message_log.record(
            answer_entry(answer, replayed=replayed, published=published)
        )

    def _outbound(self, version: str, station: str) -> str:
        """The station's ``out`` topic, percent-encoded once per station, not per answer."""
        key = (version, station)
        topic = self._out_topics.get(key)
        if topic is None:
            if len(self._out_topics) >= MAX_TOPICS:
                self._out_topics.clear()
            topic = self._out_topics[key] = self.topics.outbound(version, station)
        return topic

    async def _store(self, operation: Awaitable[None], log: Any, failure: str) -> None:
        """Await an idempotency bookkeeping step; its failure must not affect the answer."""
        try:
            await operation
        except StoreUnavailable as exc:
            self.metrics.store_error["idempotency"].inc()
            log.warning(failure, error=str(exc))
        except Exception:
            self.metrics.store_error["idempotency"].inc()
            log.exception(failure)

    async def _touch(self, envelope: Envelope) -> None:
        """Record last-seen; after the answer, and a failure here is only logged."""
        try:
            await self.services.stations.touch(envelope.station, _iso_at(envelope.at))
        except Exception as exc:
            self.metrics.store_error["last_seen"].inc()
            self._log.warning("last-seen update failed", station=envelope.station, error=str(exc))

    # -- answers to CSMS calls --------------------------------------------------------------

    async def _on_result(self, envelope: Envelope, router: Router) -> None:
        if envelope.kind in (Kind.RESULT, Kind.ERROR):
            await self._touch(envelope)
        record = outcome_record(envelope)
        if record is not None:
            # Readable later by callers that did not wait (GET /v1/calls/{id}), whoever sent it.
            try:
                await self.services.call_records.finish(record)
            except Exception as exc:
                self._log.warning(
                    "call outcome not recorded",
                    station=envelope.station,
                    message_id=record.message_id,
                    error=str(exc),
                )
        await state_events.call_outcome(self.deps, envelope)
        handled = await router.handle_result(envelope, self.deps)
        self.services.message_log.record_all(outcome_entries(envelope, handled=handled))

    # -- connection events ------------------------------------------------------------------

    async def _on_event(self, message: Message) -> None:
        try:
            event = decode_event(message.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.metrics.drop["undecodable"].inc()
            self._log.warning(
                "undecodable connection event dropped", topic=message.topic, error=str(exc)
            )
            return
        if not await self._apply_event(event):
            self._keep_for_retry(event)

    async def _apply_event(self, event: ConnectionEvent, *, retry: bool = False) -> bool:
        """Store a connection event in the registry; False when the store failed."""
        stations = self.services.stations
        at = _iso_at(event.at)
        try:
            if event.kind is ConnectionEventKind.CONNECTED:
                await stations.mark_connected(
                    event.station,
                    event.version,
                    event.gateway,
                    event.connection,
                    at,
                    session=event.session,
                    lease=event.lease or None,
                )
                owned = True
                if event.password_hash is not None and await stations.promote_password_hash(
                    event.station, event.password_hash
                ):
                    self._log.info(
                        "password_changed",
                        station=event.station,
                        reason="the station logged in with its rotated password",
                    )
                if event.security_profile_reached:
                    await state_events.security_profile_reached(self.deps, event, at)
            else:
                owned = await stations.mark_disconnected(event.station, event.connection, at)
            await state_events.connection(self.deps, event, at, current=owned)
        except Exception as exc:
            self.metrics.store_error["connection_event"].inc()
            self._log.warning(
                "connection event not recorded; will retry",
                station=event.station,
                event_kind=event.kind.value,
                connection=event.connection,
                error=str(exc),
            )
            return False
        self.metrics.connection_events.labels(event.kind.value).inc()
        if retry:
            self.metrics.event_retries.inc()
        self._log.info(
            "station " + event.kind.value,
            station=event.station,
            version=event.version,
            gateway=event.gateway,
            connection=event.connection,
            current=owned,
            retried=retry or None,
        )
        return True

    def _keep_for_retry(self, event: ConnectionEvent) -> None:
        """Keep a connection event the registry refused, for :meth:`_retry_events`.

        Only the latest event of a connection matters: a disconnect replaces its own waiting
        connect (the registry applies a disconnect only for the connection that owns the
        station, so storing it is harmless if the connect never was).
        """
        self._failed_events.pop(event.connection, None)
        self._failed_events[event.connection] = event
        while len(self._failed_events) > MAX_EVENT_RETRIES:
            dropped = next(iter(self._failed_events))
            del self._failed_events[dropped]
            self._log.warning("connection event dropped: too many waiting", connection=dropped)

    async def _retry_events(self) -> None:
        waiting = list(self._failed_events.values())
        self._failed_events.clear()
        for index, event in enumerate(waiting):
            if not await self._apply_event(event, retry=True):
                for rest in waiting[index:]:
                    self._failed_events.setdefault(rest.connection, rest)
                return

    # -- gateway presence -------------------------------------------------------------------

    async def _on_presence(self, message: Message) -> None:
        try:
            presence = decode_presence(message.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.metrics.drop["undecodable"].inc()
            self._log.warning("undecodable gateway presence dropped", error=str(exc))
            return
        stations = self.services.stations
        try:
            if presence.state is GatewayState.ALIVE:
                await stations.gateway_alive(presence.gateway, presence.at + presence.lease)
                self._log.debug(
                    "gateway lease renewed", gateway=presence.gateway, lease=presence.lease
                )
                return
            offline = await stations.gateway_gone(
                presence.gateway, _iso_at(presence.at), session=presence.session
            )
        except Exception as exc:
            # The lease expires on its own; the next sweep takes care of it.
            self.metrics.store_error["presence"].inc()
            self._log.warning(
                "gateway presence not recorded", gateway=presence.gateway, error=str(exc)
            )
            return
        self.metrics.gateway_gone("gone")
        self._log.info(
            "gateway gone: its stations are offline",
            gateway=presence.gateway,
            stations=len(offline),
        )

    async def _expire_gateways(self) -> None:
        """Mark offline the stations of gateways whose lease ran out (a gateway killed while
        no manager heard its last will, or frozen)."""
        stations = self.services.stations
        now = time.time()
        for gateway in await stations.expired_gateways(now):
            offline = await stations.gateway_gone(gateway, _iso_at(now))
            self.metrics.gateway_gone("expired")
            self._log.warning(
                "gateway lease expired: its stations are offline",
                gateway=gateway,
                stations=len(offline),
            )

    async def _housekeeping(self) -> None:
        """Background upkeep: retry connection events, expire gateway leases."""
        interval = min(EVENT_RETRY_INTERVAL, self.settings.gateway_heartbeat_interval)
        next_sweep = 0.0
        while True:
            await asyncio.sleep(interval)
            try:
                if self._failed_events:
                    await self._retry_events()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.settings.gateway_heartbeat_interval
                    await self._expire_gateways()
                await certificates.renewal_round(self.deps, self.instance_id)
            except StoreUnavailable as exc:
                self.metrics.store_error["housekeeping"].inc()
                self._log.debug("housekeeping postponed: store unavailable", error=str(exc))
            except Exception:
                self._log.exception("housekeeping failed")
