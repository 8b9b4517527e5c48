"""The event log contract (tests/unit/test_event_log.py) on a real Redis stream, and what
only Redis has: one blocked connection however many wait, keys under the prefix."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.events import EventLog
from services.factory import redis_client
from services.interfaces import StoreUnavailable
from services.redis_events import RedisEventLog
from tests.timing import timeout as scaled
from tests.unit import test_event_log as contract
from tests.unit.test_event_log import MakeLog, connected

globals().update(
    {name: test for name, test in vars(contract).items() if name.startswith("test_log_")}
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def pooled(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client as the services make it (pool, fail-fast socket timeouts)."""
    client = redis_client(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def make_log(pooled: aioredis.Redis) -> AsyncIterator[MakeLog]:
    logs: list[RedisEventLog] = []

    def make(max_events: int = 10_000) -> EventLog:
        log = RedisEventLog(pooled, f"t{uuid.uuid4().hex[:8]}:", max_events=max_events)
        logs.append(log)
        return log

    yield make
    for log in logs:
        await log.aclose()


async def _blocked(client: aioredis.Redis) -> int:
    info = await client.info("clients")
    return int(info["blocked_clients"])


async def _until_blocked(client: aioredis.Redis, count: int) -> None:
    async with asyncio.timeout(scaled(5)):
        while await _blocked(client) != count:  # noqa: ASYNC110 (polls Redis's counters)
            await asyncio.sleep(0.02)


async def test_many_waiters_share_one_blocked_connection(
    pooled: aioredis.Redis, redis_client: aioredis.Redis
) -> None:
    log = RedisEventLog(pooled, "shared:")
    try:
        waiters = [asyncio.create_task(log.wait(None, scaled(10))) for _ in range(30)]
        await _until_blocked(redis_client, 1)
        await asyncio.sleep(0.1)
        assert await _blocked(redis_client) == 1
        assert not any(waiter.done() for waiter in waiters)
        appended = await log.append(connected("CS-1"))
        pages = await asyncio.wait_for(asyncio.gather(*waiters), scaled(5))
        assert all([e.id for e in page.events] == [appended.id] for page in pages)
        # Nobody waits any more: the poller lets its connection go.
        await _until_blocked(redis_client, 0)
    finally:
        await log.aclose()


async def test_events_live_in_one_stream_under_the_prefix(
    pooled: aioredis.Redis, redis_client: aioredis.Redis
) -> None:
    log = RedisEventLog(pooled, "pfx:")
    appended = await log.append(connected("CS-1"))
    await log.set_cursor("webhooks", appended.id)
    found: Any = await redis_client.keys("pfx:*")
    keys = sorted(k.decode() for k in found)
    assert keys == ["pfx:event-cursors", "pfx:events"]
    entries: Any = await redis_client.xrange("pfx:events")
    assert [bytes(entry_id).decode() for entry_id, _ in entries] == [appended.id]
    assert b"station.connected" in entries[0][1][b"e"]


async def test_large_retention_trims_approximately_and_keeps_at_least_the_bound(
    pooled: aioredis.Redis, redis_client: aioredis.Redis
) -> None:
    log = RedisEventLog(pooled, "big:", max_events=1000)
    first = await log.append(connected("CS-0"))
    for n in range(1, 1500):
        await log.append(connected(f"CS-{n}"))
    length = await redis_client.xlen("big:events")
    assert 1000 <= length < 1500
    page = await log.read(first.id, limit=1)
    assert page.truncated


async def test_an_unreachable_redis_fails_as_store_unavailable() -> None:
    client = redis_client("redis://127.0.0.1:1/0", timeout=0.2)
    log = RedisEventLog(client, "down:")
    try:
        with pytest.raises(StoreUnavailable):
            await log.wait(None, 0.1)
        with pytest.raises(StoreUnavailable):
            await log.append(connected("CS-1"))
    finally:
        await log.aclose()
        await client.aclose()
