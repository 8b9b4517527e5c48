"""Call records in Redis, shared by every API replica and manager.

Keys (``{p}`` is the store prefix, ids percent-encoded)::

    {p}call:{message id}     hash: request (JSON, written once), outcome (JSON), state
                             (the outcome's name); EXPIRE ttl from its first write
    {p}calls:{station}       sorted set, every score 0, of "{requested ms, 13 digits}:{id}"
                             (newest last, read with ZREVRANGEBYLEX); trimmed to the newest
                             MAX_STATION_CALLS and to the ttl, EXPIRE ttl from its last entry

Each write is one Lua script (one round trip): the request part is set only when missing, the
outcome only while none or ``pending`` is stored, so concurrent writers (the API and the
managers) never undo each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis

from services import rules
from services.call_records import (
    DEFAULT_TTL,
    MAX_STATION_CALLS,
    CallRecord,
    CallState,
    call_query,
    check_final,
    decode_parts,
    encode_parts,
    index_member,
    message_id_of,
    page_of,
    resolved,
    time_key,
)
from services.models import Page
from services.redis_store import DEFAULT_PREFIX, _RedisStore

__all__ = ["RedisCallRecordStore"]

# KEYS: record, station index. ARGV: request, outcome, state, replace pending (0/1), ttl,
# index entry, oldest entry kept (exclusive bound), entries kept.
_WRITE = """
if redis.call('HSETNX', KEYS[1], 'request', ARGV[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('ZADD', KEYS[2], 0, ARGV[6])
  redis.call('ZREMRANGEBYLEX', KEYS[2], '-', '(' .. ARGV[7])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[8]) + 1))
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
local state = redis.call('HGET', KEYS[1], 'state')
if (not state) or (ARGV[4] == '1' and state == 'pending') then
  redis.call('HSET', KEYS[1], 'state', ARGV[3], 'outcome', ARGV[2])
  return 1
end
return 0
"""

_SCAN_CHUNK = 200
"""Index entries read per round trip while filtering a listing."""


class RedisCallRecordStore(_RedisStore):
    """:class:`~services.call_records.CallRecordStore` in Redis; failures raise
    StoreUnavailable. ``clock`` (Unix time) decides what has expired from the listings and
    when a pending call reads as ``no_outcome``."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        ttl: int = DEFAULT_TTL,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(client, prefix)
        self._ttl = ttl
        self._clock = clock or time.time
        self._write_script = client.register_script(_WRITE)

    def _key(self, message_id: str) -> str:
        return f"{self.prefix}call:{rules.encode_id(message_id)}"

    def _index_key(self, station_id: str) -> str:
        return f"{self.prefix}calls:{rules.encode_id(station_id)}"

    async def begin(self, record: CallRecord) -> None:
        await self._write(record, replace_pending=False, what="begin call record")

    async def finish(self, record: CallRecord) -> None:
        await self._write(check_final(record), replace_pending=True, what="finish call record")

    async def _write(self, record: CallRecord, *, replace_pending: bool, what: str) -> None:
        request, outcome = encode_parts(record)
        oldest = time_key(self._clock() - self._ttl)
        with self._guard(what):
            await self._write_script(
                keys=[self._key(record.message_id), self._index_key(record.station_id)],
                args=[
                    request,
                    outcome,
                    record.outcome.value,
                    b"1" if replace_pending else b"0",
                    self._ttl,
                    index_member(record),
                    oldest,
                    MAX_STATION_CALLS,
                ],
            )

    async def get(self, message_id: str) -> CallRecord | None:
        with self._guard("get call record"):
            request, outcome = await self.client.hmget(
                self._key(message_id), ["request", "outcome"]
            )
        if request is None:
            return None
        return resolved(decode_parts(message_id, request, outcome), self._clock())

    async def list_calls(
        self,
        station_id: str,
        *,
        cursor: str | None = None,
        limit: int = 100,
        action: str | None = None,
        outcome: CallState | None = None,
    ) -> Page[CallRecord]:
        query = call_query(cursor, limit, action, outcome)
        filtered = query.action is not None or query.outcome is not None
        chunk = max(query.limit + 1, _SCAN_CHUNK) if filtered else query.limit + 1
        high = b"(" + query.before.encode() if query.before is not None else b"+"
        index = self._index_key(station_id)
        now = self._clock()
        found: list[CallRecord] = []
        with self._guard("list call records"):
            # The index holds at most MAX_STATION_CALLS entries: a filtered scan is bounded.
            while len(found) <= query.limit:
                raw = await self.client.zrevrangebylex(index, high, b"-", start=0, num=chunk)
                members = [m.decode() if isinstance(m, bytes) else m for m in raw]
                if not members:
                    break
                async with self.client.pipeline(transaction=False) as pipe:
                    for member in members:
                        pipe.hmget(self._key(message_id_of(member)), ["request", "outcome"])
                    parts = await pipe.execute()
                for member, (request, known) in zip(members, parts, strict=True):
                    if request is None:
                        continue  # expired, or its index entry outlived it
                    record = resolved(decode_parts(message_id_of(member), request, known), now)
                    if query.matches(record):
                        found.append(record)
                        if len(found) > query.limit:
                            break
                if len(members) < chunk:
                    break
                high = b"(" + members[-1].encode()
        return page_of(found, query.limit)
