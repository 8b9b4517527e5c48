"""The operations layer on the real fleet: ``csms gateway`` + ``csms manager`` processes on the
private Mosquitto and Redis, stations built with the ``ocpp`` package, and a CallSender on its
own MQTT connection (as the CLI and the API use it): every CSMS call ends with an outcome."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201

from csms.bus.mqtt import MqttBus
from csms.topics import Topics
from operations.calls import CallSender, Outcome
from tests.integration.fleet import Fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(mqtt_url: str, redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(mqtt_url, redis_url, tmp_path, managers=1)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
async def sender(fleet: Fleet) -> AsyncIterator[CallSender]:
    async with MqttBus(fleet.mqtt_url) as bus:
        assert await bus.wait_connected(10)
        async with CallSender(bus, Topics(prefix=fleet.prefix), origin="test") as calls:
            yield calls


class Station201(ChargePoint201):
    @on("Reset")
    async def on_reset(self, type: str, **_: Any) -> result201.Reset:
        return result201.Reset(status="Accepted" if type == "Immediate" else "Rejected")


class Station16(ChargePoint16):
    @on("ChangeConfiguration")
    async def on_change_configuration(
        self, key: str, value: str, **_: Any
    ) -> result16.ChangeConfiguration:
        return result16.ChangeConfiguration(
            status="Accepted" if key == "HeartbeatInterval" else "NotSupported"
        )  # type: ignore[arg-type]


async def run_station(fleet: Fleet, station: Any, version: str, name: str) -> tuple[Any, Any]:
    ws = await websockets.connect(fleet.url(name), subprotocols=[version])  # type: ignore[list-item]
    charge_point = station(name, ws, response_timeout=10)
    task = asyncio.create_task(charge_point.start())
    return ws, task


async def until_held(
    sender: CallSender, name: str, version: str, payload: Any, action: str, wait: float = 20
) -> Any:
    """Send until the gateway's subscription for a station that just connected is in place."""
    for _ in range(50):
        outcome = await sender.send(name, version, action, payload, timeout=wait)
        if outcome.outcome is not Outcome.OFFLINE:
            return outcome
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} never held by a gateway")


async def test_calls_to_both_versions_return_the_stations_answer(
    fleet: Fleet, sender: CallSender
) -> None:
    name201, name16 = f"OPS2-{uuid.uuid4().hex[:6]}", f"OPS1-{uuid.uuid4().hex[:6]}"
    ws201, task201 = await run_station(fleet, Station201, "ocpp2.0.1", name201)
    ws16, task16 = await run_station(fleet, Station16, "ocpp1.6", name16)
    try:
        reset = await until_held(sender, name201, "ocpp2.0.1", {"type": "Immediate"}, "Reset")
        assert reset.outcome is Outcome.RESULT and reset.payload == {"status": "Accepted"}
        change = await until_held(
            sender,
            name16,
            "ocpp1.6",
            {"key": "HeartbeatInterval", "value": "60"},
            "ChangeConfiguration",
        )
        assert change.outcome is Outcome.RESULT and change.payload == {"status": "Accepted"}
        refused = await sender.send(
            name16, "ocpp1.6", "ChangeConfiguration", {"key": "Nope", "value": "1"}
        )
        assert refused.payload == {"status": "NotSupported"}
    finally:
        for task in (task201, task16):
            task.cancel()
        await ws201.close()
        await ws16.close()


async def test_offline_station_and_dead_gateway_still_end_with_an_outcome(
    fleet: Fleet, sender: CallSender
) -> None:
    offline = await sender.send(
        f"NONE-{uuid.uuid4().hex[:6]}", "ocpp2.0.1", "Reset", {"type": "Immediate"}
    )
    assert offline.outcome is Outcome.OFFLINE
    # A station that never answers, behind a gateway that dies with the call in flight:
    # no gateway is left to publish a timeout, the caller's own deadline ends the wait.
    name = f"DEAD-{uuid.uuid4().hex[:6]}"
    async with websockets.connect(fleet.url(name), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        sending = asyncio.create_task(
            until_held(sender, name, "ocpp2.0.1", {"type": "Immediate"}, "Reset", wait=4)
        )
        await asyncio.wait_for(ws.recv(), 20)  # the call reached the station
        gateway = fleet.gateway.process
        assert gateway is not None
        gateway.kill()
        outcome = await sending
    assert outcome.outcome is Outcome.NO_OUTCOME
