"""What stations reported on their own initiative, in Redis (see
:mod:`services.station_reports`).

Keys (``{p}`` is the store prefix, ``{station}`` the percent-encoded station id)::

    {p}reports:{station}:e:{kind}            hash field -> JSON of an entry kind
    {p}reports:{station}:h:{kind}:{scope}    list of JSON records of a history, newest first
    {p}reports:{station}:scopes:{kind}       set of the scopes a history has records in

Every message is one call of :data:`_APPLY` (one round trip, atomic), which checks the caps
against what is stored, so concurrent managers cannot overrun them.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from services import rules
from services.redis_store import DEFAULT_PREFIX, _RedisStore
from services.station_reports import (
    ENTRY_CAPS,
    HISTORY_CAPS,
    EntryKind,
    HistoryKind,
    ReportChange,
    decode,
    encode,
)

__all__ = ["RedisStationReportStore"]

# ARGV: #deletes, #puts, #appends, then per delete: key index, field; per put: key index,
# field, value, cap; per append: key index, record, cap, scopes key index, scope.
_APPLY = """
local n_del, n_put, n_app = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
for _ = 1, n_del do
  redis.call('HDEL', KEYS[tonumber(ARGV[i])], ARGV[i + 1])
  i = i + 2
end
local dropped = 0
for _ = 1, n_put do
  local key = KEYS[tonumber(ARGV[i])]
  if redis.call('HEXISTS', key, ARGV[i + 1]) == 1
      or redis.call('HLEN', key) < tonumber(ARGV[i + 3]) then
    redis.call('HSET', key, ARGV[i + 1], ARGV[i + 2])
  else
    dropped = dropped + 1
  end
  i = i + 4
end
for _ = 1, n_app do
  local key = KEYS[tonumber(ARGV[i])]
  redis.call('LPUSH', key, ARGV[i + 1])
  redis.call('LTRIM', key, 0, tonumber(ARGV[i + 2]) - 1)
  redis.call('SADD', KEYS[tonumber(ARGV[i + 3])], ARGV[i + 4])
  i = i + 5
end
return dropped
"""


class RedisStationReportStore(_RedisStore):
    """:class:`~services.station_reports.StationReportStore` in Redis; failures raise
    StoreUnavailable."""

    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(client, prefix)
        self._script = client.register_script(_APPLY)

    def _base(self, station_id: str) -> str:
        return f"{self.prefix}reports:{rules.encode_id(station_id)}:"

    def _entries_key(self, station_id: str, kind: EntryKind) -> str:
        return f"{self._base(station_id)}e:{kind.value}"

    def _history_key(self, station_id: str, kind: HistoryKind, scope: str) -> str:
        return f"{self._base(station_id)}h:{kind.value}:{rules.encode_id(scope)}"

    def _scopes_key(self, station_id: str, kind: HistoryKind) -> str:
        return f"{self._base(station_id)}scopes:{kind.value}"

    async def apply(self, station_id: str, change: ReportChange) -> int:
        keys: list[str] = []
        index: dict[str, int] = {}

        def at(key: str) -> int:
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
            return index[key]

        args: list[str | bytes | int] = [len(change.deletes), len(change.puts), len(change.appends)]
        for kind, name in change.deletes:
            args += [at(self._entries_key(station_id, kind)), name]
        for put in change.puts:
            key = at(self._entries_key(station_id, put.kind))
            args += [key, put.field, encode(put.value), ENTRY_CAPS[put.kind]]
        for append in change.appends:
            key = at(self._history_key(station_id, append.kind, append.scope))
            scopes = at(self._scopes_key(station_id, append.kind))
            args += [key, encode(append.record), HISTORY_CAPS[append.kind], scopes, append.scope]
        if not keys:
            return 0
        with self._guard("write station reports"):
            dropped = await self._script(keys=keys, args=args)
        return int(dropped)

    async def entries(self, station_id: str, kind: EntryKind) -> dict[str, dict[str, Any]]:
        with self._guard(f"read station {kind.value}"):
            raw = await self.client.hgetall(self._entries_key(station_id, kind))
        return {_text(name): decode(_bytes(value)) for name, value in raw.items()}

    async def entry(self, station_id: str, kind: EntryKind, name: str) -> dict[str, Any] | None:
        with self._guard(f"read station {kind.value}"):
            raw = await self.client.hget(self._entries_key(station_id, kind), name)
        return decode(_bytes(raw)) if raw is not None else None

    async def history(
        self, station_id: str, kind: HistoryKind, scope: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        with self._guard(f"read station {kind.value}"):
            raws = await self.client.lrange(
                self._history_key(station_id, kind, scope), 0, limit - 1
            )
        return [decode(_bytes(raw)) for raw in raws]

    async def scopes(self, station_id: str, kind: HistoryKind) -> list[str]:
        with self._guard(f"read station {kind.value}"):
            members = await self.client.smembers(self._scopes_key(station_id, kind))
        return sorted(_text(member) for member in members)

    async def forget(self, station_id: str) -> None:
        keys = [self._entries_key(station_id, kind) for kind in EntryKind]
        for kind in HistoryKind:
            keys.append(self._scopes_key(station_id, kind))
            keys += [
                self._history_key(station_id, kind, scope)
                for scope in await self.scopes(station_id, kind)
            ]
        with self._guard("forget station reports"):
            await self.client.delete(*keys)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
