"""Action rules on the real fleet: ``csms gateway`` + two ``csms manager`` processes and a
``csms api`` process on the private Mosquitto and Redis. Rules set through the API (one
process) are enforced by the managers (other processes) on the stations' Calls and by the
API on its calls. The fleet runs with ``action_rules_cache_seconds = 0`` so a change applies
at once; the TTL itself is tested on a fake clock (tests/unit/test_action_rules.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.integration.fleet import API_ADMIN_KEY, Fleet, fleet_with_api
from tests.timing import timeout as scaled

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = API_ADMIN_KEY
BOOT = {
    "ocpp2.0.1": {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"},
    "ocpp1.6": {"chargePointVendor": "V", "chargePointModel": "M"},
}
RESET = {"ocpp2.0.1": {"type": "Immediate"}, "ocpp1.6": {"type": "Soft"}}


@pytest.fixture
def fleet(mqtt_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[Fleet, str]]:
    with fleet_with_api(
        mqtt_url, redis_url, tmp_path, extra_env={"CSMS_ACTION_RULES_CACHE_SECONDS": "0"}
    ) as running:
        yield running


@pytest.fixture
async def client(fleet: tuple[Fleet, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=fleet[1], headers={"Authorization": f"Bearer {ADMIN}"}, timeout=scaled(30)
    ) as http:
        yield http


RECEIVED: list[str] = []
"""Actions of the CSMS calls the stations of the running test were sent."""


async def _exchange(
    ws: websockets.ClientConnection, message_id: str, action: str, payload: Any
) -> list[Any]:
    """Send a Call and read until its answer, answering CSMS calls Accepted on the way
    (their actions go to RECEIVED)."""
    await ws.send(json.dumps([2, message_id, action, payload]))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), scaled(15)))
        if frame[0] == 2:
            RECEIVED.append(frame[2])
            await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        elif frame[1] == message_id:
            return list(frame)


async def _online(client: httpx.AsyncClient, station: str) -> None:
    deadline = asyncio.get_running_loop().time() + scaled(20)
    while asyncio.get_running_loop().time() < deadline:
        answer = await client.get(f"/v1/stations/{station}")
        if answer.status_code == 200 and answer.json()["online"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{station} never online through the API")


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp1.6"])
async def test_rules_set_through_the_api_are_enforced_by_managers_and_api(
    fleet: tuple[Fleet, str], client: httpx.AsyncClient, version: str
) -> None:
    fleet_, _ = fleet
    RECEIVED.clear()
    station = f"RULES-{uuid.uuid4().hex[:8]}"
    async with websockets.connect(fleet_.url(station), subprotocols=[version]) as ws:  # type: ignore[list-item]
        assert (await _exchange(ws, "b1", "BootNotification", BOOT[version]))[0] == 3
        await _online(client, station)
        rules = {
            "station_calls": {"deny": ["DataTransfer"]},
            "csms_calls": {"allow": ["TriggerMessage"]},
        }
        put = await client.put(f"/v1/stations/{station}/rules", json=rules)
        assert put.status_code == 200, put.text
        # Several Calls: whichever manager of the shared subscription takes each, same answer.
        for n in range(6):
            answer = await _exchange(ws, f"d{n}", "DataTransfer", {"vendorId": "V"})
            assert answer[:4] == [
                4,
                f"d{n}",
                "SecurityError",
                "action DataTransfer is denied for this station",
            ], answer
            assert (await _exchange(ws, f"h{n}", "Heartbeat", {}))[0] == 3
        denied = await client.post(f"/v1/stations/{station}/calls/Reset", json=RESET[version])
        assert denied.status_code == 403 and denied.json()["code"] == "action_denied"
        trigger = {"requestedMessage": "Heartbeat"}
        sent = asyncio.create_task(
            client.post(f"/v1/stations/{station}/calls/TriggerMessage", json=trigger)
        )
        for n in range(200):  # read (and answer the TriggerMessage) until the API has answered
            if sent.done():
                break
            assert (await _exchange(ws, f"t{n}", "Heartbeat", {}))[0] == 3
            await asyncio.sleep(0.02)
        allowed = await sent
        assert allowed.status_code == 200 and allowed.json()["outcome"] == "result", allowed.text
        assert RECEIVED == ["TriggerMessage"]  # the Reset was never sent
        deleted = await client.delete(f"/v1/stations/{station}/rules")
        assert deleted.status_code == 204
        assert (await _exchange(ws, "d-after", "DataTransfer", {"vendorId": "V"}))[0] == 3
