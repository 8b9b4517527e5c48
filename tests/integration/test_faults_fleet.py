"""Faults on the real fleet: ``csms gateway`` + ``csms manager`` processes on the private
Mosquitto and Redis, with processes killed, frozen and stalled under connected stations.

What an operator relies on: a dead gateway's stations are seen offline within seconds, a
manager's death or a Redis stall never makes a station wait for a claim to expire, and every
station Call is answered promptly, by the CSMS or by the gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets

from csms.bus import NoSubscribers
from csms.bus.mqtt import MqttBus
from csms.envelope import Envelope, Kind
from csms.topics import Topics
from manager.idempotency import idempotency_key
from operations.call_maker import CallMaker
from services.redis_store import RedisStationRegistry
from tests.integration.fleet import CsmsProcess, Fleet
from tests.servers import ServerProcess

pytestmark = pytest.mark.integration

ANSWER_TIMEOUT = 30
"""The gateway's own deadline in these fleets: an answer sooner is not the pipe timing out."""
LATE = "CSMS did not answer in time"


@pytest.fixture
def fleet(
    mqtt_url: str,
    redis_url: str,
    mosquitto: ServerProcess,
    redis_process: ServerProcess,
    tmp_path: Path,
) -> Iterator[Fleet]:
    fleet = Fleet(
        mqtt_url,
        redis_url,
        tmp_path,
        managers=2,
        extra_env={
            "CSMS_ANSWER_TIMEOUT": str(ANSWER_TIMEOUT),
            "CSMS_GATEWAY_HEARTBEAT_INTERVAL": "1",
        },
    )
    fleet.start()
    try:
        yield fleet
    finally:
        for process in fleet.processes:
            if process.process is not None and process.process.poll() is None:
                os.kill(process.process.pid, signal.SIGCONT)
        fleet.stop()
        if not redis_process.running:
            redis_process.start()


async def call(ws: Any, message_id: str, action: str = "Heartbeat", payload: Any = None) -> Any:
    await ws.send(json.dumps([2, message_id, action, payload or {}]))
    return json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT + 10))


async def registry_record(redis_url: str, station: str) -> Any:
    client = aioredis.from_url(redis_url)
    try:
        return await RedisStationRegistry(client).get(station)
    finally:
        await client.aclose()


async def wait_online(redis_url: str, station: str, online: bool, attempts: int = 100) -> Any:
    """The station's record once its ``online`` is as asked (polled for up to ~20 s)."""
    record = None
    for _ in range(attempts):
        record = await registry_record(redis_url, station)
        if record is not None and record.online is online:
            return record
        await asyncio.sleep(0.2)
    raise AssertionError(f"{station} never became online={online}: {record}")


def freeze(process: CsmsProcess) -> None:
    assert process.process is not None
    os.kill(process.process.pid, signal.SIGSTOP)


def thaw(process: CsmsProcess) -> None:
    assert process.process is not None
    os.kill(process.process.pid, signal.SIGCONT)


async def test_stations_of_a_killed_gateway_turn_offline(fleet: Fleet, redis_url: str) -> None:
    station = f"GWK-{uuid.uuid4().hex[:6]}"
    async with websockets.connect(fleet.url(station), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        assert (await call(ws, "hb-1"))[0] == 3
        await wait_online(redis_url, station, True)
        gateway = fleet.gateway.process
        assert gateway is not None
        gateway.kill()  # no disconnect event: the broker's last will tells the managers
        gateway.wait(10)
        record = await wait_online(redis_url, station, False)
    assert record.gateway is None and record.connection is None


async def test_stations_of_a_frozen_gateway_turn_offline_and_back(
    fleet: Fleet, redis_url: str
) -> None:
    """A frozen gateway sends no will (the broker still sees its socket) but stops renewing
    its lease; thawed, it announces its stations again."""
    station = f"GWF-{uuid.uuid4().hex[:6]}"
    async with websockets.connect(
        fleet.url(station),
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        ping_interval=None,
    ) as ws:
        assert (await call(ws, "hb-1"))[0] == 3
        await wait_online(redis_url, station, True)
        freeze(fleet.gateway)
        try:
            await wait_online(redis_url, station, False)
        finally:
            thaw(fleet.gateway)
        record = await wait_online(redis_url, station, True)
        assert record.gateway is not None
        assert (await call(ws, "hb-2"))[0] == 3


async def test_a_stale_claim_does_not_swallow_the_stations_call(
    fleet: Fleet, redis_url: str
) -> None:
    """A claim a crashed manager left behind (or one Redis applied after the client gave up)
    is taken over by the next attempt: the Call is answered at once, not after the claim
    expires."""
    station = f"CLM-{uuid.uuid4().hex[:6]}"
    payload = {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}
    key = idempotency_key(
        Envelope(
            kind=Kind.CALL,
            station=station,
            version="ocpp2.0.1",
            message_id="boot-1",
            action="BootNotification",
            payload=payload,
        )
    )
    client = aioredis.from_url(redis_url)
    try:
        await client.set(f"{fleet.redis_prefix}idem:{key}", b"Pcrashed-worker", px=40_000)
    finally:
        await client.aclose()
    async with websockets.connect(fleet.url(station), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        answer = await call(ws, "boot-1", "BootNotification", payload)
    assert answer[0] == 3 and answer[2]["status"] == "Accepted"


async def test_a_redis_stall_costs_one_prompt_error_then_retries_are_answered(
    fleet: Fleet, redis_process: ServerProcess
) -> None:
    """Redis frozen past the client's timeout: the Call gets "storage temporarily
    unavailable"; Redis then applies the claim it had queued. The station's retry of the
    same Call must be handled, not dropped as "in progress" for the claim's lifetime."""
    station = f"STL-{uuid.uuid4().hex[:6]}"
    payload = {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}
    async with websockets.connect(fleet.url(station), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        assert (await call(ws, "hb-0"))[0] == 3
        assert redis_process.process is not None
        os.kill(redis_process.process.pid, signal.SIGSTOP)
        try:
            first = await call(ws, "boot-1", "BootNotification", payload)
        finally:
            os.kill(redis_process.process.pid, signal.SIGCONT)
        assert first[:3] == [4, "boot-1", "InternalError"] and LATE not in first[3]
        for _ in range(20):
            answer = await call(ws, "boot-1", "BootNotification", payload)
            assert answer[0] == 3 or LATE not in answer[3], answer
            if answer[0] == 3:
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"retries never answered: {answer}")
    assert answer[2]["status"] == "Accepted"


async def test_calls_are_answered_promptly_while_a_manager_is_killed(fleet: Fleet) -> None:
    """One of two managers dies: the survivor takes its share at once; no Call waits for a
    dead manager's claim."""
    stations = [f"MGK-{index}-{uuid.uuid4().hex[:4]}" for index in range(4)]
    sockets = [
        await websockets.connect(fleet.url(name), subprotocols=["ocpp1.6"])  # type: ignore[list-item]
        for name in stations
    ]
    try:
        for index, ws in enumerate(sockets):
            assert (await call(ws, f"before-{index}"))[0] == 3
        victim = fleet.manager_processes[0].process
        assert victim is not None
        victim.kill()
        victim.wait(10)
        for round_ in range(5):
            answers = await asyncio.gather(
                *(call(ws, f"after-{round_}-{index}") for index, ws in enumerate(sockets))
            )
            assert all(answer[0] == 3 for answer in answers), answers
    finally:
        for ws in sockets:
            await ws.close()


async def test_a_call_to_a_station_no_gateway_holds_fails_at_once(fleet: Fleet) -> None:
    """Its originator learns at once that nobody will deliver it, instead of never hearing
    of it again (a station that only looks online, or has just left)."""
    station = f"OFF-{uuid.uuid4().hex[:6]}"
    async with MqttBus(fleet.mqtt_url) as bus:
        assert await bus.wait_connected(10)
        calls = CallMaker(bus, Topics(prefix=fleet.prefix))
        with pytest.raises(NoSubscribers):
            await calls.call(station, "ocpp2.0.1", "Reset", {"type": "Immediate"})
        async with websockets.connect(fleet.url(station), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
            assert (await call(ws, "hb-1"))[0] == 3
            message_id = await calls.call(station, "ocpp2.0.1", "Reset", {"type": "Immediate"})
            request = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert request[:3] == [2, message_id, "Reset"]
