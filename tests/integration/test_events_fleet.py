"""State-change events on the real fleet: ``csms gateway`` + two ``csms manager`` processes
and a ``csms api`` process on the private Mosquitto and Redis. An SSE client of the API
sees every event of its stations in order, whichever manager handled each message, and
resumes on the API after a disconnect."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.integration.fleet import API_ADMIN_KEY, Fleet, fleet_with_api
from tests.timing import timeout as scaled
from tests.unit.test_api_events import Message, Stream
from tests.unit.test_events_publication import T0, Station, _transaction_event

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = API_ADMIN_KEY
AUTH = {"Authorization": f"Bearer {ADMIN}"}
BOOT = {"chargingStation": {"model": "Wallbox", "vendorName": "ACME"}, "reason": "PowerUp"}
SESSION = [
    "station.connected",
    "station.booted",
    "connector.status",
    "transaction.started",
    "transaction.ended",
    "station.disconnected",
]


@pytest.fixture
def fleet(mqtt_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[Fleet, str]]:
    with fleet_with_api(
        mqtt_url, redis_url, tmp_path, managers=2, extra_env={"CSMS_UNKNOWN_TOKENS": "accept"}
    ) as running:
        yield running


async def _session(fleet: Fleet, station_id: str) -> None:
    ws = await connect(fleet.url(station_id), subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
    cs = Station(ws)
    try:
        await cs.call("BootNotification", BOOT)
        status = {"timestamp": T0, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}
        await cs.call("StatusNotification", status)
        started = _transaction_event("Started", 0, 0, 1000)
        # A token of its own: sessions run at once, and one token in two running
        # transactions is refused as ConcurrentTx (an authorization.refused event).
        started["idToken"] = {"idToken": f"RFID-{station_id}", "type": "ISO14443"}
        await cs.call("TransactionEvent", started)
        ended = _transaction_event("Ended", 1, 120, 2500, stoppedReason="Local")
        await cs.call("TransactionEvent", ended)
    finally:
        await cs.close()


async def _collect(stream: Stream, stations: set[str], count: int) -> list[Message]:
    """The next ``count`` events of ``stations`` (other tests' stations share the log)."""
    found: list[Message] = []
    while len(found) < count:
        message = await stream.next()
        if message.data and message.data.get("station_id") in stations:
            found.append(message)
    return found


async def test_an_sse_client_sees_every_event_whichever_manager_handled_it(
    fleet: tuple[Fleet, str],
) -> None:
    fleet_, url = fleet
    tag = uuid.uuid4().hex[:6]
    stations = [f"EV-{tag}-{n}" for n in range(4)]
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=scaled(30)) as client:
        request = client.build_request("GET", "/v1/events")
        response = await client.send(request, stream=True)
        try:
            assert response.status_code == 200
            stream = Stream(response)
            await stream.until_comment("connected")
            await asyncio.gather(*(_session(fleet_, s) for s in stations[:2]))
            first = await _collect(stream, set(stations[:2]), 2 * len(SESSION))
        finally:
            await response.aclose()
        # Gone for a while: the next stations' events wait in Redis for the resumed stream.
        await asyncio.gather(*(_session(fleet_, s) for s in stations[2:]))
        request = client.build_request(
            "GET", "/v1/events", headers={"Last-Event-ID": str(first[-1].id)}
        )
        response = await client.send(request, stream=True)
        try:
            stream = Stream(response)
            await stream.until_comment("connected")
            rest = await _collect(stream, set(stations[2:]), 2 * len(SESSION))
        finally:
            await response.aclose()

    received = first + rest
    connection = {"station.connected", "station.disconnected"}
    for station_id in stations:
        mine = [m for m in received if m.data["station_id"] == station_id]
        kinds = [m.event for m in mine]
        assert sorted(kinds) == sorted(SESSION), station_id
        # The station's own messages are handled in order, whichever manager took each. Its
        # connection events come from the gateway on another topic and may be handled by the
        # other manager a moment later; their times still tell the order.
        assert [k for k in kinds if k not in connection] == [
            k for k in SESSION if k not in connection
        ], station_id
        at = {m.event: m.data["at"] for m in mine}
        assert at["station.connected"] <= at["station.booted"] <= at["station.disconnected"]
    ended = [m.data["data"] for m in received if m.event == "transaction.ended"]
    assert all(data["energy_wh"] == 1500 and data["currency"] == "EUR" for data in ended)
    assert len({m.id for m in received}) == len(received)
    # The stations' messages were spread over both managers.
    handled_by = {
        process.role
        for process in fleet_.manager_processes
        for record in process.log_records()
        if record.get("event") == "call handled" and record.get("station") in stations
    }
    assert handled_by == {"manager-0", "manager-1"}
