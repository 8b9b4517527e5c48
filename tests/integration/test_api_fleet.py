"""The operator API on the real fleet: ``csms gateway`` + two ``csms manager`` processes and a
``csms api`` process on the private Mosquitto and Redis, stations built with the ``ocpp``
package. A call sent over HTTP reaches the station and its answer comes back, whichever
manager handled the station's traffic; keys created through one API live in Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201

from tests.integration.fleet import API_ADMIN_KEY, Fleet, fleet_with_api
from tests.timing import timeout as scaled

pytestmark = pytest.mark.integration

ADMIN = API_ADMIN_KEY


@pytest.fixture
def fleet(mqtt_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[Fleet, str]]:
    with fleet_with_api(mqtt_url, redis_url, tmp_path, managers=2) as running:
        yield running


@pytest.fixture
async def client(fleet: tuple[Fleet, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=fleet[1], headers={"Authorization": f"Bearer {ADMIN}"}, timeout=scaled(30)
    ) as http:
        yield http


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
        )


async def until_online(client: httpx.AsyncClient, station: str) -> dict[str, Any]:
    """The station's record once the API sees it online."""
    deadline = asyncio.get_running_loop().time() + scaled(20)
    while asyncio.get_running_loop().time() < deadline:
        answer = await client.get(f"/v1/stations/{station}")
        if answer.status_code == 200 and answer.json()["online"]:
            record: dict[str, Any] = answer.json()
            return record
        await asyncio.sleep(0.1)
    raise AssertionError(f"{station} never online through the API")


async def call(
    client: httpx.AsyncClient, station: str, action: str, payload: dict[str, Any]
) -> httpx.Response:
    """POST a call, retrying while the gateway's subscription for a station that just
    connected is not yet in place (offline at once)."""
    for _ in range(50):
        answer = await client.post(f"/v1/stations/{station}/calls/{action}", json=payload)
        if answer.status_code != 409 or answer.json()["code"] != "station_offline":
            return answer
        await asyncio.sleep(0.1)
    raise AssertionError(f"{station} never held by a gateway")


async def test_calls_through_http_return_the_stations_answer(
    fleet: tuple[Fleet, str], client: httpx.AsyncClient
) -> None:
    fleet_, _ = fleet
    name201, name16 = f"API2-{uuid.uuid4().hex[:6]}", f"API1-{uuid.uuid4().hex[:6]}"
    ws201 = await websockets.connect(fleet_.url(name201), subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
    ws16 = await websockets.connect(fleet_.url(name16), subprotocols=["ocpp1.6"])  # type: ignore[list-item]
    tasks = [
        asyncio.create_task(Station201(name201, ws201, response_timeout=10).start()),
        asyncio.create_task(Station16(name16, ws16, response_timeout=10).start()),
    ]
    try:
        assert (await until_online(client, name201))["ocpp_version"] == "ocpp2.0.1"
        assert (await until_online(client, name16))["ocpp_version"] == "ocpp1.6"

        reset = await call(client, name201, "Reset", {"type": "Immediate"})
        assert reset.status_code == 200, reset.text
        assert reset.json()["outcome"] == "result"
        assert reset.json()["payload"] == {"status": "Accepted"}
        change = await call(
            client, name16, "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"}
        )
        assert change.status_code == 200, change.text
        assert change.json()["payload"] == {"status": "Accepted"}
        refused = await call(client, name16, "ChangeConfiguration", {"key": "No", "value": "1"})
        assert refused.json()["payload"] == {"status": "NotSupported"}
        # The ocpp package answers actions it has no handler for with a CallError.
        error = await call(client, name201, "ClearCache", {})
        assert error.status_code == 200 and error.json()["outcome"] == "error"
        assert error.json()["error_code"] == "NotImplemented"

        invalid = await client.post(f"/v1/stations/{name201}/calls/Reset", json={"type": "x"})
        assert invalid.status_code == 422 and invalid.json()["details"]["field"] == "type"
        listed = await client.get("/v1/stations", params={"prefix": "API", "online": "true"})
        assert {name201, name16} <= {item["station_id"] for item in listed.json()["items"]}
    finally:
        for task in tasks:
            task.cancel()
        await ws201.close()
        await ws16.close()


async def test_offline_stations_and_stored_keys(
    fleet: tuple[Fleet, str], client: httpx.AsyncClient
) -> None:
    fleet_, base = fleet
    name = f"APIOFF-{uuid.uuid4().hex[:6]}"
    async with websockets.connect(fleet_.url(name), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        await until_online(client, name)
        await ws.close()
    deadline = asyncio.get_running_loop().time() + scaled(20)
    while (await client.get(f"/v1/stations/{name}")).json()["online"]:
        assert asyncio.get_running_loop().time() < deadline, "station never went offline"
        await asyncio.sleep(0.1)
    offline = await client.post(f"/v1/stations/{name}/calls/Reset", json={"type": "Immediate"})
    assert offline.status_code == 409 and offline.json()["code"] == "station_offline"

    created = await client.post("/v1/api-keys", json={"name": "fleet", "scope": "read"})
    assert created.status_code == 201
    key = created.json()["key"]
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}) as reader:
        assert (await reader.get("/v1/transactions")).status_code == 200
        forbidden = await reader.post(f"/v1/stations/{name}/calls/Reset", json={})
        assert forbidden.status_code == 403
        await client.delete(f"/v1/api-keys/{created.json()['key_id']}")
        assert (await reader.get("/v1/stations")).status_code == 401
    ready = await client.get("/v1/ready")
    assert ready.json() == {"status": "ready", "checks": {"bus": True, "store": True}}


class SlowStation201(ChargePoint201):
    """Answers a Reset only once the test lets it."""

    release: asyncio.Event

    @on("Reset")
    async def on_reset(self, type: str, **_: Any) -> result201.Reset:
        await self.release.wait()
        return result201.Reset(status="Scheduled")


@pytest.mark.slow
async def test_an_outcome_sent_without_waiting_is_read_on_another_replica(
    fleet: tuple[Fleet, str], client: httpx.AsyncClient
) -> None:
    fleet_, _ = fleet
    name = f"APINW-{uuid.uuid4().hex[:6]}"
    ws = await websockets.connect(fleet_.url(name), subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
    station = SlowStation201(name, ws, response_timeout=10)
    station.release = asyncio.Event()
    task = asyncio.create_task(station.start())
    try:
        await until_online(client, name)
        for _ in range(50):
            sent = await client.post(
                f"/v1/stations/{name}/calls/Reset?wait=false", json={"type": "OnIdle"}
            )
            if sent.status_code != 409:
                break
            await asyncio.sleep(0.1)
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["message_id"]
        location = sent.headers["location"]
        assert location == f"/v1/calls/{message_id}"

        # The replica that sent the call goes away before the station answers.
        first = next(p for p in fleet_.processes if p.role == "api-0")
        other = fleet_.start_api()
        first.stop()
        async with httpx.AsyncClient(
            base_url=other, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=scaled(30)
        ) as replica:
            assert (await replica.get(location)).json()["outcome"] == "pending"
            station.release.set()
            deadline = asyncio.get_running_loop().time() + scaled(20)
            while (body := (await replica.get(location)).json())["outcome"] == "pending":
                assert asyncio.get_running_loop().time() < deadline, "outcome never recorded"
                await asyncio.sleep(0.1)
            assert body["outcome"] == "result" and body["payload"] == {"status": "Scheduled"}
            assert body["request"] == {"type": "OnIdle"} and body["station_id"] == name
            listed = await replica.get(
                f"/v1/stations/{name}/calls", params={"action": "Reset", "outcome": "result"}
            )
            assert [item["message_id"] for item in listed.json()["items"]] == [message_id]
    finally:
        task.cancel()
        await ws.close()
