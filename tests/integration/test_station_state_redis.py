"""The station state contract (tests/unit/test_station_state.py) on a real Redis, plus what only
Redis has: the key layout, one round trip per write, caps under concurrent writers, the
report tracking's expiry, and outages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from csms.config import Settings
from services import StoreUnavailable
from services.factory import open_services, redis_client
from services.redis_station_state import RedisStationStateStore
from services.station_state import (
    MAX_VARIABLES,
    REPORT_TRACKING_SECONDS,
    CertificateInstall,
    LocalListState,
    StationStateStore,
)
from tests.servers import free_port
from tests.unit import test_station_state as contract
from tests.unit.test_station_state import T1, certificate, key, part, ref, reported, set_value

globals().update(
    {name: test for name, test in vars(contract).items() if name.startswith("test_store_")}
)

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def station_state(redis_client: aioredis.Redis, prefix: str) -> StationStateStore:
    return RedisStationStateStore(redis_client, prefix)


async def _keys(client: aioredis.Redis, pattern: str) -> list[str]:
    return sorted(k.decode() for k in await client.keys(pattern) if isinstance(k, bytes))


async def test_one_hash_per_station_and_kind_under_the_prefix(
    redis_client: aioredis.Redis,
) -> None:
    store = RedisStationStateStore(redis_client, "pfx:")
    station = "CS/1:a"
    await store.update_variables(station, [set_value(ref("EVSE", "Power", evse_id=1), "1")])
    await store.apply_report_part(station, part(9, 0, True, reported(ref("A", "v"), "2")))
    await store.replace_configuration(station, [key("HeartbeatInterval")])
    await store.set_local_list(
        station, LocalListState(version=1, source="SendLocalList", updated_at=T1)
    )
    await store.replace_certificates(station, [certificate("CSMSRootCertificate", "01")])
    await store.note_install(
        station, CertificateInstall(certificate_type="CSMSRootCertificate", installed_at=T1)
    )
    encoded = "CS%2F1%3Aa"
    assert await _keys(redis_client, "pfx:*") == [
        f"pfx:state:certificate-installs:{encoded}",
        f"pfx:state:certificates:{encoded}",
        f"pfx:state:configuration:{encoded}",
        f"pfx:state:local-list:{encoded}",
        f"pfx:state:report:{encoded}:9",
        f"pfx:state:variable-index:{encoded}",
        f"pfx:state:variables:{encoded}",
    ]
    names = await redis_client.hkeys(f"pfx:state:variables:{encoded}")
    fields = sorted(f.decode() for f in names if isinstance(f, bytes))
    assert fields == ["A::::v:|Actual", "A::::v:|Actual|traits", "EVSE::1::Power:|Actual"]
    ttl = await redis_client.ttl(f"pfx:state:report:{encoded}:9")
    assert 0 < ttl <= REPORT_TRACKING_SECONDS
    assert await redis_client.ttl(f"pfx:state:variables:{encoded}") == -1  # kept
    await store.forget(station)
    assert await _keys(redis_client, "pfx:*") == [f"pfx:state:report:{encoded}:9"]


class _Counting:
    """Counts the commands a client sends (each one round trip)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.commands: list[str] = []
        original = client.execute_command

        async def counted(*args: Any, **options: Any) -> Any:
            self.commands.append(str(args[0]).upper())
            return await original(*args, **options)  # type: ignore[no-untyped-call]

        client.execute_command = counted  # type: ignore[method-assign]


async def test_every_write_is_one_round_trip(redis_url: str, prefix: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        store = RedisStationStateStore(client, prefix)
        await store.update_variables("S", [set_value(ref("A", "v"), "0")])  # loads the script
        counting = _Counting(client)
        writes: list[Callable[[], Awaitable[object]]] = [
            lambda: store.update_variables(
                "S", [set_value(ref("A", f"v{i}"), str(i)) for i in range(50)]
            ),
            lambda: store.apply_report_part("S", part(1, 0, True, reported(ref("B", "v"), "1"))),
            lambda: store.replace_configuration("S", [key(f"K{i}") for i in range(50)]),
            lambda: store.update_configuration("S", [key("K1", "2")], ["K2"]),
            lambda: store.set_local_list(
                "S", LocalListState(version=1, source="SendLocalList", updated_at=T1)
            ),
            lambda: store.replace_certificates(
                "S", [certificate("CSMSRootCertificate", "01")], types=["CSMSRootCertificate"]
            ),
            lambda: store.remove_certificate("S", contract.digest("01")),
            lambda: store.note_install(
                "S", CertificateInstall(certificate_type="CSMSRootCertificate", installed_at=T1)
            ),
        ]
        for write in writes:
            counting.commands.clear()
            await write()
            assert counting.commands == ["EVALSHA"]
        counting.commands.clear()
        page = await store.variables("S", limit=10)
        assert len(page.items) == 10 and counting.commands == ["ZRANGEBYLEX", "HMGET"]
    finally:
        await client.aclose()


async def test_concurrent_writers_never_overrun_the_cap(redis_url: str, prefix: str) -> None:
    clients = [aioredis.from_url(redis_url) for _ in range(4)]
    try:
        stores = [RedisStationStateStore(client, prefix) for client in clients]
        fill = [set_value(ref("C", f"v{i:05}"), "0") for i in range(MAX_VARIABLES - 10)]
        assert await stores[0].update_variables("S", fill) == 0
        results = await asyncio.gather(
            *(
                stores[i % 4].update_variables("S", [set_value(ref("N", f"n{i:02}"), "1")])
                for i in range(30)
            )
        )
        assert sum(results) == 20
        assert await clients[0].zcard(f"{prefix}state:variable-index:S") == MAX_VARIABLES
        new = await stores[0].variables("S", component="N", limit=100)
        assert len(new.items) == 10
    finally:
        for client in clients:
            await client.aclose()


async def test_the_factory_opens_the_redis_store(redis_url: str) -> None:
    async with open_services(Settings(redis_url=redis_url)) as services:
        assert isinstance(services.station_state, RedisStationStateStore)


async def test_closed_port_raises_store_unavailable_promptly() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        store = RedisStationStateStore(client)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.update_variables("S", [set_value(ref("A", "v"), "1")]),
            lambda: store.variables("S"),
            lambda: store.configuration("S"),
            lambda: store.local_list("S"),
            lambda: store.certificates("S"),
            lambda: store.forget("S"),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable):
                await call()
    finally:
        await client.aclose()
