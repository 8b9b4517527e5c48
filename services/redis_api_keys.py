"""API key records in Redis, shared by every API replica.

Keys (``{p}`` is the store prefix)::

    {p}api-key:{key id}     ApiKeyRecord (msgspec JSON)
    {p}api-keys             sorted set of key ids, every score 0 (listings, ZRANGEBYLEX)

Key ids are 16 hex digits, safe in a key as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from services.api_keys import ApiKeyRecord, decode_record, encode_record, key_query, page_of
from services.models import Page
from services.redis_store import DEFAULT_PREFIX, _RedisStore

__all__ = ["RedisApiKeyStore"]


class RedisApiKeyStore(_RedisStore):
    """:class:`~services.api_keys.ApiKeyStore` in Redis; failures raise StoreUnavailable."""

    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(client, prefix)

    def _key(self, key_id: str) -> str:
        return f"{self.prefix}api-key:{key_id}"

    @property
    def _all_key(self) -> str:
        return f"{self.prefix}api-keys"

    async def put(self, record: ApiKeyRecord) -> None:
        with self._guard("put api key"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self._key(record.key_id), encode_record(record))
                pipe.zadd(self._all_key, {record.key_id.encode(): 0})
                await pipe.execute()

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        with self._guard("get api key"):
            raw = await self.client.get(self._key(key_id))
        return decode_record(raw) if raw is not None else None

    async def revoke(self, key_id: str, at: str) -> ApiKeyRecord | None:
        key = self._key(key_id)

        def attempt(
            raw: bytes | None,
        ) -> tuple[ApiKeyRecord | None, Callable[[Pipeline], None] | None]:
            if raw is None:
                return None, None
            record = decode_record(raw)
            if record.revoked_at is not None:
                return record, None
            record.revoked_at = at
            data = encode_record(record)

            def write(pipe: Pipeline) -> None:
                pipe.set(key, data)

            return record, write

        return await self._optimistic(key, attempt, "revoke api key")

    async def list_keys(self, *, cursor: str | None = None, limit: int = 100) -> Page[ApiKeyRecord]:
        query = key_query(cursor, limit)
        low = b"(" + query.after.encode() if query.after is not None else b"-"
        with self._guard("list api keys"):
            members = await self.client.zrangebylex(
                self._all_key, low, b"+", start=0, num=query.limit + 1
            )
            ids = [m.decode() if isinstance(m, bytes) else m for m in members]
            raws = await self.client.mget([self._key(i) for i in ids]) if ids else []
        return page_of([decode_record(raw) for raw in raws if raw is not None], query.limit)
