"""Broker and store outages on the real fleet: ``csms gateway`` + ``csms manager`` processes
on the private Mosquitto and Redis, which these tests stop and start again.

What an operator relies on: while the broker or Redis is down, stations keep their sockets
and get a prompt CallError instead of silence; once it is back, the fleet serves them again
without anyone reconnecting, CSMS-initiated calls included.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from csms.bus.mqtt import MqttBus
from csms.topics import Topics
from operations.call_maker import CallMaker
from tests.integration.fleet import Fleet
from tests.servers import ServerProcess

pytestmark = pytest.mark.integration

RECOVERY_ATTEMPTS = 60
"""Heartbeats tried (one per half second) while waiting for the fleet to recover."""


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
        managers=1,
        extra_env={"CSMS_ANSWER_TIMEOUT": "30"},
    )
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()
        if not mosquitto.running:
            mosquitto.start()
        if not redis_process.running:
            redis_process.start()


async def heartbeat(ws: Any, message_id: str) -> list[Any]:
    await ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
    answer: list[Any] = json.loads(await asyncio.wait_for(ws.recv(), 40))
    return answer


async def until_answered(ws: Any, prefix: str) -> list[Any]:
    """Heartbeat until one gets a CallResult; returns it.

    Every answer on the way is prompt: a CallError saying what is unavailable, never the
    gateway giving up on a Call that vanished ("did not answer in time": a Call published
    while no manager was subscribed yet, after a broker restart, used to be lost silently).
    """
    for attempt in range(RECOVERY_ATTEMPTS):
        answer = await heartbeat(ws, f"{prefix}-{attempt}")
        if answer[0] == 3:
            return answer
        assert "did not answer in time" not in answer[3], answer
        await asyncio.sleep(0.5)
    raise AssertionError(f"the fleet did not recover: last answer {answer}")


async def test_broker_outage_answers_promptly_and_recovers(
    fleet: Fleet, mosquitto: ServerProcess
) -> None:
    station = f"OUT-{uuid.uuid4().hex[:6]}"
    async with websockets.connect(fleet.url(station), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        assert (await heartbeat(ws, "before"))[0] == 3
        mosquitto.stop()
        answer = await heartbeat(ws, "during")
        # The gateway's own answer: the bus refused the Call (not "did not answer in time",
        # which would have taken answer_timeout, 30 s here).
        assert answer[:3] == [4, "during", "InternalError"]
        assert "temporarily unavailable" in answer[3]
        mosquitto.start()
        await until_answered(ws, "after")
        # The gateway subscribed the station's topic again: a CSMS call reaches it.
        topics = Topics(prefix=fleet.prefix)
        async with MqttBus(fleet.mqtt_url) as bus:
            assert await bus.wait_connected(10)
            message_id = await CallMaker(bus, topics).call(
                station, "ocpp2.0.1", "Reset", {"type": "Immediate"}
            )
            call = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert call[:3] == [2, message_id, "Reset"]
    assert ws.close_code == 1000  # the station closed it, not the gateway


async def test_redis_outage_answers_storage_unavailable_and_recovers(
    fleet: Fleet, redis_process: ServerProcess
) -> None:
    station = f"RED-{uuid.uuid4().hex[:6]}"
    async with websockets.connect(fleet.url(station), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        assert (await heartbeat(ws, "before"))[0] == 3
        redis_process.stop()
        answer = await heartbeat(ws, "during")
        assert answer[:3] == [4, "during", "InternalError"]
        assert "storage temporarily unavailable" in answer[3]
        redis_process.start()
        await until_answered(ws, "after")
