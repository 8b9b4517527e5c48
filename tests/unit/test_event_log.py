"""The in-memory event log: order, filters, the bound, long polls and named cursors."""

from __future__ import annotations

import asyncio
import itertools

from services.events import Event, EventKind, MemoryEventLog, event_id_after, event_of


def connected(station: str) -> Event:
    return event_of(EventKind.STATION_CONNECTED, "2026-01-01T00:00:00.000Z", station, {})


async def test_ids_sort_in_append_order_and_reads_resume_after_a_cursor() -> None:
    log = MemoryEventLog()
    appended = [await log.append(connected(f"CS-{n}")) for n in range(5)]
    ids = [event.id for event in appended]
    assert all(event_id_after(b, a) for a, b in itertools.pairwise(ids))
    page = await log.read(limit=2)
    assert [e.station_id for e in page.events] == ["CS-0", "CS-1"]
    rest = await log.read(page.last_id)
    assert [e.station_id for e in rest.events] == ["CS-2", "CS-3", "CS-4"]
    assert (await log.read(rest.last_id)).events == []
    assert await log.latest_id() == ids[-1]


async def test_filters_move_the_cursor_past_what_they_leave_out() -> None:
    log = MemoryEventLog()
    await log.append(connected("CS-1"))
    status = event_of(EventKind.CONNECTOR_STATUS, "2026-01-01T00:00:01.000Z", "CS-2", {})
    last = await log.append(status)
    page = await log.read(kinds=frozenset({"connector.status"}), station_id="CS-2")
    assert [e.kind for e in page.events] == ["connector.status"]
    other = await log.read(station_id="CS-9")
    assert other.events == [] and other.last_id == last.id


async def test_the_bound_drops_the_oldest_and_says_so_to_a_late_reader() -> None:
    log = MemoryEventLog(max_events=3)
    first = await log.append(connected("CS-0"))
    for n in range(1, 5):
        await log.append(connected(f"CS-{n}"))
    page = await log.read(first.id)
    assert page.truncated
    assert [e.station_id for e in page.events] == ["CS-2", "CS-3", "CS-4"]
    assert not (await log.read(page.events[0].id)).truncated


async def test_a_long_poll_wakes_on_append_and_times_out_empty() -> None:
    log = MemoryEventLog()
    start = await log.latest_id()
    waiter = asyncio.create_task(log.wait(start, 5.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await log.append(connected("CS-1"))
    page = await asyncio.wait_for(waiter, 1)
    assert [e.station_id for e in page.events] == ["CS-1"]
    empty = await log.wait(page.last_id, 0.01)
    assert empty.events == [] and empty.last_id == page.last_id


async def test_cursors_are_kept_by_name() -> None:
    log = MemoryEventLog()
    assert await log.get_cursor("webhooks") is None
    await log.set_cursor("webhooks", "5-0")
    assert await log.get_cursor("webhooks") == "5-0"
