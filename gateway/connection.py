"""The I/O around one station's :class:`~gateway.pipe.Pipe`: socket writes, bus publishes, timer.

Everything that feeds the pipe (the socket reader, the gateway's bus consumer, the timer) calls
it synchronously and hands the resulting actions to two small ordered lanes: one writing to the
socket, one publishing to the bus. Nobody else ever awaits this connection's I/O, so a slow or
silent station, or a slow publish, only ever delays that one station. Work put on an idle lane
runs at once (:func:`csms.eager.start`) and a lane's task exists only while a step waits; the
timer is one ``loop.call_at`` handle, moved only when a deadline comes earlier: an idle
connection costs the pipe, this object and the websockets connection, nothing more.

The pipe's deadlines are on the event loop's monotonic clock (``loop.time()``, the clock
``call_at`` uses, so a timer fires exactly at the pipe's deadline); the pipe stamps envelopes
with Unix time itself. ``connected_at`` is Unix time too: it orders duplicate connections
across gateways.

The connection's lifecycle state (:class:`~gateway.pipe.ConnectionState`) is its pipe's:
:attr:`Connection.state` reads it, and the events that change it (a flood, :meth:`retire`,
:meth:`finish`) go through the pipe, so the two can never disagree.

The pipe's reports, and unexpected exceptions while handling this connection's traffic
(:meth:`Connection.log_exception`), are logged through a per-connection
:class:`~gateway.limits.LogThrottle` (created on the first report): a station sending
thousands of bad frames produces one line per kind and ``REPORT_INTERVAL``, with the count of
those suppressed.

MQTT user properties of every publish are percent-encoded (:func:`csms.bus.property_text`):
they hold text stations and originators chose (message ids, actions, station ids, meta), and
a broker drops the connection of a client sending a string MQTT v5 forbids, which would cut
off every station of the gateway. The envelope, JSON in the payload, carries the exact values.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from csms import eager
from csms.bus import Bus, BusUnavailable, property_text
from csms.envelope import Envelope, encode
from csms.topics import Topics
from gateway.limits import LogThrottle, format_peer
from gateway.metrics import VersionCounters
from gateway.pipe import Action, ConnectionState, Disconnect, Pipe, Publish, Report, SendToStation

__all__ = ["Connection"]

_T = TypeVar("_T")

MAX_BACKLOG = 64
"""Actions a lane may hold before the socket reader waits for it: a station flooding the
gateway with frames is slowed down to the pace at which its frames can be handled."""

REPORT_INTERVAL = 10.0
"""Seconds between two log lines of the same kind from one connection."""


def _meta_properties(meta: dict[str, str]) -> dict[str, str]:
    return {property_text(key): property_text(value) for key, value in meta.items()}


class _Lane(Generic[_T]):
    """An ordered queue of work run by a task that only exists while the work has to wait.

    An item put on an idle lane runs at once, in the caller's turn (:func:`csms.eager.start`);
    only if it has to wait (a PUBACK, a full socket buffer) does a task take over, and items
    put meanwhile queue behind it, so the order stays the order of :meth:`put`.
    """

    __slots__ = ("_busy", "_failed", "_items", "_run", "_task")

    def __init__(self, run: Callable[[_T], Awaitable[None]], failed: Callable[[str], None]) -> None:
        self._run = run
        self._failed = failed
        """Logs the exception being handled (called from within ``except``)."""
        self._items: list[_T] = []  # short-lived and short; an empty deque costs ~600 B
        self._task: asyncio.Task[None] | None = None
        """The task draining the lane, while the item being run waits."""
        self._busy = False
        """True while an item runs, inline or in the task: a put meanwhile only queues."""

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: _T) -> None:
        self._items.append(item)
        if not self._busy:
            self._busy = True
            self._task = eager.start(self._drain())

    async def _drain(self) -> None:
        try:
            while self._items:
                item = self._items.pop(0)
                try:
                    await self._run(item)
                except Exception:
                    self._failed("gateway lane step failed")
        finally:
            self._busy = False
            self._task = None

    async def wait_idle(self) -> None:
        """Return once every item put so far has been run."""
        while (task := self._task) is not None:
            await asyncio.wait({task})

    def cancel(self) -> None:
        """Drop pending work and stop the running step."""
        self._items.clear()
        if self._task is not None:
            self._task.cancel()


class Connection:
    """One open station socket and its pipe."""

    __slots__ = (
        "_bus",
        "_close_task",
        "_counters",
        "_inbound",
        "_loop",
        "_meta",
        "_meta_properties",
        "_publish_lane",
        "_publish_timeout",
        "_reports",
        "_send_lane",
        "_station_property",
        "_timer",
        "_timer_deadline",
        "connected_at",
        "log",
        "pipe",
        "remote",
        "ws",
    )

    def __init__(
        self,
        ws: ServerConnection,
        pipe: Pipe,
        *,
        bus: Bus,
        topics: Topics,
        publish_timeout: float,
        counters: VersionCounters,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.ws = ws
        self.pipe = pipe
        self.log = log
        self._loop = asyncio.get_running_loop()
        """Its ``time()`` is the monotonic clock of the pipe's deadlines."""
        self.connected_at = time.time()
        """Unix time the socket opened; orders duplicate connections (newest wins)."""
        self.remote = format_peer(ws.remote_address)
        """The peer's ``host:port``, in every log line about a limit."""
        self._reports: LogThrottle | None = None
        self._bus = bus
        self._publish_timeout = publish_timeout
        self._counters = counters
        self._inbound = topics.inbound(pipe.version, pipe.station)
        """The shared ``in`` topic this connection publishes to."""
        self._meta = dict(pipe.meta)
        self._meta_properties = _meta_properties(self._meta)
        """:attr:`_meta` (the connection's envelope meta) as MQTT user properties."""
        self._station_property = property_text(pipe.station)
        """Metric cells of this connection's version (gateway/metrics.py), shared."""
        self._send_lane: _Lane[str] = _Lane(self._send, self.log_exception)
        self._publish_lane: _Lane[Publish] = _Lane(self._publish, self.log_exception)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._close_task: asyncio.Task[None] | None = None
        """The socket's close, started by a flood or a retirement; referenced so that the
        task is not garbage-collected (the state says whether the socket is closing)."""

    @property
    def id(self) -> str:
        return self.pipe.connection

    @property
    def station(self) -> str:
        return self.pipe.station

    @property
    def version(self) -> str:
        return self.pipe.version

    @property
    def state(self) -> ConnectionState:
        """Where this connection is in its life (its pipe's state)."""
        return self.pipe.state

    @property
    def retire_reason(self) -> str | None:
        """Why the gateway retired this connection (replaced), None if it did not."""
        return self.pipe.retire_reason

    # -- events in -----------------------------------------------------------------------

    def feed_frame(self, data: str | bytes) -> None:
        """A message read from the station's socket."""
        self._counters.frames_in.inc()
        self._apply(self.pipe.receive_station_frame(data, self._loop.time()))

    def feed_envelope(self, envelope: Envelope) -> None:
        """An envelope from the station's ``out`` topic."""
        self._apply(self.pipe.receive_bus_envelope(envelope, self._loop.time()))

    async def throttle(self) -> None:
        """Called by the socket reader after each frame; waits while a lane is backed up."""
        if len(self._send_lane) > MAX_BACKLOG:
            await self._send_lane.wait_idle()
        if len(self._publish_lane) > MAX_BACKLOG:
            await self._publish_lane.wait_idle()

    def retire(self, reason: str, code: int = 1000) -> None:
        """Take this connection out of service (a newer one holds the station).

        Its CSMS calls become UNDELIVERED at once, then the socket is closed (unless a flood
        close is under way already); the reader's cleanup (:meth:`finish`) runs when the close
        completes.
        """
        before = self.state
        if before.ended:
            return
        self.log.info("connection replaced", reason=reason)
        self._apply(self.pipe.retire(self._loop.time(), reason))
        if before is ConnectionState.OPEN:
            self._close_soon(code, reason)

    async def finish(self) -> None:
        """The socket is closed: publish the pipe's last outcomes and stop everything."""
        self._log_keepalive_timeout()
        if self._reports is not None and self._reports.suppressed:
            self.log.info("similar log lines suppressed", count=self._reports.suppressed)
        self._cancel_timer()
        self._send_lane.cancel()
        self._apply(self.pipe.close(self._loop.time()))
        try:
            async with asyncio.timeout(self._publish_timeout * 2):
                await self._publish_lane.wait_idle()
        except TimeoutError:
            self.log.warning(
                "connection outcomes not all published", pending=len(self._publish_lane)
            )
            self._publish_lane.cancel()

    # -- actions out ---------------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendToStation):
                self._send_lane.put(action.text)
            elif isinstance(action, Publish):
                outcome = self._counters.outcomes.get(action.envelope.kind)
                if outcome is not None:  # a CSMS call's outcome (station Calls: no entry)
                    outcome.inc()
                self._publish_lane.put(action)
            elif isinstance(action, Disconnect):
                # The pipe gave up on this station (a limit): it is DISCONNECTING now.
                self._close_soon(action.code, action.reason)
            else:
                self._report(action)
        self._arm_timer()

    def _report(self, report: Report) -> None:
        if report.level == "debug":
            self.log.debug(report.event, **report.fields)
            return
        suppressed = self._throttle(report.event)
        if suppressed is None:
            return
        fields = {**report.fields, "remote": self.remote}
        if suppressed:
            fields["suppressed"] = suppressed
        getattr(self.log, report.level)(report.event, **fields)

    def log_exception(self, event: str, **fields: Any) -> None:
        """Log the exception being handled, with its traceback, at most once per
        ``REPORT_INTERVAL`` for each event and exception type on this connection (the next
        line says how many were suppressed). Call it from within an ``except`` block."""
        error = type(sys.exc_info()[1]).__name__
        suppressed = self._throttle((event, error))
        if suppressed is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed
        self.log.exception(event, error=error, remote=self.remote, **fields)

    def _throttle(self, key: Hashable) -> int | None:
        if self._reports is None:
            self._reports = LogThrottle(REPORT_INTERVAL, max_keys=32)
        return self._reports.allow(key, time.monotonic())

    def _close_soon(self, code: int, reason: str) -> None:
        """Start closing the socket; emitted once per connection, when it leaves OPEN."""
        self._close_task = self._loop.create_task(self._close_socket(code, reason))

    def _log_keepalive_timeout(self) -> None:
        """Say so when websockets closed the socket because pings went unanswered."""
        sent = self.ws.protocol.close_sent
        if (
            sent is not None
            and sent.code == CloseCode.INTERNAL_ERROR
            and sent.reason == "keepalive ping timeout"
        ):
            self.log.warning(
                "station stopped answering pings: disconnected",
                remote=self.remote,
                ping_interval=self.ws.ping_interval,
                ping_timeout=self.ws.ping_timeout,
            )

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except ConnectionClosed:
            self.log.debug("frame not sent: socket closed")
        else:
            self._counters.frames_out.inc()

    def _properties(self, envelope: Envelope) -> dict[str, str]:
        """The MQTT user properties of ``envelope``. Its meta is usually the connection's own
        (station Calls): that part is percent-encoded once and reused."""
        meta = envelope.meta
        if meta is self._meta or meta == self._meta:
            properties = dict(self._meta_properties)
        else:
            properties = _meta_properties(meta)
        properties["kind"] = envelope.kind.value
        properties["message_id"] = property_text(envelope.message_id)
        properties["station"] = self._station_property
        if envelope.action:
            properties["action"] = property_text(envelope.action)
        return properties

    async def _publish(self, action: Publish) -> None:
        envelope = action.envelope
        properties = self._properties(envelope)
        data = encode(envelope)
        if action.reply_to is not None:
            # The originator that waits for this outcome gets its own copy; the managers get
            # theirs on the shared topic below, so result handlers always run.
            await self._publish_reply(action.reply_to, data, properties, envelope)
        topic = self._inbound
        try:
            # No timeout here: every bus adapter gives up on a publish after publish_timeout
            # itself (one timer per broker connection, not one per publish).
            await self._bus.publish(topic, data, properties=properties)
        except (BusUnavailable, TimeoutError) as exc:
            self.log.warning(
                "publish failed",
                error=str(exc) or type(exc).__name__,
                kind=str(envelope.kind),
                message_id=envelope.message_id,
                topic=topic,
            )
        except Exception:
            # A bus adapter bug must still leave the station with an answer.
            self.log_exception("publish failed unexpectedly", kind=str(envelope.kind), topic=topic)
        else:
            return
        self._counters.publish_failures[envelope.kind].inc()
        self._apply(self.pipe.publish_failed(envelope, self._loop.time()))

    async def _publish_reply(
        self, topic: str, data: bytes, properties: dict[str, str], envelope: Envelope
    ) -> None:
        try:
            await self._bus.publish(topic, data, properties=properties)
        except (BusUnavailable, TimeoutError) as exc:
            # The originator stopped waiting (NoSubscribers) or the bus is down; the shared
            # copy still reaches the managers.
            self.log.info(
                "outcome not delivered to its originator",
                error=str(exc) or type(exc).__name__,
                kind=str(envelope.kind),
                message_id=envelope.message_id,
            )
        except Exception:
            self.log_exception("publish failed unexpectedly", kind=str(envelope.kind), topic=topic)

    async def _close_socket(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason[:120])

    # -- timer ---------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        """Keep the one timer at or before the pipe's next deadline.

        It moves only when the deadline comes earlier than the timer. A later deadline (each
        new Call's) or none (the answer came) leaves it alone: it then fires early, the pipe's
        tick finds nothing due, and it is set again for the deadline of that moment. A busy
        connection so costs one timer per ``answer_timeout``, not two timer operations per
        message, and every deadline is still applied once, when it is reached.
        """
        armed = self._timer_deadline
        if armed is not None:
            deadline = self.pipe.next_deadline()
            if deadline is None or deadline >= armed:
                return
        else:
            deadline = self.pipe.next_deadline()
            if deadline is None:
                return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        try:
            self._apply(self.pipe.tick(self._loop.time()))
        except Exception:
            self.log_exception("pipe tick failed")
            self._arm_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_deadline = None

    def describe(self) -> dict[str, Any]:
        """Facts for logs and debugging."""
        return {
            "station": self.station,
            "version": self.version,
            "connection": self.id,
            "in_flight": self.pipe.in_flight,
            "queued": self.pipe.queued,
            "pending": len(self.pipe.pending_station_calls),
        }
