"""What stations reported about themselves, in Redis (see :mod:`services.station_state`).

Keys (``{p}`` is the store prefix, ``{station}`` the percent-encoded station id)::

    {p}state:{kind}:{station}             hash of the kind (variables, configuration,
                                          local-list, certificates, certificate-installs)
    {p}state:variable-index:{station}     sorted set of the variables' keys, every score 0
    {p}state:report:{station}:{requestId} hash seqNo -> "{tbc}|{generatedAt}" of the parts of
                                          a NotifyReport (and "complete"); expires
                                          REPORT_TRACKING_SECONDS after its last part

Every change is one call of one Lua script (:data:`_APPLY`): one round trip, atomic, and the
per-station cap is checked against what is stored, so concurrent managers cannot overrun it.
A page of the device model is two round trips (ZRANGEBYLEX on the index, HMGET of the page's
fields); the other kinds are read with one HGETALL (they are small and bounded).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from services import rules
from services.redis_store import DEFAULT_PREFIX, _RedisStore
from services.station_state import (
    CAPS,
    REPORT_TRACKING_SECONDS,
    Applied,
    HashChange,
    HashStationState,
    StateKind,
)

__all__ = ["RedisStationStateStore"]

# KEYS[1] the kind's hash; KEYS[2] (variables) the index; KEYS[3] (a report part) its
# report's tracking. ARGV: cap, clear, #delete, #prefixes, #suffixes, #entries, seqNo, stamp,
# tracking TTL, then the deleted fields, the prefixes, the suffixes, and per entry: member,
# #fields, field, value, ... The same steps, in the same order, as
# MemoryStationStateStore._apply.
_APPLY = """
local cap = tonumber(ARGV[1])
local n_delete, n_prefix = tonumber(ARGV[3]), tonumber(ARGV[4])
local n_suffix, n_entries = tonumber(ARGV[5]), tonumber(ARGV[6])
local indexed, tracked = #KEYS >= 2, #KEYS >= 3
local claimed = 1
if tracked then
  if redis.call('HGET', KEYS[3], ARGV[7]) == ARGV[8] then
    claimed = 0
  else
    if redis.call('HEXISTS', KEYS[3], 'complete') == 1 then
      redis.call('DEL', KEYS[3])
    end
    redis.call('HSET', KEYS[3], ARGV[7], ARGV[8])
  end
  redis.call('EXPIRE', KEYS[3], ARGV[9])
end
local dropped = 0
if claimed == 1 then
  local i = 10
  if ARGV[2] == '1' then
    redis.call('DEL', KEYS[1])
    if indexed then redis.call('DEL', KEYS[2]) end
  end
  for _ = 1, n_delete do
    redis.call('HDEL', KEYS[1], ARGV[i])
    i = i + 1
  end
  if n_prefix + n_suffix > 0 then
    local prefixes, suffixes = {}, {}
    for j = 1, n_prefix do prefixes[j] = ARGV[i]; i = i + 1 end
    for j = 1, n_suffix do suffixes[j] = ARGV[i]; i = i + 1 end
    for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
      local drop = false
      for _, p in ipairs(prefixes) do
        if string.sub(name, 1, #p) == p then drop = true end
      end
      for _, s in ipairs(suffixes) do
        if #name >= #s and string.sub(name, -#s) == s then drop = true end
      end
      if drop then redis.call('HDEL', KEYS[1], name) end
    end
  end
  local count
  if indexed then count = redis.call('ZCARD', KEYS[2]) else count = redis.call('HLEN', KEYS[1]) end
  for _ = 1, n_entries do
    local member, n_fields = ARGV[i], tonumber(ARGV[i + 1])
    local first = i + 2
    i = first + 2 * n_fields
    local known
    if indexed then
      known = redis.call('ZSCORE', KEYS[2], member)
    else
      known = redis.call('HEXISTS', KEYS[1], member) == 1
    end
    if (not known) and count >= cap then
      dropped = dropped + 1
    else
      if not known then
        count = count + 1
        if indexed then redis.call('ZADD', KEYS[2], 0, member) end
      end
      for f = first, i - 1, 2 do redis.call('HSET', KEYS[1], ARGV[f], ARGV[f + 1]) end
    end
  end
end
local parts, complete = 0, 0
if tracked then
  local all = redis.call('HGETALL', KEYS[3])
  local seqs, final = {}, nil
  for j = 1, #all, 2 do
    if all[j] ~= 'complete' then
      local seq = tonumber(all[j])
      parts = parts + 1
      seqs[parts] = seq
      if string.sub(all[j + 1], 1, 1) == '0' and (final == nil or seq < final) then final = seq end
    end
  end
  if final ~= nil and final >= 0 then
    local present = 0
    for _, seq in ipairs(seqs) do
      if seq >= 0 and seq <= final then present = present + 1 end
    end
    if present == final + 1 then
      complete = 1
      redis.call('HSET', KEYS[3], 'complete', '1')
    end
  end
end
return {claimed, dropped, parts, complete}
"""


class RedisStationStateStore(_RedisStore, HashStationState):
    """:class:`~services.station_state.StationStateStore` in Redis; failures raise
    StoreUnavailable."""

    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(client, prefix)
        self._script = client.register_script(_APPLY)

    def _key(self, kind: StateKind, station_id: str) -> str:
        return f"{self.prefix}state:{kind.value}:{rules.encode_id(station_id)}"

    def _index_key(self, station_id: str) -> str:
        return f"{self.prefix}state:variable-index:{rules.encode_id(station_id)}"

    def _report_key(self, station_id: str, request_id: int) -> str:
        return f"{self.prefix}state:report:{rules.encode_id(station_id)}:{request_id}"

    async def _apply(self, station_id: str, change: HashChange) -> Applied:
        keys = [self._key(change.kind, station_id)]
        if change.kind is StateKind.VARIABLES:
            keys.append(self._index_key(station_id))
        claim = change.claim
        if claim is not None:
            keys.append(self._report_key(station_id, claim.request_id))
        args: list[str | bytes | int] = [
            CAPS[change.kind],
            "1" if change.clear else "0",
            len(change.delete),
            len(change.drop_prefixes),
            len(change.drop_suffixes),
            len(change.entries),
            str(claim.seq_no) if claim is not None else "",
            claim.stamp if claim is not None else "",
            REPORT_TRACKING_SECONDS,
            *change.delete,
            *change.drop_prefixes,
            *change.drop_suffixes,
        ]
        for entry in change.entries:
            args += [entry.member, len(entry.fields)]
            for name, value in entry.fields:
                args += [name, value]
        with self._guard(f"write station {change.kind.value}"):
            claimed, dropped, parts, complete = await self._script(keys=keys, args=args)
        return Applied(
            claimed=bool(claimed), dropped=int(dropped), parts=int(parts), complete=bool(complete)
        )

    async def _hash(self, station_id: str, kind: StateKind) -> dict[str, bytes]:
        with self._guard(f"read station {kind.value}"):
            raw = await self.client.hgetall(self._key(kind, station_id))
        return {_text(name): _bytes(value) for name, value in raw.items()}

    async def _fields(
        self, station_id: str, kind: StateKind, names: Sequence[str]
    ) -> list[bytes | None]:
        with self._guard(f"read station {kind.value}"):
            values = await self.client.hmget(self._key(kind, station_id), list(names))
        return [_bytes(value) if value is not None else None for value in values]

    async def _variable_keys(self, station_id: str, query: rules.IdQuery) -> list[str]:
        prefix = query.prefix.encode()
        if query.after is not None and query.after >= query.prefix:
            low = b"(" + query.after.encode()
        else:
            low = b"[" + prefix if prefix else b"-"
        high = b"[" + prefix + b"\xff" if prefix else b"+"
        with self._guard("list station variables"):
            members = await self.client.zrangebylex(
                self._index_key(station_id), low, high, start=0, num=query.limit + 1
            )
        return [_text(member) for member in members]

    async def forget(self, station_id: str) -> None:
        """Report trackings are left to expire: they hold seqNos, nothing of the station."""
        keys = [self._key(kind, station_id) for kind in StateKind]
        with self._guard("forget station state"):
            await self.client.delete(*keys, self._index_key(station_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
