"""The message log on a real, private redis-server: one pipelined round trip per flush, the
per-station bound and the age, following with one blocking reader per process, and the
station messages' own round trips unchanged with the log on (its flushes are off their path).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from csms.envelope import Envelope, Kind
from services.message_log import call_entry
from services.redis_message_log import RedisMessageLog
from tests.integration.test_redis_round_trips import (
    COUNTED,
    MAX_ROUND_TRIPS,
    counting_client,
    redis_services,
    run_sessions,
)
from tests.timing import timeout

pytestmark = pytest.mark.integration

LOG_COMMANDS = {"XADD", "XTRIM", "PEXPIRE"}


def heartbeat(station_id: str, n: int) -> Any:
    return call_entry(
        Envelope(
            kind=Kind.CALL,
            station=station_id,
            version="ocpp2.0.1",
            message_id=f"m{n}",
            action="Heartbeat",
            payload={"n": n},
            at=1_700_000_000.0 + n,
        )
    )


def prefix() -> str:
    return f"ml{uuid.uuid4().hex[:8]}:"


async def test_a_flush_is_one_pipelined_round_trip(redis_url: str) -> None:
    client, trips = counting_client(redis_url)
    log = RedisMessageLog(client, prefix(), flush_interval=60, batch=1000)
    try:
        for n in range(30):
            log.record(heartbeat(f"S{n % 3}", n))
        await asyncio.sleep(0)
        trips.clear()
        assert await log.flush() == 30
        assert len(trips) == 1, trips
        assert sorted(trips[0]) == sorted(["XADD"] * 30 + ["XTRIM"] * 3 + ["PEXPIRE"] * 3)
        page = await log.list_messages("S1", order="asc", limit=100)
    finally:
        await log.aclose()
        await client.aclose()
    assert [e.message_id for e in page.items] == [f"m{n}" for n in range(1, 30, 3)]
    assert log.cells.written.value == 30 and log.cells.flush_seconds.count == 1


async def test_the_flusher_writes_batches_in_the_background(redis_url: str) -> None:
    client, trips = counting_client(redis_url)
    log = RedisMessageLog(client, prefix(), flush_interval=0.05, batch=50)
    try:
        for n in range(120):
            log.record(heartbeat("BG", n))
        for _ in range(int(timeout(10) / 0.01)):
            if log.cells.written.value == 120:
                break
            await asyncio.sleep(0.01)
        flushes = [trip for trip in trips if set(trip) <= LOG_COMMANDS]
        newest = await log.list_messages("BG", limit=1)
    finally:
        await log.aclose()
        await client.aclose()
    assert log.cells.written.value == 120
    # Batches of at most 50 entries, each in one round trip.
    assert [trip.count("XADD") for trip in flushes] == [50, 50, 20]
    assert [e.message_id for e in newest.items] == ["m119"]


async def test_each_station_keeps_its_newest_entries_within_the_bound(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    client = aioredis.from_url(redis_url)
    store_prefix = prefix()
    log = RedisMessageLog(client, store_prefix, max_per_station=50, max_age=3600, batch=100)
    try:
        for n in range(1000):
            log.record(heartbeat("BOUND", n))
            if n % 100 == 99:
                await log.flush()
        log.record(heartbeat("OTHER", 0))
        await log.flush()
        key = log.key("BOUND")
        length = await redis_client.xlen(key)
        ttl = await redis_client.pttl(key)
        everything: list[str] = []
        cursor = None
        while True:
            page = await log.list_messages("BOUND", cursor=cursor, limit=40)
            everything.extend(e.message_id for e in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
    finally:
        await log.aclose()
        await client.aclose()
    # MAXLEN ~ trims whole stream nodes (100 entries each by default): at least the bound
    # is kept, never more than one node beyond it.
    assert 50 <= length <= 150, length
    assert everything == [f"m{n}" for n in range(999, 999 - length, -1)]
    assert 0 < ttl <= 3_600_000
    assert key == f"{store_prefix}msglog:{{BOUND}}"


async def test_followers_share_one_blocking_reader(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    client = aioredis.from_url(redis_url)
    writer_client = aioredis.from_url(redis_url)
    store_prefix = prefix()
    reader = RedisMessageLog(client, store_prefix, follow_block=0.5)
    writer = RedisMessageLog(writer_client, store_prefix, flush_interval=0.01)
    try:
        writer.record(heartbeat("F1", 0))  # before following: not followed
        await writer.flush()
        async with (
            reader.follow("F1") as first,
            reader.follow("F1") as second,
            reader.follow("F2") as other,
        ):
            for n in range(1, 4):
                writer.record(heartbeat("F1", n))
            writer.record(heartbeat("F2", 9))
            got_first = [await first.get(timeout(5)) for _ in range(3)]
            got_second = [await second.get(timeout(5)) for _ in range(3)]
            got_other = await other.get(timeout(5))
            clients = await redis_client.client_list()
            blocked = [c for c in clients if c.get("cmd") == "xread"]
    finally:
        await writer.aclose()
        await reader.aclose()
        await client.aclose()
        await writer_client.aclose()
    assert [e.message_id if e else None for e in got_first] == ["m1", "m2", "m3"]
    assert [e.message_id if e else None for e in got_second] == ["m1", "m2", "m3"]
    assert got_other is not None and got_other.message_id == "m9"
    assert len(blocked) <= 1, blocked  # one reader for three followers (0: between reads)


async def test_station_messages_keep_their_two_round_trips_with_the_log_on(
    redis_url: str,
) -> None:
    """The round-trip test's sessions with the Redis message log on the same counted
    client: each message still costs at most two round trips of its own; the log's writes
    are separate round trips of XADDs only, made by its flusher, not by the message."""
    client, trips = counting_client(redis_url)
    services = redis_services(client, prefix())
    services.message_log = log = RedisMessageLog(client, prefix(), flush_interval=0.2)
    try:
        _, costs = await run_sessions(services, trips)
        await log.aclose()
        logged = {
            station: await log.list_messages(station, limit=1000) for station in COUNTED.values()
        }
    finally:
        await client.aclose()
    own = {
        label: [trip for trip in found if not set(trip) <= LOG_COMMANDS]
        for label, found in costs.items()
    }
    report = "\n".join(f"{label}: {found}" for label, found in own.items())
    assert len(own) == 16
    assert all(len(found) <= MAX_ROUND_TRIPS for found in own.values()), report
    assert all(not (set(trip) & LOG_COMMANDS) for found in own.values() for trip in found)
    for station, page in logged.items():
        calls = [e for e in page.items if e.type == "call" and e.direction == "in"]
        # Both sessions' Calls of the counted station (CSMS calls and answers besides).
        assert len(calls) == (7 if "16" in station else 9), (station, len(calls))
