"""The event log in Redis: one stream shared by every manager and API replica.

Keys (``{p}`` is the store prefix)::

    {p}events           stream; each entry one field ``e``, the event (msgspec JSON, no id)
    {p}event-cursors    hash: consumer name -> the id it has read through

Ids are the stream ids (``<ms>-<seq>``, given by Redis), so every replica sees one order.
``XADD ... MAXLEN ~ max_events`` bounds it; the ``~`` lets Redis trim whole nodes (cheap),
so a little more than ``max_events`` may be kept. Below :data:`EXACT_TRIM_BELOW` events
trimming is exact (a node holds about a hundred entries, so ``~`` would not trim at all).

An event a station Call causes is written with the Call's other writes: with
``in_calls=True`` (what ``open_services`` sets unless ``events_to_mqtt`` needs the id at
once), :meth:`RedisEventLog.append` inside the Call's unit of work
(:class:`~services.redis_store.RedisCallUnit`) queues the XADD on the unit, so it is in the
same APPLY script as the state change and the stored answer: the event is in the stream if
and only if the state change is stored, with no round trip of its own. The event then comes
back without its id (``""``), which only the stream gives, at that APPLY. Outside a Call the
XADD is sent at once.

Long polls share one reader: the first :meth:`RedisEventLog.wait` of a process starts a
poller task that blocks in ``XREAD BLOCK`` on one pooled connection and wakes every waiter
of the process when entries arrive; the waiters then read what they need with ``XRANGE``.
However many live streams an API replica serves, it holds one blocked connection, and none
once nobody waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services.events import Event, EventPage, _matches, event_id_after
from services.redis_store import DEFAULT_PREFIX, _guard, current_unit
from services.resp import RespClient

__all__ = ["BLOCK_MS", "EXACT_TRIM_BELOW", "SCAN_LIMIT", "RedisEventLog"]

_log = structlog.get_logger("services.redis_events")

BLOCK_MS = 1000
"""How long the poller's XREAD blocks (below the client's socket timeout)."""
EXACT_TRIM_BELOW = 1000
"""Retention below this is trimmed exactly, above it approximately (``MAXLEN ~``)."""
SCAN_LIMIT = 1000
"""Entries one filtered read looks at, at most; ``last_id`` then says where it stopped."""
_FIELD = b"e"
_RETRY_PAUSE = 1.0

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _event(entry_id: bytes | str, fields: dict[Any, Any]) -> Event:
    raw = fields.get(_FIELD)
    if raw is None:
        raw = fields.get(_FIELD.decode(), b"{}")
    return msgspec.structs.replace(_decoder.decode(raw), id=_text(entry_id))


class RedisEventLog:
    """:class:`~services.events.EventLog` as a Redis stream; failures raise
    StoreUnavailable. :meth:`aclose` stops the poller (``open_services`` calls it)."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        max_events: int = 100_000,
        fast: RespClient | None = None,
        in_calls: bool = False,
    ) -> None:
        self.client = client
        self.fast = fast
        """Appends go through it when set (the hot path), reads and XREAD stay on ``client``."""
        self.in_calls = in_calls
        """Queue a Call's events on its unit of work (see the module docstring)."""
        self.prefix = prefix
        self.max_events = max_events
        self._key = f"{prefix}events"
        self._cursors = f"{prefix}event-cursors"
        self._wake = asyncio.Event()
        self._waiters = 0
        self._poller: asyncio.Task[None] | None = None

    # -- writing ----------------------------------------------------------------------------

    def _xadd(self, body: bytes) -> tuple[bytes | int, ...]:
        """XADD's arguments after the key: the retention bound, ``*``, the event."""
        trim = b"~" if self.max_events >= EXACT_TRIM_BELOW else b"="
        return (b"MAXLEN", trim, self.max_events, b"*", _FIELD, body)

    async def append(self, event: Event) -> Event:
        body = _encoder.encode(msgspec.structs.replace(event, id=""))
        if self.in_calls:
            unit = current_unit(self.client)
            if unit is not None:
                unit.hold([("XADD", self._key, self._xadd(body))])
                return msgspec.structs.replace(event, id="")
        with _guard(self.client, "append event"):
            if self.fast is not None:
                entry_id = await self.fast.execute(b"XADD", self._key, *self._xadd(body))
            else:
                entry_id = await self.client.xadd(
                    self._key,
                    {_FIELD: body},
                    maxlen=self.max_events,
                    approximate=self.max_events >= EXACT_TRIM_BELOW,
                )
        return msgspec.structs.replace(event, id=_text(entry_id))

    # -- reading ----------------------------------------------------------------------------

    async def read(
        self,
        after: str | None = None,
        *,
        limit: int = 100,
        kinds: frozenset[str] | None = None,
        station_id: str | None = None,
    ) -> EventPage:
        found: list[Event] = []
        last = after
        truncated = False
        scanned = 0
        batch = limit if kinds is None and station_id is None else max(limit, 100)
        with _guard(self.client, "read events"):
            while scanned < SCAN_LIMIT:
                start = f"({last}" if last else "-"
                if scanned == 0 and after:
                    async with self.client.pipeline(transaction=False) as pipe:
                        pipe.xrange(self._key, start, "+", count=batch)
                        pipe.xinfo_stream(self._key)
                        entries, info = await pipe.execute(raise_on_error=False)
                    if isinstance(entries, Exception):
                        raise entries
                    truncated = self._truncated(info, after)
                else:
                    entries = await self.client.xrange(self._key, start, "+", count=batch)
                scanned += len(entries)
                for entry_id, fields in entries:
                    event = _event(entry_id, fields)
                    last = event.id
                    if _matches(event, kinds, station_id):
                        found.append(event)
                        if len(found) >= limit:
                            return EventPage(found, last, truncated)
                if len(entries) < batch:
                    break
        return EventPage(found, last, truncated)

    @staticmethod
    def _truncated(info: Any, after: str) -> bool:
        """Whether entries after ``after`` were trimmed: some were (entries added exceed the
        length) and the oldest kept is later than the cursor."""
        if isinstance(info, Exception) or not isinstance(info, dict):
            return False  # no stream yet (XINFO on a missing key fails)
        values = {_text(k): v for k, v in info.items()}
        first = values.get("first-entry")
        if not first:
            return False
        added = int(values.get("entries-added") or 0)
        if added <= int(values.get("length") or 0):
            return False
        return event_id_after(_text(first[0]), after)

    async def wait(
        self,
        after: str | None,
        timeout: float,  # noqa: ASYNC109
        *,
        limit: int = 100,
        kinds: frozenset[str] | None = None,
        station_id: str | None = None,
    ) -> EventPage:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        truncated: bool | None = None
        self._waiters += 1
        try:
            while True:
                # Taken before reading: an entry the read misses sets this very event.
                wake = self._wake
                page = await self.read(after, limit=limit, kinds=kinds, station_id=station_id)
                if truncated is None:
                    truncated = page.truncated
                left = deadline - loop.time()
                if page.events or left <= 0:
                    return EventPage(page.events, page.last_id, truncated)
                after = page.last_id
                self._ensure_poller(after)
                try:
                    async with asyncio.timeout(left):
                        await wake.wait()
                except TimeoutError:
                    return EventPage([], after, truncated)
        finally:
            self._waiters -= 1

    def _ensure_poller(self, position: str | None) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(
                self._poll(position or "0-0"), name=f"event-poller:{self._key}"
            )

    async def _poll(self, position: str) -> None:
        """Block in XREAD from ``position``; wake every waiter when entries arrive. Ends
        once nobody waits (the next wait starts it again)."""
        while self._waiters > 0:
            try:
                answer: Any = await self.client.xread(
                    {self._key: position}, count=100, block=BLOCK_MS
                )
            except (RedisError, OSError) as exc:
                _log.warning("event poller: redis unavailable", error=str(exc))
                await asyncio.sleep(_RETRY_PAUSE)
                continue
            entries: Any = answer[0][1] if answer else None  # [[key, [(id, fields), ...]]]
            if entries:
                position = _text(entries[-1][0])
                woken, self._wake = self._wake, asyncio.Event()
                woken.set()

    async def latest_id(self) -> str | None:
        with _guard(self.client, "latest event id"):
            newest = await self.client.xrevrange(self._key, "+", "-", count=1)
        return _text(newest[0][0]) if newest and newest[0][0] is not None else None

    # -- cursors ----------------------------------------------------------------------------

    async def get_cursor(self, name: str) -> str | None:
        with _guard(self.client, "get event cursor"):
            raw = await self.client.hget(self._cursors, name)
        return _text(raw) if raw is not None else None

    async def set_cursor(self, name: str, event_id: str) -> None:
        with _guard(self.client, "set event cursor"):
            await self.client.hset(self._cursors, name, event_id)

    async def aclose(self) -> None:
        """Stop the poller (before the client closes)."""
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await poller
        woken, self._wake = self._wake, asyncio.Event()
        woken.set()
