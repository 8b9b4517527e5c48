"""The event log contract: order, filters, the bound, long polls and named cursors.

Run here against the in-memory log; tests/integration/test_redis_events.py collects the
``test_log_*`` tests again with a Redis stream by overriding ``make_log``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest

from services.events import Event, EventKind, EventLog, MemoryEventLog, event_id_after, event_of

MakeLog = Callable[..., EventLog]


@pytest.fixture
def make_log() -> MakeLog:
    def make(max_events: int = 10_000) -> EventLog:
        return MemoryEventLog(max_events=max_events)

    return make


def connected(station: str) -> Event:
    return event_of(EventKind.STATION_CONNECTED, "2026-01-01T00:00:00.000Z", station, {})


async def test_log_ids_sort_in_append_order_and_reads_resume_after_a_cursor(
    make_log: MakeLog,
) -> None:
    log = make_log()
    appended = [await log.append(connected(f"CS-{n}")) for n in range(5)]
    ids = [event.id for event in appended]
    assert all(event_id_after(b, a) for a, b in itertools.pairwise(ids))
    page = await log.read(limit=2)
    assert [e.station_id for e in page.events] == ["CS-0", "CS-1"]
    rest = await log.read(page.last_id)
    assert [e.station_id for e in rest.events] == ["CS-2", "CS-3", "CS-4"]
    assert (await log.read(rest.last_id)).events == []
    assert await log.latest_id() == ids[-1]


async def test_log_filters_move_the_cursor_past_what_they_leave_out(make_log: MakeLog) -> None:
    log = make_log()
    await log.append(connected("CS-1"))
    status = event_of(EventKind.CONNECTOR_STATUS, "2026-01-01T00:00:01.000Z", "CS-2", {})
    last = await log.append(status)
    page = await log.read(kinds=frozenset({"connector.status"}), station_id="CS-2")
    assert [e.kind for e in page.events] == ["connector.status"]
    other = await log.read(station_id="CS-9")
    assert other.events == [] and other.last_id == last.id


async def test_log_bound_drops_the_oldest_and_says_so_to_a_late_reader(
    make_log: MakeLog,
) -> None:
    log = make_log(max_events=3)
    first = await log.append(connected("CS-0"))
    for n in range(1, 5):
        await log.append(connected(f"CS-{n}"))
    page = await log.read(first.id)
    assert page.truncated
    assert [e.station_id for e in page.events] == ["CS-2", "CS-3", "CS-4"]
    assert not (await log.read(page.events[0].id)).truncated


async def test_log_long_poll_wakes_on_append_and_times_out_empty(make_log: MakeLog) -> None:
    log = make_log()
    start = await log.latest_id()
    waiter = asyncio.create_task(log.wait(start, 5.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await log.append(connected("CS-1"))
    page = await asyncio.wait_for(waiter, 1)
    assert [e.station_id for e in page.events] == ["CS-1"]
    empty = await log.wait(page.last_id, 0.01)
    assert empty.events == [] and empty.last_id == page.last_id


async def test_log_cursors_are_kept_by_name(make_log: MakeLog) -> None:
    log = make_log()
    assert await log.get_cursor("webhooks") is None
    await log.set_cursor("webhooks", "5-0")
    assert await log.get_cursor("webhooks") == "5-0"


async def test_log_one_append_wakes_every_waiter(make_log: MakeLog) -> None:
    log = make_log()
    start = await log.latest_id()
    waiters = [asyncio.create_task(log.wait(start, 5.0)) for _ in range(20)]
    await asyncio.sleep(0.05)
    assert not any(waiter.done() for waiter in waiters)
    appended = await log.append(connected("CS-1"))
    pages = await asyncio.wait_for(asyncio.gather(*waiters), 3)
    assert all([e.id for e in page.events] == [appended.id] for page in pages)


async def test_log_filtered_wait_sleeps_through_other_events(make_log: MakeLog) -> None:
    log = make_log()
    start = await log.latest_id()
    waiter = asyncio.create_task(log.wait(start, 5.0, station_id="CS-2"))
    await log.append(connected("CS-1"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    wanted = await log.append(connected("CS-2"))
    page = await asyncio.wait_for(waiter, 3)
    assert [e.id for e in page.events] == [wanted.id]
    assert page.events[0].station_id == "CS-2"


async def test_log_waits_report_truncation_and_keep_what_was_appended(make_log: MakeLog) -> None:
    log = make_log(max_events=2)
    first = await log.append(connected("CS-0"))
    for n in range(1, 4):
        await log.append(connected(f"CS-{n}"))
    page = await log.wait(first.id, 1.0)
    assert page.truncated
    assert [e.station_id for e in page.events] == ["CS-2", "CS-3"]
    stored = page.events[0]
    assert stored.kind == "station.connected" and stored.at == "2026-01-01T00:00:00.000Z"
    assert stored.v == 1 and stored.data == {}


async def test_log_an_empty_log_reads_empty(make_log: MakeLog) -> None:
    log = make_log()
    assert await log.latest_id() is None
    page = await log.read()
    assert page.events == [] and page.last_id is None and not page.truncated
    assert (await log.wait(None, 0.01)).events == []
