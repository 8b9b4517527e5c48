"""The call record store contract (tests/unit/test_api_call_records.py) on a real Redis, and
what the Redis layout adds: one hash per call with its lifetime, a bounded per-station index,
one script per write so concurrent writers agree."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from services.call_records import CallRecordStore, CallState
from services.redis_call_records import RedisCallRecordStore
from tests.unit import test_api_call_records as contract
from tests.unit.test_api_call_records import TTL, Clock, final, pending

globals().update(
    {name: test for name, test in vars(contract).items() if name.startswith("test_store_")}
)

pytestmark = pytest.mark.integration


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def call_records(redis_client: aioredis.Redis, clock: Clock) -> CallRecordStore:
    return RedisCallRecordStore(redis_client, f"t{uuid.uuid4().hex[:8]}:", ttl=TTL, clock=clock)


async def test_records_and_index_live_under_the_prefix_with_their_lifetime(
    redis_client: aioredis.Redis, clock: Clock
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    store = RedisCallRecordStore(redis_client, prefix, ttl=TTL, clock=clock)
    asked = pending("m/1", station="CS:1")
    await store.begin(asked)
    clock.now += 10
    await store.finish(final(asked))
    keys = sorted(
        k.decode() if isinstance(k, bytes) else k for k in await redis_client.keys(f"{prefix}*")
    )
    assert keys == [f"{prefix}call:m%2F1", f"{prefix}calls:CS%3A1"]
    record_key, index_key = keys
    assert await redis_client.hget(record_key, "state") == b"result"
    assert 0 < await redis_client.ttl(record_key) <= TTL
    assert 0 < await redis_client.ttl(index_key) <= TTL
    members = await redis_client.zrange(index_key, 0, -1)
    assert members == [b"1768478400000:m%2F1"]


async def test_concurrent_outcome_writers_agree_on_one_outcome(
    call_records: CallRecordStore,
) -> None:
    for n in range(20):
        asked = pending(f"m{n}", request={"type": "OnIdle"})
        await call_records.begin(asked)
        await asyncio.gather(
            call_records.finish(final(asked, CallState.RESULT)),
            call_records.finish(final(asked, CallState.UNDELIVERED, payload=None)),
            call_records.begin(pending(f"m{n}", request={"type": "Immediate"})),
        )
        record = await call_records.get(f"m{n}")
        assert record is not None and record.request == {"type": "OnIdle"}
        assert record.outcome in (CallState.RESULT, CallState.UNDELIVERED)
        assert (record.payload is None) == (record.outcome is CallState.UNDELIVERED)
