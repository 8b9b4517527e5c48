"""Webhooks on the real fleet: ``csms gateway`` + ``csms manager`` + ``csms webhooks`` as
processes on the private Mosquitto and Redis. A manager killed right after the message that
caused an event was answered does not lose the event: the webhook worker, a process of its
own, still delivers it, signed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from fastapi import Request, Response
from websockets.asyncio.client import connect

from services.redis_webhooks import RedisWebhookStore
from tests.integration.fleet import CsmsProcess, Fleet
from tests.unit.test_webhooks import SECRET, receiver, subscription, wait_for
from webhooks import verify_signature

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOOT = {"chargingStation": {"model": "Wallbox", "vendorName": "ACME"}, "reason": "PowerUp"}


async def test_an_event_is_delivered_although_its_manager_was_killed(
    mqtt_url: str, redis_url: str, tmp_path: Path
) -> None:
    async def accept(_request: Request, _body: bytes, _n: int) -> Response:
        return Response(status_code=204)

    async with receiver(accept) as (url, seen):
        fleet = Fleet(
            mqtt_url,
            redis_url,
            tmp_path,
            managers=1,
            extra_env={"CSMS_WEBHOOK_POLL_INTERVAL": "0.1"},
        )
        client = aioredis.from_url(redis_url)
        store = RedisWebhookStore(client, fleet._env().get("CSMS_REDIS_KEY_PREFIX", "csms:"))
        sub = subscription("00000000000000a1", url=url, secret=SECRET, events=("station.booted",))
        await store.create(sub)
        fleet.start()
        hooks = CsmsProcess(
            "webhooks",
            [sys.executable, "-m", "cli", "webhooks"],
            tmp_path / "hooks.log",
            fleet._env(),
        )
        fleet.processes.append(hooks)
        try:
            hooks.start()
            hooks.wait_for_log("webhooks ready")
            station_id = "CS-HOOK-1"
            async with connect(fleet.url(station_id), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
                await ws.send(json.dumps([2, "b1", "BootNotification", BOOT]))
                answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert answer[2]["status"] == "Accepted"
                manager = fleet.manager_processes[0].process
                assert manager is not None
                os.kill(manager.pid, signal.SIGKILL)  # right after the answer: no clean-up

            async def delivered() -> bool:
                return any(event.get("station_id") == station_id for event in seen.events.values())

            await wait_for(delivered, 20)
        finally:
            fleet.stop()
            await client.aclose()
    booted: list[Any] = [e for e in seen.events.values() if e.get("station_id") == station_id]
    assert [event["kind"] for event in booted] == ["station.booted"]
    headers, body = next(
        (headers, body)
        for headers, body in seen.requests
        if headers["x-csms-event-kind"] == "station.booted"
    )
    assert verify_signature(SECRET, headers["x-csms-signature"], body)
