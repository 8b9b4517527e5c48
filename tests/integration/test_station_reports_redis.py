"""The station report store's contract, run on both implementations: in memory and on a real
(private) Redis, where the caps must hold against what is stored."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.redis_station_reports import RedisStationReportStore
from services.station_reports import (
    ENTRY_CAPS,
    HISTORY_CAPS,
    Append,
    EntryKind,
    HistoryKind,
    MemoryStationReportStore,
    Put,
    ReportChange,
    StationReportStore,
)


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[StationReportStore]:
    if request.param == "memory":
        yield MemoryStationReportStore()
        return
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    try:
        yield RedisStationReportStore(client, "test:")
    finally:
        await client.aclose()


STATION = "CS/1:x"


async def test_puts_deletes_and_appends_apply_together(store: StationReportStore) -> None:
    first = ReportChange(
        puts=[Put(EntryKind.RESERVATIONS, "1", {"status": "Expired"})],
        appends=[Append(HistoryKind.METER_VALUES, {"n": 1}, scope="2")],
    )
    assert await store.apply(STATION, first) == 0
    second = ReportChange(
        puts=[Put(EntryKind.RESERVATIONS, "2", {"status": "Removed"})],
        deletes=[(EntryKind.RESERVATIONS, "1")],
        appends=[Append(HistoryKind.METER_VALUES, {"n": 2}, scope="2")],
    )
    await store.apply(STATION, second)
    assert await store.entries(STATION, EntryKind.RESERVATIONS) == {"2": {"status": "Removed"}}
    assert await store.entry(STATION, EntryKind.RESERVATIONS, "1") is None
    history = await store.history(STATION, HistoryKind.METER_VALUES, "2")
    assert history == [{"n": 2}, {"n": 1}]
    assert await store.history(STATION, HistoryKind.METER_VALUES, "2", limit=1) == [{"n": 2}]
    assert await store.scopes(STATION, HistoryKind.METER_VALUES) == ["2"]
    assert await store.entries("other", EntryKind.RESERVATIONS) == {}
    await store.forget(STATION)
    assert await store.entries(STATION, EntryKind.RESERVATIONS) == {}
    assert await store.history(STATION, HistoryKind.METER_VALUES, "2") == []
    assert await store.scopes(STATION, HistoryKind.METER_VALUES) == []


async def test_entries_are_capped_and_stored_ones_still_update(store: StationReportStore) -> None:
    kind = EntryKind.CHARGING_NEEDS
    cap = ENTRY_CAPS[kind]
    fill = ReportChange(puts=[Put(kind, str(n), {"n": n}) for n in range(cap)])
    assert await store.apply(STATION, fill) == 0
    over = ReportChange(puts=[Put(kind, "new", {"n": -1}), Put(kind, "0", {"n": 100})])
    assert await store.apply(STATION, over) == 1
    held = await store.entries(STATION, kind)
    assert len(held) == cap
    assert "new" not in held
    assert held["0"] == {"n": 100}


async def test_histories_keep_the_newest(store: StationReportStore) -> None:
    kind = HistoryKind.FIRMWARE
    cap = HISTORY_CAPS[kind]
    appends = [Append(kind, {"n": n}) for n in range(cap + 5)]
    await store.apply(STATION, ReportChange(appends=appends))
    history = await store.history(STATION, kind, limit=cap + 10)
    assert len(history) == cap
    assert history[0] == {"n": cap + 4}
    assert history[-1] == {"n": 5}
