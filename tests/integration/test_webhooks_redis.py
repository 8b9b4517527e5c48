"""The webhook outbox on a real Redis: the store contract of tests/unit/test_webhooks.py,
concurrent claimers and dispatchers, and deliveries through the Redis outbox to a real
receiver."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from fastapi import Request, Response

from services.events import EventKind, MemoryEventLog, event_of, utc_now
from services.redis_webhooks import RedisWebhookStore
from services.webhooks import Attempt, DeliveryState, WebhookStore, delivery_of
from tests.unit import test_webhooks as contract
from tests.unit.test_webhooks import (
    LEASE,
    SECRET,
    T0,
    StoreFactory,
    config,
    event,
    receiver,
    subscription,
    wait_for,
)
from webhooks import Dispatcher, WebhookRunner, verify_signature

globals().update(
    {name: test for name, test in vars(contract).items() if name.startswith("test_store_")}
)

pytestmark = pytest.mark.integration


@pytest.fixture
def make_store(redis_client: aioredis.Redis) -> StoreFactory:
    prefix = f"t{uuid.uuid4().hex[:8]}:"

    async def make(**options: Any) -> WebhookStore:
        return RedisWebhookStore(redis_client, prefix, **options)

    return make


async def test_concurrent_claimers_never_share_a_delivery(make_store: StoreFactory) -> None:
    store = await make_store()
    subs = [subscription(f"{index:016x}") for index in range(20)]
    for sub in subs:
        await store.create(sub)
        await store.enqueue([delivery_of(event(f"{n}-0"), sub, T0) for n in range(3)])
    rounds = await asyncio.gather(*(store.claim(T0 + 1, LEASE, 4) for _ in range(10)))
    claimed = [item for batch in rounds for item in batch]
    assert len(claimed) == 20  # one per subscription, whoever asked
    assert len({item.delivery.subscription_id for item in claimed}) == 20
    assert all(item.delivery.event_id == "0-0" for item in claimed)


async def test_two_dispatchers_do_not_double_enqueue(
    make_store: StoreFactory, redis_client: aioredis.Redis
) -> None:
    store = await make_store()
    subs = [subscription("a" * 16), subscription("b" * 16, events=("station.booted",))]
    for sub in subs:
        await store.create(sub)
    events = MemoryEventLog()
    first = Dispatcher(events, store, config(batch=7))
    second = Dispatcher(events, store, config(batch=5))
    await first.dispatch_once()
    await second.dispatch_once()
    kinds = [EventKind.STATION_BOOTED, EventKind.STATION_CONNECTED]
    appended = [await events.append(event_of(kinds[n % 2], utc_now(), "CS", {})) for n in range(30)]
    added = 0
    for _ in range(10):  # the two race over the same events from the same cursor
        counts = await asyncio.gather(first.dispatch_once(), second.dispatch_once())
        added += sum(counts)
    assert added == 30 + 15
    assert await events.get_cursor("webhooks") == appended[-1].id
    listed = await store.deliveries(subs[0].id, limit=100)
    assert sorted(d.event_id for d in listed.items) == sorted(e.id for e in appended)
    booted = await store.deliveries(subs[1].id, limit=100)
    assert {d.event_kind for d in booted.items} == {"station.booted"}
    assert len(booted.items) == 15


async def test_a_claim_whose_worker_died_is_retried_after_its_lease(
    make_store: StoreFactory,
) -> None:
    """A worker claims, then dies without completing; another process claims it after the
    lease, and the dead worker's late report changes nothing."""
    store = await make_store()
    sub = subscription("a" * 16)
    await store.create(sub)
    await store.enqueue([delivery_of(event("1-0"), sub, T0)])
    (lost,) = await store.claim(T0, 5, 1)
    assert await store.claim(T0 + 4.9, 5, 1) == []
    (retried,) = await store.claim(T0 + 5, 5, 1)
    assert retried.delivery.attempts == 2
    assert await store.complete(retried, Attempt(at=T0 + 6, delivered=True, status=200), None)
    assert not await store.complete(lost, Attempt(at=T0 + 7, delivered=False, status=500), 1.0)
    stored = await store.delivery(lost.delivery.id)
    assert stored is not None and stored.state is DeliveryState.DELIVERED


async def test_deliveries_through_the_redis_outbox(make_store: StoreFactory) -> None:
    async def flaky(_request: Request, _body: bytes, n: int) -> Response:
        return Response(status_code=500 if n <= 2 else 200)

    store = await make_store()
    events = MemoryEventLog()
    async with receiver(flaky) as (url, seen):
        sub = subscription("a" * 16, url=url, secret=SECRET)
        await store.create(sub)
        async with WebhookRunner(events, store, config()):
            appended = await events.append(
                event_of(EventKind.TRANSACTION_STARTED, utc_now(), "CS1", {})
            )
            key = f"{appended.id}.{sub.id}"

            async def delivered() -> bool:
                found = await store.delivery(key)
                return found is not None and found.state is DeliveryState.DELIVERED

            await wait_for(delivered)
    assert list(seen.events) == [appended.id]
    assert all(verify_signature(SECRET, h["x-csms-signature"], b) for h, b in seen.requests)
    (listed,) = (await store.deliveries(sub.id)).items
    assert (listed.attempts, listed.last_status, listed.state) == (3, 200, DeliveryState.DELIVERED)
