"""The action rules store contract (tests/unit/test_action_rules.py) on a real Redis, plus what
only Redis has: the key layout, one round trip to read a station's effective rules, two
processes sharing rules through their caches, the factory's wiring, and outages."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from csms.config import Settings
from services import StoreUnavailable
from services.action_rules import ActionRules, ActionRuleStore, CachedActionRules, Side
from services.factory import open_services, redis_client
from services.redis_action_rules import RedisActionRuleStore
from tests.servers import free_port
from tests.unit import test_action_rules as contract
from tests.unit.test_action_rules import DENY_DATA, ONLY_RESET, V16, V201, Clock, rule

globals().update(
    {name: test for name, test in vars(contract).items() if name.startswith("test_store_")}
)

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def action_rules(redis_client: aioredis.Redis, prefix: str) -> ActionRuleStore:
    return RedisActionRuleStore(redis_client, prefix)


async def _keys(client: aioredis.Redis, pattern: str) -> list[str]:
    return sorted(k.decode() for k in await client.keys(pattern) if isinstance(k, bytes))


async def test_a_hash_per_station_and_one_for_defaults(redis_client: aioredis.Redis) -> None:
    prefix = f"p{uuid.uuid4().hex[:6]}:"
    store = RedisActionRuleStore(redis_client, prefix)
    await store.put("CS/1:a", DENY_DATA)
    await store.put("CS2", ActionRules(station_calls=rule(deny=["Heartbeat"]), csms_calls=rule()))
    await store.put_default(V201, ONLY_RESET)
    await store.put_default(V16, DENY_DATA)
    assert await _keys(redis_client, f"{prefix}*") == [
        f"{prefix}action-rules-defaults",
        f"{prefix}action-rules:CS%2F1%3Aa",
        f"{prefix}action-rules:CS2",
    ]
    assert await redis_client.hkeys(f"{prefix}action-rules:CS%2F1%3Aa") == [b"station_calls"]
    assert sorted(await redis_client.hkeys(f"{prefix}action-rules-defaults")) == [
        b"ocpp1.6:station_calls",
        b"ocpp2.0.1:csms_calls",
    ]
    raw = await redis_client.hget(f"{prefix}action-rules-defaults", "ocpp2.0.1:csms_calls")
    assert raw is not None and b'"TriggerMessage"' in raw and b'"Reset"' in raw
    await store.put("CS2", ActionRules())
    await store.delete("CS/1:a")
    await store.put_default(V16, ActionRules())
    assert await _keys(redis_client, f"{prefix}*") == [f"{prefix}action-rules-defaults"]
    assert await redis_client.hkeys(f"{prefix}action-rules-defaults") == [b"ocpp2.0.1:csms_calls"]


class _RoundTrips:
    """Counts what reaches Redis: single commands and pipeline executions."""

    def __init__(self, client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = client.execute_command
        pipeline_execute = Pipeline.execute

        async def command(*args: Any, **options: Any) -> Any:
            self.count += 1
            return await original(*args, **options)  # type: ignore[no-untyped-call]

        async def execute(pipe: Pipeline, raise_on_error: bool = True) -> list[Any]:
            self.count += 1
            return await pipeline_execute(pipe, raise_on_error)

        monkeypatch.setattr(client, "execute_command", command)
        monkeypatch.setattr(Pipeline, "execute", execute)


async def test_reading_effective_rules_is_one_round_trip_and_cached_ones_none(
    redis_client: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisActionRuleStore(redis_client, prefix)
    await store.put("CS1", DENY_DATA)
    await store.put_default(V201, ONLY_RESET)
    trips = _RoundTrips(redis_client, monkeypatch)
    rules = await store.effective("CS1", V201)
    assert trips.count == 1
    assert rules.refusal(Side.STATION_CALLS, "DataTransfer") == "deny"
    assert rules.refusal(Side.CSMS_CALLS, "UnlockConnector") == "allow"
    cache = CachedActionRules(store, 5.0, clock=Clock())
    for _ in range(50):
        await cache.effective("CS1", V201)
    assert trips.count == 2


async def test_two_processes_see_each_others_changes_within_the_ttl(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    clock = Clock()
    api = CachedActionRules(RedisActionRuleStore(redis_client, prefix), 5.0, clock=clock)
    manager = CachedActionRules(RedisActionRuleStore(redis_client, prefix), 5.0, clock=clock)
    assert (await manager.effective("CS1", V16)).refusal(Side.STATION_CALLS, "DataTransfer") is None
    await api.put("CS1", DENY_DATA)
    assert (await api.effective("CS1", V16)).refusal(Side.STATION_CALLS, "DataTransfer") == "deny"
    clock.now += 4
    assert (await manager.effective("CS1", V16)).refusal(Side.STATION_CALLS, "DataTransfer") is None
    clock.now += 1.5
    denied = await manager.effective("CS1", V16)
    assert denied.refusal(Side.STATION_CALLS, "DataTransfer") == "deny"


async def test_the_factory_hands_out_a_cache_over_redis(redis_url: str, prefix: str) -> None:
    settings = Settings(redis_url=redis_url, redis_key_prefix=prefix, action_rules_cache_seconds=2)
    async with open_services(settings) as services:
        store = services.action_rules
        assert isinstance(store, CachedActionRules)
        assert isinstance(store.store, RedisActionRuleStore)
        await store.put("CS1", DENY_DATA)
    async with open_services(settings) as again:
        assert await again.action_rules.get("CS1") == DENY_DATA


async def test_closed_port_raises_store_unavailable_promptly() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        store = RedisActionRuleStore(client)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.get("S"),
            lambda: store.put("S", DENY_DATA),
            lambda: store.delete("S"),
            lambda: store.get_default(V201),
            lambda: store.put_default(V201, DENY_DATA),
            lambda: store.effective("S", V201),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable):
                await call()
    finally:
        await client.aclose()
