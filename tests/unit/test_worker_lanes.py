"""The manager's lanes: an idle station's message runs at once, without a task, and every
rule of the lanes (per-station order, the concurrency bound, a failing handler) still holds."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from csms import eager
from csms.bus.memory import MemoryBroker
from csms.envelope import Kind
from manager.context import CallContext, iso
from manager.worker import _iso_at
from tests.timing import timeout
from tests.unit.test_worker import NOW, WAIT, StationSide, heartbeat_call, running, settled


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
async def station(broker: MemoryBroker) -> AsyncIterator[StationSide]:
    async with StationSide(broker) as side:
        yield side


class Lanes:
    """What the manager's lanes started: every lane, and the tasks of those that waited."""

    def __init__(self) -> None:
        self.started = 0
        self.tasks: list[asyncio.Task[None]] = []


@pytest.fixture
def lanes(monkeypatch: pytest.MonkeyPatch) -> Lanes:
    seen = Lanes()
    start = eager.start

    def spy(coro: Any, *, name: str | None = None) -> asyncio.Task[None] | None:
        seen.started += 1
        task = start(coro, name=name)
        if task is not None:
            seen.tasks.append(task)
        return task

    monkeypatch.setattr(eager, "start", spy)
    return seen


async def test_a_message_that_never_waits_costs_no_task(
    broker: MemoryBroker, station: StationSide, lanes: Lanes
) -> None:
    async def heartbeat(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        return {"currentTime": NOW}

    async with running(broker, handlers={"Heartbeat": heartbeat}) as m:
        for n in range(5):
            await station.send(heartbeat_call(station=f"CP{n}", message_id=f"m{n}"))
        answers = [await station.receive() for _ in range(5)]
        await settled(m)
        assert m.active_stations == 0
    assert [envelope.kind for _, envelope in answers] == [Kind.RESULT] * 5
    assert lanes.started == 5
    assert lanes.tasks == []


async def test_a_lane_run_at_once_keeps_order_when_its_station_sends_again_meanwhile(
    broker: MemoryBroker, station: StationSide, lanes: Lanes
) -> None:
    release = asyncio.Event()
    runs: list[str] = []

    async def heartbeat(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        runs.append(f"{ctx.station_id}:{ctx.message_id}:start")
        if ctx.message_id == "m1":
            await release.wait()  # the first message waits, as on a store round trip
        runs.append(f"{ctx.station_id}:{ctx.message_id}:end")
        return {"currentTime": NOW}

    async with running(broker, handlers={"Heartbeat": heartbeat}) as m:
        await station.send(heartbeat_call(station="CP1", message_id="m1"))
        await station.send(heartbeat_call(station="CP1", message_id="m2"))
        await station.send(heartbeat_call(station="CP2", message_id="m3"))
        _, first = await station.receive()
        assert (first.station, first.message_id) == ("CP2", "m3")
        assert m.active_stations == 1  # CP1's lane holds m2 behind the waiting m1
        assert "CP1:m2:start" not in runs
        release.set()
        answers = [(await station.receive())[1] for _ in range(2)]
        await settled(m)
    assert [(a.station, a.message_id) for a in answers] == [("CP1", "m1"), ("CP1", "m2")]
    assert runs.index("CP1:m1:end") < runs.index("CP1:m2:start")
    assert lanes.started == 2  # m2 joined CP1's lane
    assert len(lanes.tasks) == 1  # only the lane whose work waited got a task


async def test_the_concurrency_bound_holds_for_lanes_run_at_once(
    broker: MemoryBroker, station: StationSide
) -> None:
    release = asyncio.Event()
    started: list[str] = []
    everyone_in = asyncio.Event()

    async def heartbeat(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        started.append(ctx.station_id)
        if len(started) == 3:
            everyone_in.set()
        await release.wait()
        return {"currentTime": NOW}

    async with running(broker, handlers={"Heartbeat": heartbeat}, concurrency=3) as m:
        for n in range(6):
            await station.send(heartbeat_call(station=f"CP{n}", message_id=f"m{n}"))
        await asyncio.wait_for(everyone_in.wait(), timeout(WAIT))
        for _ in range(20):  # loop turns for a reader that ignored the bound to go on
            await asyncio.sleep(0)
        assert started == ["CP0", "CP1", "CP2"]
        assert m.pending == 3
        release.set()
        answers = [(await station.receive())[1] for _ in range(6)]
        await settled(m)
    assert sorted(a.station for a in answers) == [f"CP{n}" for n in range(6)]
    assert len(started) == 6


@pytest.mark.parametrize("waits_first", [False, True])
async def test_a_handler_that_raises_gets_internal_error_and_the_lane_goes_on(
    broker: MemoryBroker, station: StationSide, waits_first: bool
) -> None:
    async def heartbeat(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        if waits_first:
            await asyncio.sleep(0)
        if ctx.message_id == "bad":
            raise RuntimeError("handler bug")
        return {"currentTime": NOW}

    async with running(broker, handlers={"Heartbeat": heartbeat}) as m:
        await station.send(heartbeat_call(message_id="bad"))
        await station.send(heartbeat_call(message_id="good"))
        answers = [(await station.receive())[1] for _ in range(2)]
        await settled(m)
        assert m.active_stations == 0
        assert m.pending == 0
    assert [(a.message_id, a.kind) for a in answers] == [
        ("bad", Kind.ERROR),
        ("good", Kind.RESULT),
    ]
    assert answers[0].error_code == "InternalError"


def test_message_times_render_as_the_datetime_route_does() -> None:
    rng = random.Random(11)
    samples = [0.0, 0.0005, 0.9999995, 1_767_225_599.9995, 1_767_225_600.0, -0.5]
    samples += [rng.uniform(0, 4e9) for _ in range(2000)]
    samples += [round(rng.uniform(0, 4e9), 3) + 5e-7 for _ in range(2000)]
    for unix_time in samples:
        expected = iso(dt.datetime.fromtimestamp(unix_time, dt.UTC))
        assert _iso_at(unix_time) == expected, unix_time
