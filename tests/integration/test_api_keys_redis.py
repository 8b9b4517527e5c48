"""The API key store contract (tests/unit/test_services_api_keys.py) on a real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from services.api_keys import ApiKeyStore, Scope, issue_key, parse_key
from services.redis_api_keys import RedisApiKeyStore
from tests.unit import test_services_api_keys as contract

globals().update(
    {name: test for name, test in vars(contract).items() if name.startswith("test_store_")}
)

pytestmark = pytest.mark.integration


@pytest.fixture
def api_keys(redis_client: aioredis.Redis) -> ApiKeyStore:
    return RedisApiKeyStore(redis_client, f"t{uuid.uuid4().hex[:8]}:")


async def test_records_live_under_the_prefix(redis_client: aioredis.Redis) -> None:
    store = RedisApiKeyStore(redis_client, "pfx:")
    issued = issue_key("k", Scope.READ, "2026-01-15T12:00:00Z")
    await store.put(issued.record)
    keys = sorted(
        k.decode() if isinstance(k, bytes) else k for k in await redis_client.keys("pfx:*")
    )
    assert keys == ["pfx:api-key:" + issued.record.key_id, "pfx:api-keys"]
    raw = await redis_client.get("pfx:api-key:" + issued.record.key_id)
    parsed = parse_key(issued.key)
    assert isinstance(raw, bytes) and parsed is not None
    assert parsed[1].encode() not in raw  # never the secret
