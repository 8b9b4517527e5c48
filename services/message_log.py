"""The OCPP message log: every frame of every station, both directions, for debugging.

The managers see every frame that reaches the bus: a station's Call and the answer they
publish for it, and each CSMS call with the station's answer (or the gateway's timeout or
undelivered outcome), which the gateway publishes on the shared ``in`` topic with the
original call attached. Each becomes a :class:`LogEntry`: when, which direction (``in`` from
the station, ``out`` to it), the frame type, action, message id, the payload (secrets
redacted by :func:`services.call_records.redact_frame`) or the error, and for answers what
became of them (:class:`Handling`). Frames the gateway refuses before they reach the bus
(malformed JSON, a wrong frame shape) are not in it.

Recording is off the hot path: :meth:`MessageLog.record` never waits, never raises and
never fails a station's message. The in-memory log (:class:`MemoryMessageLog`, the embedded
default) stores at once; :mod:`services.redis_message_log` buffers in the process and writes
in batches, one pipelined round trip per flush. Both are bounded per station
(``message_log_max_per_station``) and by age (``message_log_max_age``).

Entry ids are ``<ms>-<seq>`` (Redis stream ids; the same shape in memory) and order a
station's entries as they were written. A CSMS call is written when its outcome arrives, so
its ``at`` (when the gateway sent it) may be earlier than entries written before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from csms.envelope import Envelope, Kind
from csms.probes import LATENCY_BUCKETS, Cell, HistogramCell
from services import rules
from services.call_records import might_hold_secret, redact_frame
from services.models import Page

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_PER_STATION",
    "DROP_REASONS",
    "MAX_TOTAL",
    "MESSAGE_CURSOR",
    "Direction",
    "Follower",
    "FrameType",
    "Handling",
    "LogEntry",
    "MemoryMessageLog",
    "MessageLog",
    "MessageLogCells",
    "MessageQuery",
    "NullMessageLog",
    "answer_entry",
    "call_entry",
    "decode_entry",
    "encode_entry",
    "entry_id",
    "message_query",
    "outcome_entries",
]

DEFAULT_MAX_PER_STATION = 1000
"""Entries kept per station by default (``message_log_max_per_station``)."""
DEFAULT_MAX_AGE = 7 * 86_400
"""Seconds an entry is kept at most by default (``message_log_max_age``)."""
MAX_TOTAL = 200_000
"""Entries the in-memory log holds in all; beyond it the oldest go first."""
FOLLOW_QUEUE = 1000
"""Entries waiting for one follower; a follower that reads slower loses the oldest."""
MESSAGE_CURSOR = "messages"
DROP_REASONS = ("buffer_full", "flush_failed")
"""Why entries were lost before they were stored."""


class Direction(enum.StrEnum):
    IN = "in"
    """From the station (or, for timeout / undelivered, the gateway's word about it)."""
    OUT = "out"
    """To the station."""


class FrameType(enum.StrEnum):
    CALL = "call"
    RESULT = "result"
    ERROR = "error"
    TIMEOUT = "timeout"
    """The station did not answer a CSMS call within ``call_timeout`` (gateway-made)."""
    UNDELIVERED = "undelivered"
    """The gateway could not send a CSMS call (queue full, connection closed or replaced)."""


class Handling(enum.StrEnum):
    """What became of an answer (``outcome`` of the entry)."""

    ANSWERED = "answered"
    """The handler's CallResult, published to the station."""
    REPLAYED = "replayed"
    """A repeated Call answered from the idempotency store."""
    REFUSED = "refused"
    """A CallError other than InternalError (unknown action, schema, the handler's refusal)."""
    FAILED = "failed"
    """An InternalError (a store outage, a handler bug)."""
    UNPUBLISHED = "unpublished"
    """The bus would not take the answer: the gateway answers the station itself."""
    SENT = "sent"
    """A CSMS call the gateway wrote to the station's socket."""
    NOT_SENT = "not_sent"
    """A CSMS call the gateway never wrote (undelivered)."""
    HANDLED = "handled"
    """A station's answer to a CSMS call that a result handler applied."""
    NOT_HANDLED = "not_handled"
    """An answer no result handler applied (none for the action, or it failed: logged)."""


_NONE = msgspec.Raw()
"""An absent payload (an empty Raw: msgspec decodes no ``Raw | None`` union)."""


class LogEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One frame of one station."""

    id: str = ""
    """Assigned when stored: ``<ms>-<seq>``, in write order per station."""
    station_id: str
    version: str
    at: float
    """Unix time: when the gateway received the frame, the manager published the answer, or
    the gateway sent the CSMS call (else made the outcome)."""
    direction: Direction
    type: FrameType
    action: str | None = None
    message_id: str
    payload: msgspec.Raw = _NONE
    """The payload's JSON, secrets redacted (empty: none)."""
    error_code: str | None = None
    error_description: str | None = None
    error_details: msgspec.Raw = _NONE
    outcome: Handling | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LogEntry)


def encode_entry(entry: LogEntry) -> bytes:
    return _encoder.encode(entry)


def decode_entry(data: bytes, entry_id: str = "") -> LogEntry:
    entry = _decoder.decode(data)
    return msgspec.structs.replace(entry, id=entry_id) if entry_id else entry


def _clean(action: str | None, payload: Any, *, answer: bool) -> msgspec.Raw:
    """The payload's JSON as the log keeps it: encoded once, walked for secrets only when
    the cheap test says it might hold one."""
    if payload is None:
        return _NONE
    try:
        encoded = _encoder.encode(payload)
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError):
        return msgspec.Raw(_encoder.encode(repr(payload)))
    if might_hold_secret(action, encoded):
        cleaned = redact_frame(action, payload, answer=answer)
        if cleaned is not payload:
            encoded = _encoder.encode(cleaned)
    return msgspec.Raw(encoded)


def call_entry(call: Envelope) -> LogEntry:
    """A station's Call, as the manager received it."""
    return LogEntry(
        station_id=call.station,
        version=call.version,
        at=call.at or time.time(),
        direction=Direction.IN,
        type=FrameType.CALL,
        action=call.action,
        message_id=call.message_id,
        payload=_clean(call.action, call.payload, answer=False),
    )


def _error_details(details: Any) -> msgspec.Raw:
    return _clean(None, details, answer=True)


def answer_entry(answer: Envelope, *, replayed: bool, published: bool) -> LogEntry:
    """The manager's answer to a station Call (CallResult or CallError)."""
    if not published:
        outcome = Handling.UNPUBLISHED
    elif replayed:
        outcome = Handling.REPLAYED
    elif answer.kind is Kind.RESULT:
        outcome = Handling.ANSWERED
    elif answer.error_code == "InternalError":
        outcome = Handling.FAILED
    else:
        outcome = Handling.REFUSED
    result = answer.kind is Kind.RESULT
    return LogEntry(
        station_id=answer.station,
        version=answer.version,
        at=time.time(),
        direction=Direction.OUT,
        type=FrameType.RESULT if result else FrameType.ERROR,
        action=answer.action,
        message_id=answer.message_id,
        payload=_clean(answer.action, answer.payload, answer=True) if result else _NONE,
        error_code=answer.error_code,
        error_description=answer.error_description,
        error_details=_error_details(answer.error_details),
        outcome=outcome,
    )


_TYPES = {
    Kind.RESULT: FrameType.RESULT,
    Kind.ERROR: FrameType.ERROR,
    Kind.TIMEOUT: FrameType.TIMEOUT,
    Kind.UNDELIVERED: FrameType.UNDELIVERED,
}


def outcome_entries(outcome: Envelope, *, handled: bool) -> list[LogEntry]:
    """A CSMS call's outcome as the gateway published it: the call (from the original call
    attached) and the station's answer, or the gateway's timeout / undelivered."""
    frame_type = _TYPES.get(outcome.kind)
    if frame_type is None:
        return []
    request = outcome.request
    action = request.action if request is not None else outcome.action
    entries: list[LogEntry] = []
    if request is not None:
        entries.append(
            LogEntry(
                station_id=outcome.station,
                version=outcome.version,
                at=request.sent_at or outcome.at or time.time(),
                direction=Direction.OUT,
                type=FrameType.CALL,
                action=request.action,
                message_id=request.message_id,
                payload=_clean(request.action, request.payload, answer=False),
                outcome=Handling.SENT if request.sent_at is not None else Handling.NOT_SENT,
            )
        )
    entries.append(
        LogEntry(
            station_id=outcome.station,
            version=outcome.version,
            at=outcome.at or time.time(),
            direction=Direction.IN,
            type=frame_type,
            action=action,
            message_id=request.message_id if request is not None else outcome.message_id,
            payload=_clean(action, outcome.payload, answer=True)
            if frame_type is FrameType.RESULT
            else _NONE,
            error_code=outcome.error_code,
            error_description=outcome.error_description,
            error_details=_error_details(outcome.error_details),
            outcome=Handling.HANDLED if handled else Handling.NOT_HANDLED,
        )
    )
    return entries


# --- ids and queries -------------------------------------------------------------------------


def entry_id(value: str) -> tuple[int, int]:
    """``<ms>-<seq>`` as numbers (``ValueError`` for anything else)."""
    ms, _, seq = value.partition("-")
    parsed = (int(ms), int(seq or 0))
    if parsed[0] < 0 or parsed[1] < 0:
        raise ValueError(f"not an entry id: {value!r}")
    return parsed


Order = Literal["desc", "asc"]


@dataclass(frozen=True, slots=True)
class MessageQuery:
    """A checked listing of one station's entries."""

    limit: int
    order: Order = "desc"
    after: tuple[int, int] | None = None
    """The last entry of the previous page (exclusive), in listing order."""
    since: float | None = None
    until: float | None = None
    action: str | None = None
    direction: Direction | None = None

    def matches(self, entry: LogEntry) -> bool:
        """Times compare in whole milliseconds, as the API shows them: an entry shown at
        ``T`` is found by ``since=T`` and by ``until=T``."""
        at = int(entry.at * 1000)
        return (
            (self.since is None or at >= round(self.since * 1000))
            and (self.until is None or at <= round(self.until * 1000))
            and (self.action is None or entry.action == self.action)
            and (self.direction is None or entry.direction is self.direction)
        )

    def wants(self, entry: LogEntry) -> bool:
        """A followed entry passes the filters (times do not apply to following)."""
        return (self.action is None or entry.action == self.action) and (
            self.direction is None or entry.direction is self.direction
        )


def message_query(
    *,
    cursor: str | None = None,
    limit: int = 100,
    order: str = "desc",
    since: float | None = None,
    until: float | None = None,
    action: str | None = None,
    direction: Direction | str | None = None,
) -> MessageQuery:
    """Validate the arguments of ``list_messages`` (``ValueError`` for a bad one)."""
    if order not in ("desc", "asc"):
        raise ValueError(f"order must be desc or asc, not {order!r}")
    after = None
    if cursor is not None:
        try:
            after = entry_id(rules.decode_cursor(MESSAGE_CURSOR, cursor))
        except ValueError:
            raise ValueError("invalid cursor") from None
    return MessageQuery(
        limit=rules.check_limit(limit),
        order="asc" if order == "asc" else "desc",
        after=after,
        since=since,
        until=until,
        action=action or None,
        direction=Direction(direction) if direction is not None else None,
    )


def page_of(entries: list[LogEntry], limit: int) -> Page[LogEntry]:
    """Up to ``limit`` of ``entries`` (one more: more follow)."""
    return rules.page_of(entries, limit, lambda entry: entry.id, MESSAGE_CURSOR)


# --- metrics -------------------------------------------------------------------------------


@dataclass(slots=True)
class MessageLogCells:
    """What a log counts: entries stored, entries lost by reason, time per flush. A manager
    hands its own cells (:meth:`MessageLog.count_into`) so its ``/metrics`` shows them."""

    written: Cell = field(default_factory=Cell)
    dropped: dict[str, Cell] = field(
        default_factory=lambda: {reason: Cell() for reason in DROP_REASONS}
    )
    flush_seconds: HistogramCell = field(default_factory=lambda: HistogramCell(LATENCY_BUCKETS))


# --- following -------------------------------------------------------------------------------


class Follower:
    """New entries of one station as they are written (:meth:`MessageLog.follow`)."""

    def __init__(self, station_id: str, size: int = FOLLOW_QUEUE) -> None:
        self.station_id = station_id
        self.lost = 0
        """Entries dropped because this follower read too slowly."""
        self._queue: asyncio.Queue[LogEntry] = asyncio.Queue(size)

    def push(self, entry: LogEntry) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.lost += 1
        self._queue.put_nowait(entry)

    async def get(self, wait: float) -> LogEntry | None:
        """The next entry, or None when none came within ``wait`` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), wait)
        except TimeoutError:
            return None


# --- the interface ---------------------------------------------------------------------------


@runtime_checkable
class MessageLog(Protocol):
    """Where the frames go (the managers record, the API reads)."""

    @property
    def enabled(self) -> bool:
        """False when the log is off (setting ``message_log``): nothing is kept."""
        ...

    def record(self, entry: LogEntry) -> None:
        """Keep ``entry``; never waits, never raises."""
        ...

    def record_all(self, entries: Iterable[LogEntry]) -> None:
        """Keep each of ``entries``, in order."""
        ...

    async def list_messages(
        self,
        station_id: str,
        *,
        cursor: str | None = None,
        limit: int = 100,
        order: str = "desc",
        since: float | None = None,
        until: float | None = None,
        action: str | None = None,
        direction: Direction | None = None,
    ) -> Page[LogEntry]:
        """The station's entries, newest first (``order="asc"``: oldest first), filtered;
        ``ValueError`` for a bad cursor, limit or order."""
        ...

    def follow(self, station_id: str) -> AbstractAsyncContextManager[Follower]:
        """Entries of ``station_id`` written from now on, while the context is open."""
        ...

    def count_into(self, cells: MessageLogCells) -> None:
        """Count from now on into ``cells`` (a manager's metrics)."""
        ...

    async def aclose(self) -> None:
        """Store what is buffered and stop background work."""
        ...


class NullMessageLog:
    """The log when it is off: keeps nothing."""

    enabled = False

    def __init__(self) -> None:
        self.cells = MessageLogCells()

    def record(self, entry: LogEntry) -> None:
        return None

    def record_all(self, entries: Iterable[LogEntry]) -> None:
        return None

    async def list_messages(
        self,
        station_id: str,
        *,
        cursor: str | None = None,
        limit: int = 100,
        order: str = "desc",
        since: float | None = None,
        until: float | None = None,
        action: str | None = None,
        direction: Direction | None = None,
    ) -> Page[LogEntry]:
        message_query(cursor=cursor, limit=limit, order=order)
        return Page(items=[])

    @contextlib.asynccontextmanager
    async def follow(self, station_id: str) -> AsyncIterator[Follower]:
        yield Follower(station_id, 1)

    def count_into(self, cells: MessageLogCells) -> None:
        self.cells = cells

    async def aclose(self) -> None:
        return None


# --- in memory -------------------------------------------------------------------------------


class MemoryMessageLog:
    """:class:`MessageLog` in the process (embedded default, tests): at most
    ``max_per_station`` entries per station and ``max_total`` in all (the oldest go first),
    none older than ``max_age`` seconds (0: no age limit) of ``clock`` (Unix time)."""

    enabled = True

    def __init__(
        self,
        *,
        max_per_station: int = DEFAULT_MAX_PER_STATION,
        max_age: float = DEFAULT_MAX_AGE,
        max_total: int = MAX_TOTAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_per_station = max_per_station
        self._max_age = max_age
        self._max_total = max_total
        self._clock = clock
        self._stations: dict[str, deque[LogEntry]] = {}
        self._order: deque[tuple[str, str]] = deque()
        """(station, id) of every entry in write order; some may be gone already."""
        self._total = 0
        self._last = (0, 0)
        self._followers: dict[str, set[Follower]] = {}
        self.cells = MessageLogCells()

    def __len__(self) -> int:
        return self._total

    def _next_id(self) -> str:
        ms = int(self._clock() * 1000)
        last_ms, seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, seq + 1)
        return f"{self._last[0]}-{self._last[1]}"

    def record(self, entry: LogEntry) -> None:
        stored = msgspec.structs.replace(entry, id=self._next_id())
        entries = self._stations.get(entry.station_id)
        if entries is None:
            entries = self._stations[entry.station_id] = deque()
        entries.append(stored)
        self._order.append((entry.station_id, stored.id))
        self._total += 1
        if len(entries) > self._max_per_station:
            entries.popleft()
            self._total -= 1
        self._expire(entries)
        while self._total > self._max_total:
            self._forget_oldest()
        if len(self._order) > 2 * self._max_total:
            self._compact()
        self.cells.written.inc()
        for follower in self._followers.get(entry.station_id, ()):
            follower.push(stored)

    def record_all(self, entries: Iterable[LogEntry]) -> None:
        for entry in entries:
            self.record(entry)

    def _expire(self, entries: deque[LogEntry]) -> None:
        if self._max_age <= 0:
            return
        cutoff = self._clock() - self._max_age
        while entries and entries[0].at < cutoff:
            entries.popleft()
            self._total -= 1

    def _forget_oldest(self) -> None:
        station_id, oldest = self._order.popleft()
        entries = self._stations.get(station_id)
        if entries and entries[0].id == oldest:
            entries.popleft()
            self._total -= 1
            if not entries:
                del self._stations[station_id]

    def _compact(self) -> None:
        """Drop the order's references to entries already gone (bounded memory)."""
        kept = {(station, e.id) for station, entries in self._stations.items() for e in entries}
        self._order = deque(item for item in self._order if item in kept)

    async def list_messages(
        self,
        station_id: str,
        *,
        cursor: str | None = None,
        limit: int = 100,
        order: str = "desc",
        since: float | None = None,
        until: float | None = None,
        action: str | None = None,
        direction: Direction | None = None,
    ) -> Page[LogEntry]:
        query = message_query(
            cursor=cursor,
            limit=limit,
            order=order,
            since=since,
            until=until,
            action=action,
            direction=direction,
        )
        entries = self._stations.get(station_id)
        if entries is not None:
            self._expire(entries)
        ordered = list(entries or ())
        if query.order == "desc":
            ordered.reverse()
        found: list[LogEntry] = []
        for entry in ordered:
            if query.after is not None:
                position = entry_id(entry.id)
                if (position <= query.after) if query.order == "asc" else (position >= query.after):
                    continue
            if query.matches(entry):
                found.append(entry)
                if len(found) > query.limit:
                    break
        return page_of(found, query.limit)

    @contextlib.asynccontextmanager
    async def follow(self, station_id: str) -> AsyncIterator[Follower]:
        follower = Follower(station_id)
        self._followers.setdefault(station_id, set()).add(follower)
        try:
            yield follower
        finally:
            followers = self._followers.get(station_id)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[station_id]

    def count_into(self, cells: MessageLogCells) -> None:
        self.cells = cells

    async def aclose(self) -> None:
        return None


def iso_time(at: float) -> str:
    """Unix time as the API writes times (ISO 8601 UTC, milliseconds, ``Z``)."""
    moment = dt.datetime.fromtimestamp(at, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
