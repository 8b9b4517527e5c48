"""Redis stores on a real, private redis-server (see tests/conftest.py).

The whole store contract of tests/unit/test_services_contract.py runs again here against
Redis (imported below, fixtures overridden), followed by what only a shared store can show:
concurrent writers from several clients, key encoding, TTLs, outages.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import msgspec
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from csms.config import Settings, StationSettings, TokenSettings
from services import StoreUnavailable, redis_store
from services.factory import open_services, redis_client
from services.interfaces import IdempotencyStore, StationRegistry, TokenStore, TransactionStore
from services.models import (
    MAX_PAGE_SIZE,
    AuthorizationStatus,
    EnergyReading,
    RegistrationStatus,
    StationCounts,
    StationRecord,
    TokenRecord,
    Transaction,
    TransactionChange,
    TransactionState,
)
from services.redis_store import (
    RedisIdempotencyStore,
    RedisStationRegistry,
    RedisTokenStore,
    RedisTransactionStore,
    encode_id,
    rebuild_indexes,
)
from services.rules import parse_time, transaction_key
from tests.servers import ServerProcess, free_port
from tests.unit import test_services_contract as contract
from tests.unit.test_services_contract import BOOT, NOW, T1, TokenStoreFactory

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

    def append(index: int) -> Callable[[Transaction | None], TransactionChange]:
        def change(old: Transaction | None) -> TransactionChange:
            assert old is not None
            reading = EnergyReading(at=f"2026-01-15T12:00:{index:02d}Z", wh=float(index))
            return TransactionChange(old, (reading,))

        return change

    # Concurrent writers land readings out of order: some rebuild the aggregate.
    await asyncio.gather(
        *(stores[index % 2].update("CS1", "1", append(index)) for index in range(40))
    )
    stored = await stores[0].get("CS1", "1")
    assert stored is not None
    readings = await stores[1].readings("CS1", "1")
    assert [reading.wh for reading in readings] == [float(i) for i in range(40)]
    assert stored.energy_wh == 39.0
    assert stored.meter is not None and stored.meter.count == 40


async def test_concurrent_copies_of_an_event_apply_once(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, prefix: str
) -> None:
    stores = [
        RedisTransactionStore(redis_client, prefix),
        RedisTransactionStore(second_client, prefix),
    ]
    base = Transaction(station_id="CS1", transaction_id="e", version="ocpp2.0.1")

    def event(seq_no: int) -> Callable[[Transaction | None], TransactionChange]:
        def change(old: Transaction | None) -> TransactionChange:
            reading = EnergyReading(at=f"2026-01-15T12:00:{seq_no:02d}Z", wh=10.0 * seq_no)
            return TransactionChange(old or base, (reading,))

        return change

    # Each event delivered four times, to both managers at once.
    results = await asyncio.gather(
        *(
            stores[copy % 2].update_event("CS1", "e", seq_no, event(seq_no))
            for seq_no in range(10)
            for copy in range(4)
        )
    )
    applied = collections.Counter(
        seq
        for seq, r in zip([seq_no for seq_no in range(10) for _ in range(4)], results, strict=True)
        if r.applied
    )
    assert applied == dict.fromkeys(range(10), 1)
    assert await stores[0].seq_nos("CS1", "e") == list(range(10))
    stored = await stores[1].get("CS1", "e")
    assert stored is not None and stored.last_seq_no == 9 and stored.energy_wh == 90.0


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


async def test_delete_leaves_no_key_or_index_entry_of_the_station(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    from services.models import ConnectorStatus, StationCredentials

    registry = RedisStationRegistry(redis_client, prefix)
    gone, kept = "CS:1/é", "CS:1"
    for station_id, connection in ((gone, "c1"), (kept, "c2")):
        await registry.provision(station_id, RegistrationStatus.ACCEPTED)
        await registry.mark_connected(station_id, "ocpp2.0.1", "gw1", connection, T1)
    await registry.set_credentials(gone, StationCredentials(security_profile=1))
    await registry.touch(gone, "2026-01-15T12:00:09Z")
    status = ConnectorStatus(evse_id=1, connector_id=1, status="Occupied", at=T1)
    await registry.set_connector_status(gone, status)
    assert await registry.delete(gone) is True
    keys = {key.decode() async for key in redis_client.scan_iter(match=f"{prefix}*")}
    assert keys == {
        f"{prefix}station:{encode_id(kept)}",
        f"{prefix}stations",
        f"{prefix}stations-online:Accepted",
        f"{prefix}gw-stations:gw1",
        f"{prefix}gateways",
    }
    indexes = await _index_sets(redis_client, prefix)
    assert indexes == {"stations": {kept}, "stations-online:Accepted": {kept}}
    assert await redis_client.smembers(f"{prefix}gw-stations:gw1") == {kept.encode()}


async def test_faulted_stations_are_one_set_counted_with_scard(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    from services.models import ConnectorStatus

    registry = RedisStationRegistry(redis_client, prefix)
    for station_id in ("CS:1/é", "CS:2"):
        await registry.provision(station_id, RegistrationStatus.ACCEPTED)
        faulted = ConnectorStatus(evse_id=1, connector_id=1, status="Faulted", at=T1)
        await registry.set_connector_status(station_id, faulted)
    key = f"{prefix}stations-faulted"
    assert await redis_client.smembers(key) == {"CS:1/é".encode(), b"CS:2"}
    available = ConnectorStatus(evse_id=1, connector_id=1, status="Available", at=T1)
    await registry.set_connector_status("CS:2", available)
    assert await redis_client.smembers(key) == {"CS:1/é".encode()}
    assert (await registry.station_counts()).faulted == 1
    assert await registry.delete("CS:1/é") is True
    assert await redis_client.exists(key) == 0


async def test_delete_racing_a_connect_keeps_the_indexes_exact(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, prefix: str
) -> None:
    a = RedisStationRegistry(redis_client, prefix)
    b = RedisStationRegistry(second_client, prefix)
    for round_ in range(30):
        await a.provision("CS1", RegistrationStatus.PENDING)
        at = f"2026-01-15T12:{round_:02d}:00Z"
        await asyncio.gather(
            a.delete("CS1"), b.mark_connected("CS1", "ocpp1.6", "gw", f"c{round_}", at)
        )
        record = await a.get("CS1")
        indexes = await _index_sets(redis_client, prefix)
        listed = {name for name, members in indexes.items() if "CS1" in members}
        if record is None:
            assert listed == set(), round_
        else:
            # The connect came second: it made a record of its own, indexed as it is.
            assert record.online and not record.known
            assert listed == {"stations", "stations-online:Pending"}, round_
        await a.delete("CS1")
        assert await a.station_counts() == StationCounts()


# --- read-side indexes ----------------------------------------------------------------------------


async def _index_sets(client: aioredis.Redis, prefix: str) -> dict[str, set[str]]:
    """Every read-side index (name without the prefix -> members); all scores must be 0."""
    found: dict[str, set[str]] = {}
    for pattern in ("stations", "stations-*", "tokens", "tx-by-*"):
        async for key in client.scan_iter(match=f"{prefix}{pattern}"):
            name = key.decode()
            entries = await client.zrange(name, 0, -1, withscores=True)
            assert {score for _, score in entries} <= {0.0}, name
            found[name.removeprefix(prefix)] = {member.decode() for member, _ in entries}
    return found


async def _indexes_from_records(client: aioredis.Redis, prefix: str) -> dict[str, set[str]]:
    """What the indexes must hold, worked out from the records alone (the key layout)."""
    expected: dict[str, set[str]] = collections.defaultdict(set)
    async for key in client.scan_iter(match=f"{prefix}station:*"):
        record = msgspec.json.decode(await client.get(key), type=StationRecord)
        presence = "online" if record.online else "offline"
        expected["stations"].add(record.station_id)
        expected[f"stations-{presence}:{record.registration.value}"].add(record.station_id)
    async for key in client.scan_iter(match=f"{prefix}token:*"):
        expected["tokens"].add(
            msgspec.json.decode(await client.get(key), type=TokenRecord).id_token
        )
    async for key in client.scan_iter(match=f"{prefix}tx:*"):
        tx = msgspec.json.decode(await client.get(key), type=Transaction)
        if tx.merged_into is not None:
            continue
        sort_key = transaction_key(tx)
        expected["tx-by-start"].add(sort_key)
        expected[f"tx-by-station:{encode_id(tx.station_id)}"].add(sort_key)
        expected[f"tx-by-state:{tx.state.value}"].add(sort_key)
        if tx.id_token is not None:
            expected[f"tx-by-token:{encode_id(tx.id_token)}"].add(sort_key)
    return dict(expected)


async def _assert_indexes_match_records(client: aioredis.Redis, prefix: str) -> None:
    assert await _index_sets(client, prefix) == await _indexes_from_records(client, prefix)


STATUSES = list(RegistrationStatus)


def _station_ops(
    registries: list[RedisStationRegistry],
    rng: random.Random,
    count: int,
    connections: dict[str, str] | None = None,
) -> list[Awaitable[object]]:
    """``count`` random registry writes; ``connections`` remembers each station's latest
    connection across calls so that disconnects often hit the owner."""
    ops: list[Awaitable[object]] = []
    connections = {} if connections is None else connections
    for index in range(count):
        registry = registries[index % 2]
        station = f"CS:{rng.randrange(6)}"
        at = f"2026-01-15T12:{index // 60:02d}:{index % 60:02d}Z"
        status = rng.choice(STATUSES)
        gateway = rng.choice(["gw-a", "gw-b"])
        kind = rng.randrange(8)
        if kind == 0:
            connections[station] = f"c{index}"
            ops.append(registry.mark_connected(station, "ocpp1.6", gateway, f"c{index}", at, "s1"))
        elif kind == 1:  # most often the station's latest connection
            ops.append(registry.mark_disconnected(station, connections.get(station, "c0"), at))
        elif kind == 2:
            ops.append(registry.set_registration(station, status))
        elif kind == 3:
            ops.append(registry.record_boot(station, "ocpp2.0.1", BOOT, status, at))
        elif kind == 4:
            ops.append(registry.provision(station, status))
        elif kind == 5:
            online = rng.random() < 0.5
            ops.append(
                registry.put(StationRecord(station_id=station, registration=status, online=online))
            )
        elif kind == 6:
            ops.append(registry.gateway_gone(gateway, at, session=rng.choice([None, "s1"])))
        else:
            ops.append(registry.touch(station, at))
    return ops


def _transaction_ops(
    stores: list[RedisTransactionStore], rng: random.Random, count: int
) -> list[Awaitable[object]]:
    ops: list[Awaitable[object]] = []
    for index in range(count):
        store = stores[index % 2]
        station, tx_id = f"CS:{rng.randrange(3)}", str(rng.randrange(3))
        # Every choice is made here: a change may run more than once, it must be pure.
        kind = rng.randrange(6)
        token = rng.choice(["TAG", "OTHER", "T:3", None])
        start = f"2026-01-{rng.randrange(10, 13)}T08:00:0{rng.randrange(3)}Z"
        state = rng.choice(list(TransactionState))
        wh = float(index)

        def change(
            old: Transaction | None,
            kind: int = kind,
            token: str | None = token,
            start: str = start,
            state: TransactionState = state,
            wh: float = wh,
            station: str = station,
            tx_id: str = tx_id,
        ) -> Transaction | TransactionChange:
            if old is None:
                old = Transaction(station_id=station, transaction_id=tx_id, version="v")
            if kind == 0:
                return TransactionChange(old, (EnergyReading(at=start, wh=wh),))
            if kind == 1:
                return msgspec.structs.replace(old, id_token=token)
            if kind == 2:
                return msgspec.structs.replace(old, started_at=start)
            if kind == 3:
                return msgspec.structs.replace(old, state=state)
            if kind == 4:  # becomes a 1.6 pointer record, or stops being one
                return msgspec.structs.replace(
                    old, merged_into=None if old.merged_into else "other"
                )
            return msgspec.structs.replace(old, charging_state=f"c{wh}")

        ops.append(store.update(station, tx_id, change))
    return ops


async def test_indexes_stay_exact_under_two_concurrent_managers(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, prefix: str
) -> None:
    """Two managers (two connection pools) change the same and different stations and
    transactions at once: every index holds exactly what the records say, listings and
    counts agree with the records, and a rebuild finds nothing to repair."""
    registries = [
        RedisStationRegistry(redis_client, prefix),
        RedisStationRegistry(second_client, prefix),
    ]
    stores = [
        RedisTransactionStore(redis_client, prefix),
        RedisTransactionStore(second_client, prefix),
    ]
    rng = random.Random(20260115)
    connections: dict[str, str] = {}
    for _ in range(10):
        ops = [*_station_ops(registries, rng, 24, connections), *_transaction_ops(stores, rng, 24)]
        rng.shuffle(ops)
        await asyncio.gather(*ops)
        await _assert_indexes_match_records(redis_client, prefix)
    indexes = await _index_sets(redis_client, prefix)
    assert len(indexes["stations"]) == 6 and indexes.get("tx-by-start")

    records = [
        record for record in [await registries[0].get(f"CS:{i}") for i in range(6)] if record
    ]
    online = sorted(r.station_id for r in records if r.online)
    listed = await registries[1].list_stations(online=True)
    assert [r.station_id for r in listed.items] == online
    counts = await registries[1].station_counts()
    assert (counts.total, counts.online) == (len(records), len(online))
    for status in RegistrationStatus:
        assert getattr(counts, status.value.lower()) == sum(
            r.registration is status for r in records
        )

    everything = await stores[1].list_transactions(limit=MAX_PAGE_SIZE)
    stored = [
        tx
        for i in range(3)
        for j in range(3)
        if (tx := await stores[0].get(f"CS:{i}", str(j))) is not None and tx.merged_into is None
    ]
    assert everything.items == sorted(stored, key=transaction_key, reverse=True)

    report = await rebuild_indexes(redis_client, prefix)
    assert report.removed == 0
    assert await _index_sets(redis_client, prefix) == indexes


async def _legacy_data(client: aioredis.Redis, prefix: str) -> None:
    """Records as a version without read-side indexes wrote them, plus index entries that
    are wrong (records gone, changed since)."""
    encode = msgspec.json.encode
    stations = [
        StationRecord(station_id="CS:1", online=True, registration=RegistrationStatus.ACCEPTED),
        StationRecord(station_id="CS2"),
        StationRecord(station_id="CS3", registration=RegistrationStatus.REJECTED),
    ]
    for record in stations:
        await client.set(f"{prefix}station:{encode_id(record.station_id)}", encode(record))
    for id_token in ("TAG", "T:2"):
        await client.set(
            f"{prefix}token:{encode_id(id_token)}", encode(TokenRecord(id_token=id_token))
        )
    for index in range(7):
        tx = Transaction(
            station_id="CS:1" if index % 2 else "CS2",
            transaction_id=f"tx/{index}",
            version="ocpp1.6",
            id_token="TAG" if index % 3 else None,
            state=TransactionState.ENDED if index < 4 else TransactionState.ACTIVE,
            started_at=f"2026-01-1{index}T10:00:00Z",
            merged_into="tx/1" if index == 6 else None,
        )
        key = f"{prefix}tx:{encode_id(tx.station_id)}:{encode_id(tx.transaction_id)}"
        await client.set(key, encode(tx))
    # Wrong entries: stations and transactions that are gone, a station in the wrong bucket,
    # a transaction under a token and a start time it no longer has.
    await client.zadd(f"{prefix}stations", {"gone": 0})
    await client.zadd(f"{prefix}stations-online:Pending", {"CS2": 0, "gone": 0})
    await client.zadd(f"{prefix}tokens", {"gone": 0})
    await client.zadd(
        f"{prefix}tx-by-start", {"1767261600000:CS2:tx%2F0": 0, "0000000000000:x:y": 0}
    )
    await client.zadd(f"{prefix}tx-by-token:OLD", {"1768039200000:CS2:tx%2F0": 0})
    await client.zadd(f"{prefix}tx-by-state:Active", {"1768039200000:CS2:tx%2F0": 0})


@pytest.mark.parametrize("batch", [1, 2, 500])
async def test_rebuild_indexes_makes_old_records_listable(
    redis_client: aioredis.Redis, prefix: str, batch: int
) -> None:
    await _legacy_data(redis_client, prefix)
    registry = RedisStationRegistry(redis_client, prefix)
    store = RedisTransactionStore(redis_client, prefix)
    assert (await registry.list_stations()).items == []
    report = await rebuild_indexes(redis_client, prefix, batch=batch)
    assert (report.stations, report.tokens, report.transactions) == (3, 2, 7)
    assert report.removed == 7  # CS2 left the wrong bucket in the first pass, not counted
    expected = await _indexes_from_records(redis_client, prefix)
    assert await _index_sets(redis_client, prefix) == expected
    assert expected["tx-by-station:CS%3A1"] == {
        "1768125600000:CS%3A1:tx%2F1",
        "1768298400000:CS%3A1:tx%2F3",
        "1768471200000:CS%3A1:tx%2F5",
    }
    assert expected["stations-online:Accepted"] == {"CS:1"}
    assert [r.station_id for r in (await registry.list_stations()).items] == ["CS2", "CS3", "CS:1"]
    assert await registry.station_counts() == StationCounts(
        total=3, online=1, offline=2, accepted=1, pending=1, rejected=1
    )
    tokens = await RedisTokenStore(redis_client, prefix).list_tokens()
    assert [token.id_token for token in tokens.items] == ["T:2", "TAG"]
    listed = await store.list_transactions(id_token="TAG")
    assert [tx.transaction_id for tx in listed.items] == ["tx/5", "tx/4", "tx/2", "tx/1"]
    again = await rebuild_indexes(redis_client, prefix)
    assert again.removed == 0
    assert await _index_sets(redis_client, prefix) == expected


async def test_rebuild_indexes_while_a_manager_writes(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, prefix: str
) -> None:
    """A rebuild in batches of one record, racing a manager that changes those records."""
    await _legacy_data(redis_client, prefix)
    registry = RedisStationRegistry(second_client, prefix)
    store = RedisTransactionStore(second_client, prefix)
    rng = random.Random(7)
    connections: dict[str, str] = {}

    async def manager() -> None:
        for round_ in range(20):
            state = list(TransactionState)[round_ % 2]
            token = "LATE" if round_ % 2 else None

            def change(
                old: Transaction | None, state: TransactionState = state, token: str | None = token
            ) -> Transaction:
                assert old is not None
                return msgspec.structs.replace(old, state=state, id_token=token)

            ops = _station_ops([registry, registry], rng, 5, connections)
            ops += [store.update("CS:1", f"tx/{i}", change) for i in (1, 3, 5)]
            await asyncio.gather(*ops)

    await asyncio.gather(manager(), rebuild_indexes(redis_client, prefix, batch=1))
    await _assert_indexes_match_records(redis_client, prefix)


async def test_a_rebuild_batch_changed_meanwhile_is_redone(
    redis_url: str, redis_client: aioredis.Redis, prefix: str
) -> None:
    """Another manager writes a record of the batch between the rebuild's read and its EXEC:
    nothing of that attempt is applied, and the batch is redone in halves on fresh data."""
    keys = [f"{prefix}k{index}".encode() for index in range(4)]
    for key in keys:
        await redis_client.set(key, b"old")
    other = sync_redis.Redis.from_url(redis_url)
    seen: list[list[bytes | None]] = []

    def decide(batch: list[bytes], raws: list[bytes | None]) -> tuple[int, Any]:
        seen.append(raws)
        if len(seen) == 1:
            other.set(keys[2], b"new")

        def write(pipe: Any) -> None:
            for key, raw in zip(batch, raws, strict=True):
                pipe.set(key + b":copy", raw or b"")

        return len(batch), write

    try:
        assert await redis_store._watched(redis_client, keys, decide) == 4
    finally:
        other.close()
    assert seen == [[b"old", b"old", b"old", b"old"], [b"old", b"old"], [b"new", b"old"]]
    copies = await redis_client.mget([key + b":copy" for key in keys])
    assert copies == [b"old", b"old", b"new", b"old"]


async def test_an_update_that_changes_no_indexed_fact_touches_no_index(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """The per-message cost: a reading, a charging state or a last-seen time queue no index
    command (touch stays a single script call)."""
    registry = RedisStationRegistry(redis_client, prefix)
    store = RedisTransactionStore(redis_client, prefix)
    await registry.mark_connected("CS1", "ocpp2.0.1", "gw", "c1", T1)
    await store.update("CS1", "1", _started_tx("CS1", "1"))

    def reading(old: Transaction | None) -> TransactionChange:
        assert old is not None
        changed = msgspec.structs.replace(old, charging_state="EV")
        return TransactionChange(changed, (EnergyReading(at=T1, wh=5.0),))

    async def commands() -> dict[str, int]:
        stats = await redis_client.info("commandstats")
        return {name.removeprefix("cmdstat_"): row["calls"] for name, row in stats.items()}

    await redis_client.config_resetstat()
    await store.update("CS1", "1", reading)
    await registry.touch("CS1", T1)
    called = await commands()
    assert not [command for command in called if command.startswith("z")], called
    # One read, one checked write (a script), no WATCH/MULTI/EXEC.
    assert {"get", "set", "evalsha"} <= set(called)
    assert not {"watch", "multi", "exec"} & set(called), called
    # A new connection of an online station stays in its bucket: only the gateway lease's
    # ZADD (NX) is queued, as before the indexes.
    await redis_client.config_resetstat()
    await registry.mark_connected("CS1", "ocpp2.0.1", "gw", "c2", T1)
    called = await commands()
    assert [(c, n) for c, n in called.items() if c.startswith("z")] == [("zadd", 1)], called


async def test_filters_no_index_answers_examine_a_bounded_window(
    redis_client: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A station and a token: the station's index is read and the token checked on the
    records, at most LIST_SCAN_LIMIT of them per call; a page cut short still has a cursor
    and paging on yields exactly the matches."""
    monkeypatch.setattr(redis_store, "LIST_SCAN_LIMIT", 4)
    store = RedisTransactionStore(redis_client, prefix)
    for index in range(12):
        token = "TAG" if index in (0, 1, 9) else "OTHER"
        at = f"2026-01-15T12:00:{index:02d}Z"
        await store.update("CS1", f"{index:02d}", _started_tx("CS1", f"{index:02d}", token, at))
    pages = []
    cursor = None
    while True:
        page = await store.list_transactions(
            cursor=cursor, limit=2, station_id="CS1", id_token="TAG"
        )
        pages.append([tx.transaction_id for tx in page.items])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    # Four entries per call: 11 10 09 08 | 07 06 05 04 | 03 02 01 00 | (end).
    assert pages == [["09"], [], ["01", "00"], []]
    # The station's own index answers alone: full pages, whatever the window.
    full = await store.list_transactions(limit=10, station_id="CS1")
    assert len(full.items) == 10 and full.next_cursor is not None


def _started_tx(
    station: str, tx_id: str, token: str | None = "TAG", at: str = T1
) -> Callable[[Transaction | None], Transaction]:
    def change(old: Transaction | None) -> Transaction:
        return Transaction(
            station_id=station, transaction_id=tx_id, version="v", id_token=token, started_at=at
        )

    return change


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
