"""State-change events: what an operator cares about, in one versioned schema, in one log.

The managers append an :class:`Event` whenever something changes (a station connected, a
connector's status, a transaction started, a CSMS call's outcome, ...); everything that
consumes events reads the same ordered log: the live stream of the API
(``GET /v1/events``, Server-Sent Events, resumable by ``Last-Event-ID``) and the webhook
dispatcher (which keeps its position as a named cursor, so no event is skipped when it
restarts).

Ids are opaque strings that sort in append order (Redis stream ids ``<ms>-<seq>`` in the
Redis store, the same shape in memory), so "everything after id X" is exact across API
replicas and restarts. The log is bounded: the oldest events go first once it holds
``max_events`` (setting ``event_retention``); a reader resuming from an id older than the
oldest kept learns it from :attr:`EventPage.truncated`.

An event is appended **before** the message that caused it is acknowledged: a manager that
dies right after appending loses nothing, and one that dies before appending is redelivered
the message (idempotency then answers the station from the stored answer, and the event
may be appended once more; consumers deduplicate on the event's ``key`` where it matters).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = [
    "EVENT_SCHEMA_VERSION",
    "Event",
    "EventKind",
    "EventLog",
    "EventPage",
    "MemoryEventLog",
    "event_id_after",
    "event_of",
    "utc_now",
]

EVENT_SCHEMA_VERSION = 1
"""Version of the event schema (``v`` of every event); bumped on an incompatible change."""


class EventKind(enum.StrEnum):
    """Every kind of event. Webhook subscriptions and stream filters name these (``*`` is
    all); docs/events.md documents the ``data`` of each."""

    STATION_CONNECTED = "station.connected"
    STATION_DISCONNECTED = "station.disconnected"
    STATION_BOOTED = "station.booted"
    CONNECTOR_STATUS = "connector.status"
    TRANSACTION_STARTED = "transaction.started"
    TRANSACTION_UPDATED = "transaction.updated"
    TRANSACTION_ENDED = "transaction.ended"
    AUTHORIZATION_REFUSED = "authorization.refused"
    SECURITY_EVENT = "security.event"
    STATION_SECURITY_PROFILE_RAISED = "station.security_profile_raised"
    FIRMWARE_STATUS = "firmware.status"
    LOG_STATUS = "log.status"
    DIAGNOSTICS_STATUS = "diagnostics.status"
    CALL_OUTCOME = "call.outcome"


class Event(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One state change. ``id`` is given by the log when the event is appended."""

    kind: str
    """An :class:`EventKind` value."""
    at: str
    """When it happened (ISO 8601 UTC), as the station or the CSMS reported it."""
    station_id: str | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    """Kind-specific facts (docs/events.md)."""
    key: str | None = None
    """What makes this event unique (e.g. ``<station>:<tx>:ended``) when a redelivered
    message may append it twice; consumers may deduplicate on it."""
    id: str = ""
    v: int = EVENT_SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[Event]
    """Oldest first."""
    last_id: str | None
    """Id of the last event returned, or the cursor given when there were none."""
    truncated: bool = False
    """The cursor was older than the oldest event kept: events in between are gone."""


def utc_now() -> str:
    """Now as events write it: ISO 8601 UTC with a ``Z``, millisecond precision."""
    moment = dt.datetime.now(dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parts(event_id: str) -> tuple[int, int]:
    millis, _, seq = event_id.partition("-")
    return int(millis), int(seq or 0)


def event_id_after(a: str, b: str | None) -> bool:
    """True when id ``a`` comes after cursor ``b`` (None or empty: before everything)."""
    if not b:
        return True
    return _parts(a) > _parts(b)


def _matches(event: Event, kinds: frozenset[str] | None, station_id: str | None) -> bool:
    if kinds is not None and event.kind not in kinds:
        return False
    return station_id is None or event.station_id == station_id


@runtime_checkable
class EventLog(Protocol):
    """The ordered, bounded log of events (memory, or a Redis stream)."""

    async def append(self, event: Event) -> Event:
        """Append ``event``; returns it with its ``id``. Raises ``StoreUnavailable``."""
        ...

    async def read(
        self,
        after: str | None = None,
        *,
        limit: int = 100,
        kinds: frozenset[str] | None = None,
        station_id: str | None = None,
    ) -> EventPage:
        """Events after cursor ``after`` (None: from the oldest kept), oldest first, at most
        ``limit``, filtered by kind and station. ``last_id`` is the position to read on from
        (past filtered-out events too, so a filtered reader never rereads them)."""
        ...

    async def wait(
        self,
        after: str | None,
        timeout: float,  # noqa: ASYNC109 (a long poll's deadline is its point)
        *,
        limit: int = 100,
        kinds: frozenset[str] | None = None,
        station_id: str | None = None,
    ) -> EventPage:
        """Like :meth:`read`, but when nothing matches yet wait up to ``timeout`` seconds
        for events to be appended (a long poll; the live stream's loop)."""
        ...

    async def latest_id(self) -> str | None:
        """Id of the newest event kept (a new live reader starts after it)."""
        ...

    async def get_cursor(self, name: str) -> str | None:
        """A consumer's saved position (e.g. the webhook dispatcher's)."""
        ...

    async def set_cursor(self, name: str, event_id: str) -> None: ...


@dataclass(slots=True)
class MemoryEventLog:
    """The embedded default: a bounded deque, ids from the wall clock like Redis's."""

    max_events: int = 10_000
    _events: deque[Event] = field(init=False)
    _cursors: dict[str, str] = field(default_factory=dict)
    _changed: asyncio.Event | None = None
    _last: tuple[int, int] = (0, 0)
    _dropped_through: str | None = None

    def __post_init__(self) -> None:
        self._events = deque()

    def _next_id(self) -> str:
        millis = int(time.time() * 1000)
        last_millis, last_seq = self._last
        self._last = (millis, 0) if millis > last_millis else (last_millis, last_seq + 1)
        return f"{self._last[0]}-{self._last[1]}"

    async def append(self, event: Event) -> Event:
        stored = msgspec.structs.replace(event, id=self._next_id())
        self._events.append(stored)
        while len(self._events) > self.max_events:
            self._dropped_through = self._events.popleft().id
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        return stored

    async def read(
        self,
        after: str | None = None,
        *,
        limit: int = 100,
        kinds: frozenset[str] | None = None,
        station_id: str | None = None,
    ) -> EventPage:
        dropped = self._dropped_through
        truncated = bool(after and dropped and event_id_after(dropped, after))
        found: list[Event] = []
        last = after
        for event in self._events:
            if not event_id_after(event.id, after):
                continue
            last = event.id
            if _matches(event, kinds, station_id):
                found.append(event)
                if len(found) >= limit:
                    break
        return EventPage(found, last, truncated)

    async def wait(
        self,
        after: str | None,
        timeout: float,  # noqa: ASYNC109
        *,
        limit: int = 100,
        kinds: frozenset[str] | None = None,
        station_id: str | None = None,
    ) -> EventPage:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            page = await self.read(after, limit=limit, kinds=kinds, station_id=station_id)
            left = deadline - asyncio.get_running_loop().time()
            if page.events or left <= 0:
                return page
            after = page.last_id
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                async with asyncio.timeout(left):
                    await self._changed.wait()
            except TimeoutError:
                return EventPage([], after, page.truncated)

    async def latest_id(self) -> str | None:
        return self._events[-1].id if self._events else None

    async def get_cursor(self, name: str) -> str | None:
        return self._cursors.get(name)

    async def set_cursor(self, name: str, event_id: str) -> None:
        self._cursors[name] = event_id


def event_of(
    kind: EventKind,
    at: str,
    station_id: str | None,
    data: Mapping[str, Any],
    key: str | None = None,
) -> Event:
    """An event to append (the log gives it its id)."""
    return Event(kind=kind.value, at=at, station_id=station_id, data=dict(data), key=key)
