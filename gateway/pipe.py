"""The per-connection pipe: OCPP-J correlation rules as a sans-I/O state machine.

One :class:`Pipe` lives beside each station socket. It is fed events (a frame from the
station, an envelope from the bus, the passing of time, the end of the connection) and
returns the :data:`Action` values the I/O layer must carry out, in order. It never touches a
socket, the bus or a clock of its own, so every rule is testable synchronously, as in the
websockets protocol core. Time comes in two kinds, never mixed:

- **Deadlines** (``answer_timeout``, ``call_timeout``, the rate-limit bucket, the flood
  window) run on a monotonic clock: every event takes ``now``, seconds on that clock (the
  event loop's), and :meth:`Pipe.next_deadline` answers on it. A wall-clock step (NTP, an
  operator setting the time) neither fires nor delays a deadline.
- **Timestamps** in envelopes (``at``, ``request.sent_at``) are Unix time, read from the
  ``wall_clock`` the pipe is given (``time.time`` by default), because they leave this
  process.

Rules kept here (see ``DESIGN.md``, "Correlation and in-flight rules"):

- CSMS → station: at most one CSMS call in flight; later calls wait in a bounded FIFO; a full
  queue, a station that goes away or a connection replaced by a newer one turn calls into
  explicit ``UNDELIVERED`` outcomes; an unanswered call becomes ``TIMEOUT`` after
  ``call_timeout``; the station's answer is published with the original call attached.
- station → CSMS: independent of the other direction. Every station Call gets exactly one
  answer: the CSMS's, or the pipe's own ``InternalError`` when the CSMS is late or the bus
  refused the Call. Late or duplicate CSMS answers are dropped. A Call repeating the id of
  one still awaiting its answer is not published again (only reported): the pending one's
  answer is the answer. Once that is sent, the id may be used again.
- framing faults get the CallError code of the negotiated version; faulty CallResult /
  CallError frames are only reported, never answered.
- lifecycle: one :class:`ConnectionState` per connection, held here (the I/O layer reads
  it): OPEN, DISCONNECTING (this pipe asked for the socket to be closed), RETIRED (a newer
  connection holds the station), CLOSED (the socket is gone).
- message rate (``message_rate`` / ``message_burst``): every frame from the station spends a
  token of a :class:`~gateway.limits.TokenBucket`. Without a token, a Call is answered with
  GenericError ("rate limit exceeded") and not published. Answers to the CSMS call in flight
  are still handled: they are at most one per CSMS call, so the CSMS sets their pace, and
  refusing one would lose the outcome of that call. Other frames (faults, stray answers) are
  handled as usual since none reaches the bus. A station that stays over the limit for
  ``flood_close_after`` seconds is disconnected with close code 1008 (policy violation).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from csms import rpc
from csms.config import Settings
from csms.envelope import Envelope, Kind, OriginalCall
from csms.rpc import RpcError
from csms.versions import error_code, supported
from gateway.limits import TokenBucket

__all__ = [
    "CSMS_LATE",
    "CSMS_UNAVAILABLE",
    "FLOODING",
    "QUEUE_FULL",
    "RATE_LIMITED",
    "STATION_DISCONNECTED",
    "Action",
    "ConnectionState",
    "Disconnect",
    "Limits",
    "Pipe",
    "Publish",
    "Report",
    "SendToStation",
]

# Descriptions the pipe puts on the wire or in outcomes; stable so tests and operators can
# rely on them.
CSMS_LATE = "CSMS did not answer in time"
CSMS_UNAVAILABLE = "CSMS temporarily unavailable"
QUEUE_FULL = "call queue full"
RATE_LIMITED = "rate limit exceeded"
FLOODING = "message rate limit exceeded for too long"
STATION_DISCONNECTED = "station disconnected"

_RECENT_CSMS_IDS = 32
"""How many finished CSMS call ids a pipe remembers, to drop QoS 1 redeliveries of calls it
already handled and to tell a late station answer from an unknown one."""

_BREACH_GAP = 1.0
"""Seconds without a refused frame that end a rate-limit breach: a station whose frames keep
being refused with shorter pauses is flooding, one that is refused now and then is not."""

CLOSE_POLICY_VIOLATION = 1008


class ConnectionState(enum.Enum):
    """Where a station connection is in its life: the one source of truth, kept by its pipe.

    Transitions (no other exists; CLOSED is final)::

        OPEN           -> DISCONNECTING  the station stayed over the message rate (flood)
        OPEN           -> RETIRED        a newer connection holds the station (retire)
        DISCONNECTING  -> RETIRED        the same, while the flood close is under way
        OPEN, DISCONNECTING, RETIRED -> CLOSED   the socket is gone (close)

    - OPEN: frames and CSMS calls flow both ways.
    - DISCONNECTING: the station stayed over the message rate; the pipe emitted
      :class:`Disconnect` and takes no more station frames; the bus side (CSMS calls and
      answers, deadlines) is handled as in OPEN until the socket is closed.
    - RETIRED: a newer connection holds the station (:meth:`Pipe.retire`). Its CSMS calls
      became ``UNDELIVERED``; nothing more flows while the socket closes.
    - CLOSED: the socket is gone (:meth:`Pipe.close`); final.

    In RETIRED and CLOSED (:attr:`ended`) a CSMS call still becomes ``UNDELIVERED``, so that
    none is ever dropped silently.
    """

    OPEN = "open"
    DISCONNECTING = "disconnecting"
    RETIRED = "retired"
    CLOSED = "closed"

    @property
    def ended(self) -> bool:
        """RETIRED or CLOSED: the connection takes no more traffic."""
        return self is ConnectionState.RETIRED or self is ConnectionState.CLOSED


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits, normally taken from :class:`csms.config.Settings`."""

    call_timeout: float = 30.0
    """Seconds the station has to answer a CSMS call before it becomes ``TIMEOUT``."""
    call_queue_size: int = 16
    """CSMS calls that may wait behind the one in flight."""
    answer_timeout: float = 20.0
    """Seconds the CSMS has to answer a station Call before the pipe answers InternalError."""
    max_frame_bytes: int = 65_536
    """Largest frame (UTF-8 bytes) handled; larger Calls get a FormatViolation CallError."""
    max_station_calls: int = 16
    """Unanswered station Calls kept at once. OCPP-J allows one; some stations pipeline, so a
    few are tolerated, but the bound keeps a misbehaving station's memory small."""
    message_rate: float | None = 20.0
    """Frames per second a station may send on average; None disables the rate limit."""
    message_burst: int = 100
    """Frames a station may send at once on top of ``message_rate`` (the bucket's size)."""
    flood_close_after: float | None = 10.0
    """Seconds a station may stay over the rate before it is disconnected; None = never."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            call_timeout=settings.call_timeout,
            call_queue_size=settings.call_queue_size,
            answer_timeout=settings.answer_timeout,
            max_frame_bytes=settings.max_frame_bytes,
            max_station_calls=settings.max_station_calls,
            message_rate=settings.message_rate,
            message_burst=settings.message_burst,
            flood_close_after=settings.flood_close_after,
        )


@dataclass(frozen=True, slots=True)
class SendToStation:
    """Write this text frame to the station's socket."""

    text: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the station's socket with this WebSocket close code; the pipe takes no more
    frames (the I/O layer calls :meth:`Pipe.close` once the socket is closed)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``envelope`` on the bus.

    ``reply_to`` is None for the station's inbound topic (``{prefix}/in/{version}/{station}``),
    else the topic the originator of a CSMS call asked its outcome to go to.
    """

    envelope: Envelope
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """Something the I/O layer should log; the pipe has no logger of its own."""

    level: Literal["debug", "info", "warning"]
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


Action = SendToStation | Publish | Report | Disconnect


@dataclass(slots=True)
class _InFlight:
    call: Envelope
    sent_at: float
    """Unix time the call was written to the station (for the outcome's ``request``)."""
    deadline: float
    """Monotonic time the call becomes ``TIMEOUT``."""


class Pipe:
    """OCPP-J correlation state of one station connection (no I/O; see module docstring)."""

    __slots__ = (
        "_breach_since",
        "_bucket",
        "_in_flight",
        "_last_refused",
        "_pending",
        "_queue",
        "_recent",
        "_refused",
        "_retire_reason",
        "_state",
        "_wall_clock",
        "connection",
        "gateway",
        "limits",
        "meta",
        "station",
        "version",
    )

    def __init__(
        self,
        station: str,
        version: str,
        *,
        connection: str,
        gateway: str,
        limits: Limits | None = None,
        meta: dict[str, str] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if version not in supported():
            raise ValueError(f"unsupported OCPP version {version!r}")
        self.station = station
        self.version = version
        self.connection = connection
        self.gateway = gateway
        self.limits = limits or Limits()
        self.meta = meta or {}
        """Facts stamped on every station Call published (e.g. how the station was admitted)."""
        self._wall_clock = wall_clock
        """Unix time for envelope timestamps; deadlines use the ``now`` events bring."""
        self._in_flight: _InFlight | None = None
        # Lists, not deques: an empty deque costs ~600 bytes, and these stay short.
        self._queue: list[Envelope] = []
        self._pending: dict[str, float] = {}
        """Station Call ids awaiting the CSMS's answer → deadline (monotonic)."""
        self._recent: list[str] = []
        self._state = ConnectionState.OPEN
        self._retire_reason: str | None = None
        self._bucket: TokenBucket | None = None
        """Created with the first frame (the pipe is given no clock before)."""
        self._breach_since: float | None = None
        """When the current run of refused frames began, None while under the limit."""
        self._last_refused = 0.0
        self._refused = 0

    # -- introspection -------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """Where this connection is in its life (see :class:`ConnectionState`)."""
        return self._state

    @property
    def closed(self) -> bool:
        """No more traffic: the connection was retired or its socket closed."""
        return self._state.ended

    @property
    def disconnecting(self) -> bool:
        """The pipe asked for the socket to be closed (:class:`Disconnect`)."""
        return self._state is ConnectionState.DISCONNECTING

    @property
    def retire_reason(self) -> str | None:
        """Why the connection was retired (replaced), kept once CLOSED; else None."""
        return self._retire_reason

    @property
    def in_flight(self) -> str | None:
        """Message id of the CSMS call awaiting the station's answer, if any."""
        return self._in_flight.call.message_id if self._in_flight else None

    @property
    def queued(self) -> int:
        """CSMS calls waiting behind the one in flight."""
        return len(self._queue)

    @property
    def pending_station_calls(self) -> frozenset[str]:
        """Ids of station Calls the CSMS has not answered yet."""
        return frozenset(self._pending)

    def next_deadline(self) -> float | None:
        """Earliest monotonic time :meth:`tick` has something to do, or None."""
        deadline = self._in_flight.deadline if self._in_flight else None
        if self._pending:
            earliest = min(self._pending.values())
            if deadline is None or earliest < deadline:
                deadline = earliest
        return deadline

    # -- events --------------------------------------------------------------------------

    def receive_station_frame(self, data: str | bytes, now: float) -> list[Action]:
        """A WebSocket message from the station (``bytes`` for a binary frame)."""
        if self._state is not ConnectionState.OPEN:
            return []
        within_rate = self._take_token(now)
        actions: list[Action] = self._end_breach(now)
        size = len(data) if isinstance(data, bytes) or data.isascii() else len(data.encode())
        if size > self.limits.max_frame_bytes:
            actions += self._oversized(data, size)
        elif isinstance(data, bytes):
            actions += self._binary(data)
        else:
            try:
                frame = rpc.parse_frame(data)
            except rpc.FrameFault as fault:
                actions += self._fault(fault)
            else:
                if isinstance(frame, rpc.Call):
                    if within_rate:
                        return actions + self._station_call(frame, now)
                    refusal = self._over_rate(now)
                    if self.disconnecting:
                        return refusal
                    if frame.message_id in self._pending:
                        # Its answer is still to come: a GenericError would be a second one.
                        return [*actions, *self._station_call(frame, now), *refusal]
                    return [*actions, self._rate_limited(frame.message_id, now), *refusal]
                if not within_rate and frame.message_id == self.in_flight:
                    within_rate = True  # never lose the outcome of a CSMS call
                actions += self._station_answer(frame, now)
        if within_rate:
            return actions
        refusal = self._over_rate(now)
        return refusal if self.disconnecting else actions + refusal

    def receive_bus_envelope(self, envelope: Envelope, now: float) -> list[Action]:
        """An envelope from the station's ``out`` topic: a CSMS call or an answer."""
        if envelope.station != self.station or envelope.version != self.version:
            return [
                Report(
                    "warning",
                    "envelope for another station or version dropped",
                    {
                        "envelope_station": envelope.station,
                        "envelope_version": envelope.version,
                        "message_id": envelope.message_id,
                    },
                )
            ]
        if envelope.kind is Kind.CALL:
            return self._csms_call(envelope, now)
        if envelope.kind in (Kind.RESULT, Kind.ERROR):
            return self._csms_answer(envelope)
        return [
            Report(
                "warning",
                "unexpected envelope kind on out topic dropped",
                {"kind": str(envelope.kind), "message_id": envelope.message_id},
            )
        ]

    def tick(self, now: float) -> list[Action]:
        """Apply every deadline that has passed at ``now``."""
        actions: list[Action] = []
        if self._state.ended:
            return actions
        expired = [mid for mid, deadline in self._pending.items() if deadline <= now]
        for message_id in expired:
            del self._pending[message_id]
            actions.append(self._error(message_id, RpcError.INTERNAL_ERROR, CSMS_LATE))
            actions.append(Report("warning", "CSMS answer late", {"message_id": message_id}))
        current = self._in_flight
        if current is not None and current.deadline <= now:
            self._in_flight = None
            self._remember(current.call.message_id)
            actions.append(
                self._outcome(
                    current.call,
                    Kind.TIMEOUT,
                    sent_at=current.sent_at,
                    error_description=(
                        f"station did not answer within {self.limits.call_timeout:g} s"
                    ),
                )
            )
            self._send_next(now, actions)
        return actions

    def publish_failed(self, envelope: Envelope, now: float) -> list[Action]:
        """The bus refused ``envelope`` (from a :class:`Publish` of this pipe).

        A station Call is answered at once with InternalError, so the station is not left
        waiting for an answer that cannot come. Lost outcomes can only be reported.
        """
        if envelope.kind is Kind.CALL:
            if self._state.ended or self._pending.pop(envelope.message_id, None) is None:
                return []
            return [self._error(envelope.message_id, RpcError.INTERNAL_ERROR, CSMS_UNAVAILABLE)]
        return [
            Report(
                "warning",
                "outcome of CSMS call lost: bus unavailable",
                {"kind": str(envelope.kind), "message_id": envelope.message_id},
            )
        ]

    def retire(self, now: float, reason: str) -> list[Action]:
        """A newer connection holds the station (RETIRED): as :meth:`close`, with ``reason``
        on the outcomes, before the socket is closed."""
        if self._state.ended:
            return []
        self._state = ConnectionState.RETIRED
        self._retire_reason = reason
        return self._end(reason)

    def close(self, now: float, reason: str = STATION_DISCONNECTED) -> list[Action]:
        """The socket is gone (CLOSED): every CSMS call in flight or queued becomes
        ``UNDELIVERED``.

        Station Calls still awaiting the CSMS are forgotten (there is no one left to answer).
        Later events on a closed pipe do nothing, except that a CSMS call is still turned into
        ``UNDELIVERED`` so that it is never dropped silently. A retired pipe has nothing left
        to give up.
        """
        previous, self._state = self._state, ConnectionState.CLOSED
        if previous.ended:
            return []
        return self._end(reason)

    def _end(self, reason: str) -> list[Action]:
        actions: list[Action] = []
        current, self._in_flight = self._in_flight, None
        if current is not None:
            actions.append(
                self._outcome(
                    current.call,
                    Kind.UNDELIVERED,
                    sent_at=current.sent_at,
                    error_description=reason,
                )
            )
        while self._queue:
            call = self._queue.pop(0)
            actions.append(self._outcome(call, Kind.UNDELIVERED, error_description=reason))
        self._pending.clear()
        return actions

    # -- message rate --------------------------------------------------------------------

    def _take_token(self, now: float) -> bool:
        rate = self.limits.message_rate
        if rate is None:
            return True
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = TokenBucket(rate, self.limits.message_burst, now)
        return bucket.take(now)

    def _end_breach(self, now: float) -> list[Action]:
        """A breach ends once no frame was refused for ``_BREACH_GAP`` seconds."""
        breach_since = self._breach_since
        if breach_since is None or now - self._last_refused <= _BREACH_GAP:
            return []
        self._breach_since = None
        return [
            Report(
                "info",
                "station back under the message rate limit",
                {
                    "refused": self._refused,
                    "seconds": round(self._last_refused - breach_since, 3),
                },
            )
        ]

    def _over_rate(self, now: float) -> list[Action]:
        """Account for a frame over the rate; a breach lasting too long disconnects."""
        actions: list[Action] = []
        breach_since = self._breach_since
        self._last_refused = now
        if breach_since is None:
            self._breach_since = now
            self._refused = 1
            actions.append(
                Report(
                    "warning",
                    "station over the message rate limit",
                    {"rate": self.limits.message_rate, "burst": self.limits.message_burst},
                )
            )
            return actions
        self._refused += 1
        close_after = self.limits.flood_close_after
        if close_after is not None and now - breach_since >= close_after:
            self._state = ConnectionState.DISCONNECTING
            actions.append(
                Report(
                    "warning",
                    "station flooding: disconnecting",
                    {
                        "refused": self._refused,
                        "seconds": round(now - breach_since, 3),
                        "rate": self.limits.message_rate,
                        "code": CLOSE_POLICY_VIOLATION,
                    },
                )
            )
            actions.append(Disconnect(CLOSE_POLICY_VIOLATION, FLOODING))
        return actions

    def _rate_limited(self, message_id: str, now: float) -> SendToStation:
        """GenericError: neither version has a code for "too many messages"."""
        assert self._bucket is not None
        details = {
            "limit": "messageRate",
            "ratePerSecond": self.limits.message_rate,
            "burst": self.limits.message_burst,
            "retryAfterSeconds": round(self._bucket.wait_time(now), 3),
        }
        return SendToStation(
            rpc.encode_error(
                message_id,
                error_code(self.version, RpcError.GENERIC),
                RATE_LIMITED,
                details,
            )
        )

    # -- station → CSMS ------------------------------------------------------------------

    def _station_call(self, call: rpc.Call, now: float) -> list[Action]:
        if call.message_id in self._pending:
            # A copy of a Call still awaiting its answer: the CSMS has it already, and its one
            # answer (or the pipe's at the first copy's deadline) answers the copy too.
            # Publishing copies would let one socket push unbounded traffic past
            # max_station_calls. Once answered or timed out, the id may be used again.
            return [
                Report(
                    "info",
                    "station repeated a pending call",
                    {"message_id": call.message_id, "action": call.action},
                )
            ]
        if len(self._pending) >= self.limits.max_station_calls:
            return [
                self._error(
                    call.message_id,
                    RpcError.RPC_FRAMEWORK,
                    f"too many unanswered calls (at most {self.limits.max_station_calls}); "
                    "OCPP-J allows one call in flight",
                ),
                Report(
                    "warning", "station exceeded unanswered calls", {"message_id": call.message_id}
                ),
            ]
        self._pending[call.message_id] = now + self.limits.answer_timeout
        return [
            Publish(
                Envelope(
                    kind=Kind.CALL,
                    station=self.station,
                    version=self.version,
                    message_id=call.message_id,
                    action=call.action,
                    payload=call.payload,
                    gateway=self.gateway,
                    connection=self.connection,
                    meta=dict(self.meta),
                    at=self._wall_clock(),
                )
            )
        ]

    def _csms_answer(self, envelope: Envelope) -> list[Action]:
        message_id = envelope.message_id
        if self._state.ended or self._pending.pop(message_id, None) is None:
            return [
                Report(
                    "info",
                    "CSMS answer for no pending call dropped (late or duplicate)",
                    {"message_id": message_id, "kind": str(envelope.kind)},
                )
            ]
        if envelope.kind is Kind.RESULT:
            payload = envelope.payload if envelope.payload is not None else {}
            return [SendToStation(rpc.encode_result(message_id, payload))]
        code = envelope.error_code or error_code(self.version, RpcError.INTERNAL_ERROR)
        return [
            SendToStation(
                rpc.encode_error(
                    message_id,
                    code,
                    envelope.error_description or "",
                    envelope.error_details,
                )
            )
        ]

    # -- CSMS → station ------------------------------------------------------------------

    def _csms_call(self, call: Envelope, now: float) -> list[Action]:
        message_id = call.message_id
        if self._state.ended:
            return [self._outcome(call, Kind.UNDELIVERED, error_description=STATION_DISCONNECTED)]
        if not call.action or not isinstance(call.payload, dict) or not message_id:
            return [
                self._outcome(
                    call,
                    Kind.UNDELIVERED,
                    error_description="invalid call: needs a message id, an action and an "
                    "object payload",
                )
            ]
        if (
            (self._in_flight is not None and self._in_flight.call.message_id == message_id)
            or message_id in self._recent
            or any(queued.message_id == message_id for queued in self._queue)
        ):
            # QoS 1 is at-least-once: a redelivered call must not reach the station twice.
            return [Report("info", "duplicate CSMS call dropped", {"message_id": message_id})]
        if self._in_flight is None:
            actions: list[Action] = []
            self._send(call, now, actions)
            return actions
        if len(self._queue) >= self.limits.call_queue_size:
            return [self._outcome(call, Kind.UNDELIVERED, error_description=QUEUE_FULL)]
        self._queue.append(call)
        return []

    def _station_answer(self, frame: rpc.CallResult | rpc.CallError, now: float) -> list[Action]:
        current = self._in_flight
        if current is None or current.call.message_id != frame.message_id:
            late = frame.message_id in self._recent
            return [
                Report(
                    "warning",
                    "late answer from station dropped"
                    if late
                    else "answer to unknown call dropped",
                    {"message_id": frame.message_id},
                )
            ]
        self._in_flight = None
        self._remember(frame.message_id)
        actions: list[Action] = []
        if isinstance(frame, rpc.CallResult):
            actions.append(
                self._outcome(
                    current.call, Kind.RESULT, sent_at=current.sent_at, payload=frame.payload
                )
            )
        else:
            actions.append(
                self._outcome(
                    current.call,
                    Kind.ERROR,
                    sent_at=current.sent_at,
                    error_code=frame.error_code,
                    error_description=frame.error_description,
                    error_details=frame.error_details,
                )
            )
        self._send_next(now, actions)
        return actions

    def _send(self, call: Envelope, now: float, actions: list[Action]) -> None:
        assert call.action is not None
        self._in_flight = _InFlight(
            call, sent_at=self._wall_clock(), deadline=now + self.limits.call_timeout
        )
        actions.append(SendToStation(rpc.encode_call(call.message_id, call.action, call.payload)))

    def _send_next(self, now: float, actions: list[Action]) -> None:
        if self._queue:
            self._send(self._queue.pop(0), now, actions)

    def _remember(self, message_id: str) -> None:
        self._recent.append(message_id)
        if len(self._recent) > _RECENT_CSMS_IDS:
            del self._recent[0]

    def _outcome(
        self,
        call: Envelope,
        kind: Kind,
        *,
        sent_at: float | None = None,
        payload: Any = None,
        error_code: str | None = None,
        error_description: str | None = None,
        error_details: Any = None,
    ) -> Publish:
        """The envelope telling a CSMS call's originator what became of it."""
        request = OriginalCall(
            message_id=call.message_id,
            action=call.action or "",
            payload=call.payload if isinstance(call.payload, dict) else {},
            meta=call.meta,
            sent_at=sent_at,
        )
        envelope = Envelope(
            kind=kind,
            station=self.station,
            version=self.version,
            message_id=call.message_id,
            action=call.action,
            payload=payload,
            error_code=error_code,
            error_description=error_description,
            error_details=error_details,
            request=request,
            meta=call.meta,
            gateway=self.gateway,
            connection=self.connection,
            at=self._wall_clock(),
        )
        return Publish(envelope, call.reply_to)

    # -- framing faults ------------------------------------------------------------------

    def _error(self, message_id: str, error: RpcError, description: str) -> SendToStation:
        return SendToStation(
            rpc.encode_error(message_id, error_code(self.version, error), description)
        )

    def _fault(self, fault: rpc.FrameFault) -> list[Action]:
        fields: dict[str, Any] = {"error": fault.error.value, "description": fault.description}
        if fault.message_id is not None:
            fields["message_id"] = fault.message_id
        if not fault.answerable:
            return [Report("warning", "malformed answer frame dropped", fields)]
        message_id = fault.message_id or rpc.UNKNOWN_MESSAGE_ID
        return [
            self._error(message_id, fault.error, fault.description),
            Report("warning", "malformed frame rejected", fields),
        ]

    def _binary(self, data: bytes) -> list[Action]:
        """OCPP-J frames are text; say so, and use the frame's id when it can be read."""
        description = "binary frame: OCPP-J messages must be sent as text frames"
        try:
            frame = rpc.parse_frame(data)
        except rpc.FrameFault as fault:
            message_id, answerable = fault.message_id, fault.answerable
        else:
            message_id, answerable = frame.message_id, isinstance(frame, rpc.Call)
        return self._fault(
            rpc.FrameFault(RpcError.RPC_FRAMEWORK, description, message_id, answerable)
        )

    def _oversized(self, data: str | bytes, size: int) -> list[Action]:
        """Too large to parse: answer a Call whose head is readable with FormatViolation.

        OCPP 2.0.1 answers messages over a size limit with FormatViolation (1.6:
        FormationViolation). Only the head is examined, so the cost stays bounded.
        """
        type_id, message_id = rpc.read_head(data)
        description = f"frame of {size} bytes exceeds the limit of {self.limits.max_frame_bytes}"
        answerable = type_id not in (rpc.MessageType.CALL_RESULT, rpc.MessageType.CALL_ERROR)
        return self._fault(
            rpc.FrameFault(RpcError.FORMAT_VIOLATION, description, message_id, answerable)
        )
