"""The operations layer's CallSender on the embedded composition: gateway and manager on the
in-process bus, a real WebSocket station, every outcome a caller can get."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from csms.bus.memory import MemoryBroker
from csms.config import Settings
from csms.topics import Topics
from gateway import Gateway
from manager.worker import Manager
from operations.calls import CallSender, InvalidCall, Outcome
from services.factory import open_services

V201 = "ocpp2.0.1"
RESET = {"type": "Immediate"}


@contextlib.asynccontextmanager
async def embedded(**overrides: Any) -> AsyncIterator[tuple[Gateway, Manager, CallSender]]:
    values: dict[str, Any] = {
        "listen_port": 0,
        "call_timeout": 0.5,
        "call_queue_size": 1,
        "ping_interval": None,
        "ping_timeout": None,
    }
    values.update(overrides)
    settings = Settings(**values)
    broker = MemoryBroker()
    async with contextlib.AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(settings))
        manager_bus = await stack.enter_async_context(broker.client())
        gateway_bus = await stack.enter_async_context(broker.client())
        sender_bus = await stack.enter_async_context(broker.client())
        manager = await stack.enter_async_context(
            Manager(settings, manager_bus, services, compile_schemas=False)
        )
        gateway = await stack.enter_async_context(
            Gateway(settings, gateway_bus, registry=services.stations, first_try=True)
        )
        sender = await stack.enter_async_context(CallSender(sender_bus, Topics(), origin="test"))
        yield gateway, manager, sender


async def connected(gateway: Gateway, station: str) -> ClientConnection:
    ws = await connect(gateway.url_for(station), subprotocols=[V201])  # type: ignore[list-item]
    for _ in range(200):  # until the gateway holds it (subscribed to its out topic)
        if station in gateway.connections:
            break
        await asyncio.sleep(0.01)
    return ws


async def answer_next(ws: ClientConnection, reply: Any) -> list[Any]:
    """Read the next CSMS call and answer it with ``reply(message_id)`` (None: no answer)."""
    call = json.loads(await asyncio.wait_for(ws.recv(), 5))
    frame = reply(call[1])
    if frame is not None:
        await ws.send(json.dumps(frame))
    return list(call)


async def test_result_error_and_timeout_reach_the_caller() -> None:
    async with embedded() as (gateway, manager, sender):
        ws = await connected(gateway, "OP-1")
        try:
            sending = asyncio.create_task(sender.send("OP-1", V201, "Reset", RESET))
            call = await answer_next(ws, lambda mid: [3, mid, {"status": "Accepted"}])
            outcome = await sending
            assert call[2:] == ["Reset", RESET]
            assert outcome.outcome is Outcome.RESULT and outcome.payload == {"status": "Accepted"}
            assert outcome.message_id == call[1] and outcome.sent_at is not None

            sending = asyncio.create_task(sender.send("OP-1", V201, "Reset", RESET))
            await answer_next(ws, lambda mid: [4, mid, "NotSupported", "no", {}])
            outcome = await sending
            assert (outcome.outcome, outcome.error_code) == (Outcome.ERROR, "NotSupported")

            sending = asyncio.create_task(sender.send("OP-1", V201, "Reset", RESET))
            await answer_next(ws, lambda mid: None)  # the station stays silent
            outcome = await sending
            assert outcome.outcome is Outcome.TIMEOUT and not outcome.answered
        finally:
            await ws.close()
        # The managers got every outcome too (result handlers run whoever waits).
        await manager.idle()
        assert manager.stats.results >= 3


async def test_offline_station_is_known_at_once() -> None:
    async with embedded() as (_gateway, _manager, sender):
        outcome = await sender.send("NOBODY", V201, "Reset", RESET, timeout=30)
    assert outcome.outcome is Outcome.OFFLINE and outcome.message_id is None


async def test_full_queue_is_undelivered() -> None:
    async with embedded(call_timeout=5.0) as (gateway, _manager, sender):
        ws = await connected(gateway, "OP-Q")
        try:
            sends = [
                asyncio.create_task(sender.send("OP-Q", V201, "Reset", RESET)) for _ in range(3)
            ]
            # One in flight, one queued (call_queue_size = 1), the third overflows.
            done, _ = await asyncio.wait(sends, return_when=asyncio.FIRST_COMPLETED, timeout=5)
            (first,) = done
            overflow = first.result()
            assert overflow.outcome is Outcome.UNDELIVERED
            assert overflow.error_description == "call queue full"
        finally:
            await ws.close()
        rest = await asyncio.gather(*(task for task in sends if task is not first))
        # The station left: what was in flight or queued is undelivered too.
        assert {outcome.outcome for outcome in rest} == {Outcome.UNDELIVERED}


async def test_caller_deadline_gives_no_outcome() -> None:
    async with embedded(call_timeout=5.0) as (gateway, _manager, sender):
        ws = await connected(gateway, "OP-D")
        try:
            outcome = await sender.send("OP-D", V201, "Reset", RESET, timeout=0.2)
        finally:
            await ws.close()
    assert outcome.outcome is Outcome.NO_OUTCOME and outcome.message_id is not None


@pytest.mark.parametrize(
    ("action", "payload", "field"),
    [("Reset", {"type": "Sometime"}, "type"), ("Reset", {}, "type"), ("NoSuchAction", {}, "")],
)
async def test_invalid_calls_are_refused_before_sending(
    action: str, payload: dict[str, Any], field: str
) -> None:
    async with embedded() as (gateway, _manager, sender):
        ws = await connected(gateway, "OP-V")
        try:
            with pytest.raises(InvalidCall) as refused:
                await sender.send("OP-V", V201, action, payload)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)  # nothing reached the station
        finally:
            await ws.close()
    assert refused.value.field == field
