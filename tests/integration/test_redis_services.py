"""Redis stores on a real, private redis-server (see tests/conftest.py).

The whole store contract of tests/unit/test_services_contract.py runs again here against
Redis (imported below, fixtures overridden), followed by what only a shared store can show:
concurrent writers from several clients, key encoding, TTLs, outages.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import msgspec
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from csms.config import Settings, StationSettings, TokenSettings
from services import StoreUnavailable
from services.factory import open_services, redis_client
from services.interfaces import IdempotencyStore, StationRegistry, TokenStore, TransactionStore
from services.models import (
    AuthorizationStatus,
    EnergyReading,
    RegistrationStatus,
    StationRecord,
    Transaction,
)
from services.redis_store import (
    RedisIdempotencyStore,
    RedisStationRegistry,
    RedisTokenStore,
    RedisTransactionStore,
)
from services.rules import parse_time
from tests.servers import ServerProcess, free_port
from tests.unit import test_services_contract as contract
from tests.unit.test_services_contract import NOW, TokenStoreFactory

# The store contract, collected again in this module where the fixtures below give Redis.
globals().update({name: test for name, test in vars(contract).items() if name.startswith("test_")})

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def registry(redis_client: aioredis.Redis, prefix: str) -> StationRegistry:
    return RedisStationRegistry(redis_client, prefix)


@pytest.fixture
def make_tokens(redis_client: aioredis.Redis, prefix: str) -> TokenStoreFactory:
    def make(*, accept_unknown: bool = False) -> TokenStore:
        return RedisTokenStore(
            redis_client, prefix, accept_unknown=accept_unknown, clock=lambda: NOW
        )

    return make


@pytest.fixture
def transactions(redis_client: aioredis.Redis, prefix: str) -> TransactionStore:
    return RedisTransactionStore(redis_client, prefix)


@pytest.fixture
def idempotency(redis_client: aioredis.Redis, prefix: str) -> IdempotencyStore:
    return RedisIdempotencyStore(redis_client, prefix)


@pytest.fixture
async def second_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """Another connection pool: a second manager process, as far as Redis can tell."""
    client = redis_client(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


# --- concurrency across clients --------------------------------------------------------------


async def test_concurrent_updates_lose_nothing(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, prefix: str
) -> None:
    stores = [
        RedisTransactionStore(redis_client, prefix),
        RedisTransactionStore(second_client, prefix),
    ]
    await stores[0].update(
        "CS1",
        "1",
        lambda _: Transaction(station_id="CS1", transaction_id="1", version="ocpp1.6"),
    )

    def append(index: int) -> Callable[[Transaction | None], Transaction]:
        def change(old: Transaction | None) -> Transaction:
            assert old is not None
            reading = EnergyReading(at=f"2026-01-15T12:00:{index:02d}Z", wh=float(index))
            return msgspec.structs.replace(old, readings=[*old.readings, reading])

        return change

    await asyncio.gather(
        *(stores[index % 2].update("CS1", "1", append(index)) for index in range(40))
    )
    stored = await stores[0].get("CS1", "1")
    assert stored is not None
    assert sorted(reading.wh for reading in stored.readings) == [float(i) for i in range(40)]


async def test_two_concurrent_updates_both_land(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, prefix: str
) -> None:
    a = RedisTransactionStore(redis_client, prefix)
    b = RedisTransactionStore(second_client, prefix)
    await a.update(
        "CS1", "7", lambda _: Transaction(station_id="CS1", transaction_id="7", version="v")
    )

    def stop(old: Transaction | None) -> Transaction:
        assert old is not None
        return msgspec.structs.replace(old, stop_reason="Local")

    def charging(old: Transaction | None) -> Transaction:
        assert old is not None
        return msgspec.structs.replace(old, charging_state="Charging")

    await asyncio.gather(a.update("CS1", "7", stop), b.update("CS1", "7", charging))
    stored = await a.get("CS1", "7")
    assert stored is not None
    assert (stored.stop_reason, stored.charging_state) == ("Local", "Charging")


async def test_write_between_read_and_exec_forces_a_retry(
    redis_url: str, redis_client: aioredis.Redis, prefix: str
) -> None:
    """The interleaving that loses updates without WATCH, made deterministic: another
    manager's write lands after our read and before our EXEC."""
    a = RedisTransactionStore(redis_client, prefix)
    await a.update(
        "CS1", "7", lambda _: Transaction(station_id="CS1", transaction_id="7", version="v")
    )
    other = sync_redis.Redis.from_url(redis_url)
    key = f"{prefix}tx:CS1:7"
    seen: list[str | None] = []

    def change(old: Transaction | None) -> Transaction:
        assert old is not None
        seen.append(old.charging_state)
        if len(seen) == 1:
            competing = msgspec.structs.replace(old, charging_state="SuspendedEV")
            other.set(key, msgspec.json.encode(competing))
        return msgspec.structs.replace(old, stop_reason="Remote")

    try:
        stored = await a.update("CS1", "7", change)
    finally:
        other.close()
    assert seen == [None, "SuspendedEV"]
    assert (stored.charging_state, stored.stop_reason) == ("SuspendedEV", "Remote")
    assert await a.get("CS1", "7") == stored


async def test_next_transaction_id_unique_across_clients(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, prefix: str
) -> None:
    stores = [
        RedisTransactionStore(redis_client, prefix),
        RedisTransactionStore(second_client, prefix),
    ]
    ids = await asyncio.gather(*(stores[i % 2].next_transaction_id() for i in range(200)))
    assert len(set(ids)) == 200
    assert sorted(ids) == list(range(1, 201))


async def test_next_transaction_id_wraps_within_int32(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    store = RedisTransactionStore(redis_client, prefix)
    await redis_client.set(f"{prefix}tx-seq", 2**31 - 2)
    assert await store.next_transaction_id() == 2**31 - 1
    assert await store.next_transaction_id() == 1
    assert await store.next_transaction_id() == 2


async def test_old_disconnect_never_marks_newer_connection_offline(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, prefix: str
) -> None:
    a = RedisStationRegistry(redis_client, prefix)
    b = RedisStationRegistry(second_client, prefix)
    for round_ in range(20):
        old, new = f"old-{round_}", f"new-{round_}"
        await a.mark_connected("CS1", "ocpp1.6", "gw-a", old, f"2026-01-15T12:{round_:02d}:00Z")
        # The new socket's connect and the old socket's close race on two managers.
        _, disconnected = await asyncio.gather(
            b.mark_connected("CS1", "ocpp1.6", "gw-b", new, f"2026-01-15T12:{round_:02d}:01Z"),
            a.mark_disconnected("CS1", old, f"2026-01-15T12:{round_:02d}:02Z"),
        )
        record = await a.get("CS1")
        assert record is not None
        assert (record.online, record.connection) == (True, new), (round_, disconnected)
        assert await a.mark_disconnected("CS1", old, "2026-01-15T13:00:00Z") is False
        assert await b.mark_disconnected("CS1", new, "2026-01-15T13:00:00Z") is True


async def test_concurrent_touch_and_boot_keep_both(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, prefix: str
) -> None:
    from services.models import BootInfo

    a = RedisStationRegistry(redis_client, prefix)
    b = RedisStationRegistry(second_client, prefix)
    await a.put(StationRecord(station_id="CS1"))
    boot = BootInfo(vendor="V", model="M")
    await asyncio.gather(
        *(b.touch("CS1", f"2026-01-15T12:00:{i:02d}Z") for i in range(30)),
        a.record_boot(
            "CS1", "ocpp2.0.1", boot, RegistrationStatus.ACCEPTED, "2026-01-15T12:00:00Z"
        ),
    )
    record = await a.get("CS1")
    assert record is not None
    assert record.boot == boot
    assert parse_time(record.last_seen) == parse_time("2026-01-15T12:00:29Z")


# --- keys, encoding, TTL -----------------------------------------------------------------------


async def test_station_ids_with_colons_do_not_collide(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    store = RedisTransactionStore(redis_client, prefix)
    await store.update(
        "a:b", "c", lambda _: Transaction(station_id="a:b", transaction_id="c", version="v")
    )
    await store.update(
        "a", "b:c", lambda _: Transaction(station_id="a", transaction_id="b:c", version="v")
    )
    first, second = await store.get("a:b", "c"), await store.get("a", "b:c")
    assert first is not None and second is not None
    assert (first.station_id, second.station_id) == ("a:b", "a")
    assert [tx.transaction_id for tx in await store.active("a")] == ["b:c"]
    raw_keys = await redis_client.keys(f"{prefix}tx:*")
    keys = sorted(key.decode() if isinstance(key, bytes) else key for key in raw_keys)
    assert keys == [f"{prefix}tx:a%3Ab:c", f"{prefix}tx:a:b%3Ac"]


async def test_idempotency_ttl_is_honoured(redis_client: aioredis.Redis, prefix: str) -> None:
    store = RedisIdempotencyStore(redis_client, prefix)
    assert await store.claim("k", "a|w", 0.2) is True
    assert await store.claim("k", "a|w", 0.2) is False
    await asyncio.sleep(0.3)
    assert await store.claim("k", "a|w", 0.2) is True
    await store.complete("k", b"done", 0.2)
    assert await store.claim("k", "a|w", 0.2) == b"done"
    pttl = await redis_client.pttl(f"{prefix}idem:k")
    assert 0 < pttl <= 200
    await asyncio.sleep(0.3)
    assert await store.claim("k", "a|w", 10) is True


async def test_rejects_decoding_client(redis_url: str) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses=False"):
            RedisIdempotencyStore(client)
    finally:
        await client.aclose()


# --- factory on Redis ---------------------------------------------------------------------------


async def test_open_services_on_redis_preloads_without_wiping(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    settings = Settings(
        redis_url=redis_url,
        tokens=[TokenSettings(id_token="T1", group_id="g")],
        stations=[StationSettings(station_id="CS1", registration="Accepted")],
    )
    async with open_services(settings) as services:
        assert isinstance(services.stations, RedisStationRegistry)
        await services.stations.mark_connected("CS1", "ocpp1.6", "gw", "c1", "2026-01-15T12:00:00Z")
        assert (await services.tokens.authorize("T1")).group_id == "g"
    # A second manager starting with the same configuration keeps the live connection facts.
    async with open_services(settings) as services:
        record = await services.stations.get("CS1")
        assert record is not None
        assert (record.known, record.registration, record.online, record.connection) == (
            True,
            RegistrationStatus.ACCEPTED,
            True,
            "c1",
        )
        assert (await services.tokens.authorize("T2")).status is AuthorizationStatus.UNKNOWN


async def test_redis_key_prefix_separates_deployments(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    tenant = f"t{uuid.uuid4().hex[:6]}:"
    settings = Settings(
        redis_url=redis_url,
        redis_key_prefix=tenant,
        stations=[StationSettings(station_id="CS-P", registration="Accepted")],
    )
    async with open_services(settings) as services:
        assert (await services.stations.get("CS-P")) is not None
        await services.transactions.next_transaction_id()
    keys = {key.decode() for key in await redis_client.keys(f"{tenant}*")}
    assert f"{tenant}station:CS-P" in keys
    assert any(key.startswith(f"{tenant}") and "tx" in key for key in keys), keys
    # The default deployment does not see the other one's station.
    async with open_services(Settings(redis_url=redis_url)) as services:
        assert (await services.stations.get("CS-P")) is None


# --- outages -------------------------------------------------------------------------------------


async def test_closed_port_raises_store_unavailable_promptly() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: RedisStationRegistry(client).get("CS1"),
            lambda: RedisStationRegistry(client).mark_disconnected("CS1", "c", "t"),
            lambda: RedisTokenStore(client).authorize("T"),
            lambda: RedisTransactionStore(client).next_transaction_id(),
            lambda: RedisTransactionStore(client).active("CS1"),
            lambda: RedisIdempotencyStore(client).claim("k", "a|w", 1),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"Redis at 127\.0\.0\.1:\d+/0 unavailable"):
                await call()
            assert time.monotonic() - started < 2
    finally:
        await client.aclose()


@pytest.fixture
def restarting_redis(redis_process: ServerProcess) -> Iterator[ServerProcess]:
    yield redis_process
    if not redis_process.running:
        redis_process.start()


async def test_outage_and_recovery(redis_url: str, restarting_redis: ServerProcess) -> None:
    client = redis_client(redis_url)
    try:
        registry = RedisStationRegistry(client, f"t{uuid.uuid4().hex[:8]}:")
        await registry.put(StationRecord(station_id="CS1"))
        restarting_redis.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await registry.touch("CS1", "2026-01-15T12:00:00Z")
        assert time.monotonic() - started < 3
        restarting_redis.start()
        # The pool replaces its dead connections; the store works again without a restart.
        await registry.put(StationRecord(station_id="CS2"))
        assert await registry.get("CS2") is not None
    finally:
        await client.aclose()


def test_clock_is_aware() -> None:
    assert NOW.tzinfo is dt.UTC
