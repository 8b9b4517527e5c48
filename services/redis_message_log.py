"""The message log on Redis: one stream per station, written in batches off the hot path.

Keys (``{p}`` is the store prefix, the station id percent-encoded)::

    {p}msglog:{<station>}     stream, one entry per frame (field ``e``: the entry's JSON)

The station is the key's hash tag, so a station's stream lives in one Redis Cluster slot.

:meth:`RedisMessageLog.record` only appends to a bounded in-process buffer (when full, the
oldest entries go and are counted, ``dropped{reason="buffer_full"}``); a background task
writes the buffer every ``flush_interval`` seconds, or as soon as ``batch`` entries wait, in
**one** pipelined round trip: an ``XADD ... MAXLEN ~ max_per_station`` per entry and, per
station written, ``XTRIM ... MINID ~`` (entries older than ``max_age``) and a ``PEXPIRE``
of the same age, so a station that went quiet leaves nothing behind. A flush Redis refuses
is dropped and counted (``dropped{reason="flush_failed"}``); the station's messages never
wait for it. :meth:`aclose` writes what is left.

Following: one task per process reads every followed stream with a single ``XREAD BLOCK``
(one connection however many followers) and hands new entries to the followers; a new
follower wakes it through a stream of its own so it is read from at once. (A multi-key
``XREAD`` needs the streams in one slot on Redis Cluster: there, follow per node.)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services import rules
from services.interfaces import StoreUnavailable
from services.message_log import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_PER_STATION,
    Direction,
    Follower,
    LogEntry,
    MessageLogCells,
    decode_entry,
    encode_entry,
    message_query,
    page_of,
)
from services.models import Page
from services.redis_store import DEFAULT_PREFIX
from services.resp import Arg, RespClient, RespError

__all__ = ["BATCH", "BUFFER", "RedisMessageLog"]

_log = structlog.get_logger("services.message_log")

BATCH = 500
"""Entries that make a flush start before its interval is up (and the most one flush
writes)."""
BUFFER = 50_000
"""Entries the process buffers at most between flushes."""
FOLLOW_BLOCK = 1.0
"""Seconds one XREAD of the follow poller blocks (below the client's socket timeout)."""
CLOCK_SLACK_MS = 60_000
"""Stream ids are the flush's time: ``since`` / ``until`` read this much beyond their bounds,
then filter on the entries' own times, so clock skew between hosts loses nothing."""
_FIELD = b"e"

_Rows = list[tuple[bytes, dict[bytes, bytes]]]


def _rows(answer: Any) -> _Rows:
    """An XRANGE-style answer as redis-py returns it with ``decode_responses=False``."""
    return cast(_Rows, answer or [])


class RedisMessageLog:
    """:class:`~services.message_log.MessageLog` on Redis (see the module docstring)."""

    enabled = True

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        max_per_station: int = DEFAULT_MAX_PER_STATION,
        max_age: float = DEFAULT_MAX_AGE,
        flush_interval: float = 0.2,
        batch: int = BATCH,
        buffer: int = BUFFER,
        follow_block: float = FOLLOW_BLOCK,
        clock: Callable[[], float] = time.time,
        fast: RespClient | None = None,
    ) -> None:
        self.client = client
        self.fast = fast
        """The flush goes through it when set (the hot path); reads stay on ``client``."""
        self.prefix = prefix
        self._max_per_station = max_per_station
        self._max_age = max_age
        self._interval = flush_interval
        self._batch = batch
        self._buffer: deque[LogEntry] = deque()
        self._buffer_size = buffer
        self._clock = clock
        self._ready = asyncio.Event()
        """Set when the buffer holds entries."""
        self._full = asyncio.Event()
        """Set when a batch waits: flush now."""
        self._flusher: asyncio.Task[None] | None = None
        self._failing = False
        self._closed = False
        self.cells = MessageLogCells()
        self._block_ms = max(1, int(follow_block * 1000))
        self._followers: dict[str, set[Follower]] = {}
        self._positions: dict[str, bytes] = {}
        """Followed station -> id of the last entry read of its stream."""
        self._wake_key = f"{prefix}msglog-wake:{uuid.uuid4().hex}"
        self._poller: asyncio.Task[None] | None = None

    def key(self, station_id: str) -> str:
        return f"{self.prefix}msglog:{{{rules.encode_id(station_id)}}}"

    # -- writing ------------------------------------------------------------------------------

    def record(self, entry: LogEntry) -> None:
        if len(self._buffer) >= self._buffer_size:
            self._buffer.popleft()
            self.cells.dropped["buffer_full"].inc()
        self._buffer.append(entry)
        self._ready.set()
        if len(self._buffer) >= self._batch:
            self._full.set()
        if self._flusher is None and not self._closed:
            # A context of its own: the Call being handled (its store unit) stays out of it.
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_forever(), name="message-log-flush", context=contextvars.Context()
            )

    def record_all(self, entries: Iterable[LogEntry]) -> None:
        for entry in entries:
            self.record(entry)

    @property
    def buffered(self) -> int:
        """Entries waiting for the next flush."""
        return len(self._buffer)

    async def _flush_forever(self) -> None:
        while True:
            await self._ready.wait()
            if len(self._buffer) < self._batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._interval)
            await self.flush()

    async def flush(self) -> int:
        """Write up to one batch of the buffer in one round trip; the entries written (0
        when Redis refused them: they are dropped and counted)."""
        count = min(len(self._buffer), self._batch)
        entries = [self._buffer.popleft() for _ in range(count)]
        if not self._buffer:
            self._ready.clear()
        if len(self._buffer) < self._batch:
            self._full.clear()
        if not entries:
            return 0
        keys: dict[str, None] = {}
        commands: list[tuple[Arg, ...]] = []
        for entry in entries:
            key = self.key(entry.station_id)
            keys[key] = None
            body = encode_entry(entry)
            commands.append(
                (b"XADD", key, b"MAXLEN", b"~", self._max_per_station, b"*", _FIELD, body)
            )
        if self._max_age > 0:
            cutoff = max(0, int((self._clock() - self._max_age) * 1000))
            for key in keys:
                commands.append((b"XTRIM", key, b"MINID", b"~", cutoff))
                commands.append((b"PEXPIRE", key, int(self._max_age * 1000)))
        started = time.perf_counter()
        try:
            await self._send(commands)
        except (RedisError, OSError, RespError) as exc:
            self.cells.dropped["flush_failed"].inc(len(entries))
            if not self._failing:
                self._failing = True
                _log.warning("message log entries lost: Redis unavailable", error=str(exc))
            return 0
        finally:
            self.cells.flush_seconds.observe(time.perf_counter() - started)
        if self._failing:
            self._failing = False
            _log.info("message log written again")
        self.cells.written.inc(len(entries))
        return len(entries)

    async def _send(self, commands: list[tuple[Arg, ...]]) -> None:
        """The flush's commands in one round trip; raises the first error reply."""
        if self.fast is not None:
            for reply in await self.fast.pipeline(commands):
                if isinstance(reply, RespError):
                    raise reply
            return
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        await pipe.execute()

    async def aclose(self) -> None:
        """Write everything buffered (one round trip per batch), stop the background tasks."""
        self._closed = True
        for task in (self._flusher, self._poller):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._flusher = self._poller = None
        while self._buffer and await self.flush():
            pass
        if self._buffer:  # Redis refused: the rest is lost too, and counted
            self.cells.dropped["flush_failed"].inc(len(self._buffer))
            self._buffer.clear()

    def count_into(self, cells: MessageLogCells) -> None:
        self.cells = cells

    # -- reading ------------------------------------------------------------------------------

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
        low = f"{max(0, int(since * 1000) - CLOCK_SLACK_MS)}" if since is not None else "-"
        high = f"{int(until * 1000) + CLOCK_SLACK_MS}" if until is not None else "+"
        if query.after is not None:
            position = f"({query.after[0]}-{query.after[1]}"
            if query.order == "asc":
                low = position
            else:
                high = position
        key = self.key(station_id)
        chunk = min(1000, max(100, 2 * (query.limit + 1)))
        found: list[LogEntry] = []
        try:
            while len(found) <= query.limit:
                if query.order == "asc":
                    rows = _rows(await self.client.xrange(key, low, high, count=chunk))
                else:
                    rows = _rows(await self.client.xrevrange(key, high, low, count=chunk))
                for raw_id, fields in rows:
                    entry = decode_entry(fields[_FIELD], raw_id.decode())
                    if query.matches(entry):
                        found.append(entry)
                        if len(found) > query.limit:
                            break
                if len(rows) < chunk:
                    break
                last = f"({rows[-1][0].decode()}"
                if query.order == "asc":
                    low = last
                else:
                    high = last
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable (message log): {exc}") from exc
        return page_of(found, query.limit)

    # -- following ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def follow(self, station_id: str) -> AsyncIterator[Follower]:
        follower = Follower(station_id)
        if station_id not in self._positions:
            try:
                newest = _rows(await self.client.xrevrange(self.key(station_id), "+", "-", count=1))
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(f"Redis unavailable (message log): {exc}") from exc
            # Another follower may have joined meanwhile: keep its position.
            self._positions.setdefault(station_id, newest[0][0] if newest else b"0-0")
        self._followers.setdefault(station_id, set()).add(follower)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name="message-log-follow", context=contextvars.Context()
            )
        else:
            await self._wake()
        try:
            yield follower
        finally:
            followers = self._followers.get(station_id)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[station_id]
                    self._positions.pop(station_id, None)

    async def _wake(self) -> None:
        """Make the poller's XREAD return, so it reads the streams followed now."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {b"w": b"1"}, maxlen=1, approximate=False)
                pipe.pexpire(self._wake_key, 60_000)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            _log.debug("message log poller not woken", error=str(exc))

    async def _poll(self) -> None:
        """Read every followed stream with one blocking XREAD at a time; stops when nobody
        follows."""
        while self._followers:
            keys = {self.key(station): station for station in self._followers}
            streams: dict[Any, Any] = {
                key: self._positions.get(station, b"0-0") for key, station in keys.items()
            }
            streams[self._wake_key] = "$"
            try:
                answer = cast(
                    list[tuple[bytes, _Rows]],
                    await self.client.xread(streams, block=self._block_ms) or [],
                )
            except (RedisError, OSError) as exc:
                _log.warning("message log follow read failed", error=str(exc))
                await asyncio.sleep(self._block_ms / 1000)
                continue
            for raw_key, rows in answer:
                station = keys.get(raw_key.decode())
                if station is None or not rows:
                    continue
                if station in self._positions:
                    self._positions[station] = rows[-1][0]
                for raw_id, fields in rows:
                    try:
                        entry = decode_entry(fields[_FIELD], raw_id.decode())
                    except (KeyError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                        _log.warning("unreadable message log entry skipped", error=str(exc))
                        continue
                    for follower in tuple(self._followers.get(station, ())):
                        follower.push(entry)
