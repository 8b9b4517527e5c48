"""The manager's lanes: every handler runs in a task of its own, and every rule of the lanes
(per-station order, the concurrency bound, a failing handler) holds."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from csms.bus.memory import MemoryBroker
from csms.envelope import Kind, decode_envelope
from csms.versions import OcppVersion
from manager.context import CallContext, iso
from manager.worker import _iso_at
from services.action_rules import ActionDenied, ActionList, ActionRules
from tests.timing import timeout
from tests.unit.test_worker import (
    NOW,
    TOPICS,
    WAIT,
    StationSide,
    heartbeat_call,
    make_services,
    running,
    settled,
)

V201 = OcppVersion.OCPP201


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
async def station(broker: MemoryBroker) -> AsyncIterator[StationSide]:
    async with StationSide(broker) as side:
        yield side


async def test_a_handler_runs_in_a_task_of_its_own_even_when_nothing_waits_before_it(
    broker: MemoryBroker, station: StationSide
) -> None:
    """Operators' plug-ins (a token store or tariff over httpx, so anyio) need a real task
    from their first step: on memory stores nothing waits before the handler runs."""
    tasks: list[asyncio.Task[Any] | None] = []

    async def heartbeat(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        tasks.append(asyncio.current_task())
        with anyio.CancelScope():  # keeps per-task state: refuses anything but a real task
            await anyio.lowlevel.checkpoint()
        return {"currentTime": NOW}

    async with running(broker, handlers={"Heartbeat": heartbeat}) as m:
        for n in range(3):
            await station.send(heartbeat_call(station=f"CP{n}", message_id=f"m{n}"))
        answers = [await station.receive() for _ in range(3)]
        await settled(m)
    assert [envelope.kind for _, envelope in answers] == [Kind.RESULT] * 3
    assert all(isinstance(task, asyncio.Task) for task in tasks) and len(set(tasks)) == 3


async def test_a_lane_keeps_order_when_its_station_sends_again_meanwhile(
    broker: MemoryBroker, station: StationSide
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


async def test_the_concurrency_bound_holds_for_lanes(
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


async def test_calls_a_handler_sends_are_held_to_the_stations_action_rules(
    broker: MemoryBroker, station: StationSide
) -> None:
    services = make_services()
    deny = ActionRules(csms_calls=ActionList(allow=None, deny=frozenset({"CostUpdated"})))
    await services.action_rules.put("CP1", deny)
    refused: list[BaseException] = []

    async def heartbeat(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        for action, call in (
            ("CostUpdated", {"totalCost": 1.5, "transactionId": "T1"}),
            ("TriggerMessage", {"requestedMessage": "StatusNotification"}),
        ):
            try:
                await ctx.calls.call(ctx.station_id, ctx.version, action, call)
            except ActionDenied as denied:
                refused.append(denied)
        return {"currentTime": NOW}

    async with (
        broker.client() as gateway,
        running(broker, services, handlers={"Heartbeat": heartbeat}) as m,
    ):
        await gateway.subscribe(TOPICS.outbound(V201, "CP1"))
        await station.send(heartbeat_call(station="CP1", message_id="m1", version=V201))
        await station.receive()
        await settled(m)
        sent = decode_envelope((await anext(gateway.messages())).payload)
    assert [denied.action for denied in refused if isinstance(denied, ActionDenied)] == [
        "CostUpdated"
    ]
    assert sent.action == "TriggerMessage"  # the first and only call published
