"""Remote start and stop through the operator API, both versions, with real WebSocket
stations on the embedded composition: the start answers with the transaction it began."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.unit.test_api import (
    V16,
    Api,
    answer_next,
    assert_error,
    embedded_api,
    online,
    station_201,
)

NOW = "2026-06-01T10:00:00.000Z"


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with embedded_api() as harness:
        yield harness


async def station_16(api: Api, station: str) -> ClientConnection:
    ws = await connect(api.gateway.url_for(station), subprotocols=[V16])  # type: ignore[list-item]
    await online(api, station)
    return ws


async def call_station(ws: ClientConnection, message_id: str, action: str, payload: Any) -> Any:
    """Send a station Call and return the CSMS's answer (CSMS calls in between are kept)."""
    await ws.send(json.dumps([2, message_id, action, payload]))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if frame[0] in (3, 4) and frame[1] == message_id:
            return frame


async def test_201_remote_start_returns_the_transaction_it_started(api: Api) -> None:
    ws = await station_201(api, "RS-2")
    try:
        operate = await api.key("operate")
        starting = asyncio.create_task(
            api.client.post(
                "/v1/stations/RS-2/remote-start",
                json={"id_token": "TOKEN-1", "evse_id": 1, "wait": 10},
                headers=operate,
            )
        )
        call = await answer_next(ws, lambda mid: [3, mid, {"status": "Accepted"}])
        assert call[2] == "RequestStartTransaction"
        request = call[3]
        assert request["idToken"] == {"idToken": "TOKEN-1", "type": "Central"}
        assert request["evseId"] == 1
        event = {
            "eventType": "Started",
            "timestamp": NOW,
            "triggerReason": "RemoteStart",
            "seqNo": 0,
            "transactionInfo": {
                "transactionId": "TX-77",
                "remoteStartId": request["remoteStartId"],
            },
            "idToken": {"idToken": "TOKEN-1", "type": "Central"},
            "evse": {"id": 1, "connectorId": 1},
        }
        answer = await call_station(ws, "te-1", "TransactionEvent", event)
        assert answer[0] == 3
        started = await starting
        assert started.status_code == 200, started.text
        body = started.json()
        assert body["status"] == "started" and body["transaction_id"] == "TX-77"
        assert body["remote_start_id"] == request["remoteStartId"]
        assert body["call"]["payload"] == {"status": "Accepted"}

        # Stop it: the station gets RequestStopTransaction for that transaction.
        stopping = asyncio.create_task(
            api.client.post("/v1/stations/RS-2/transactions/TX-77/stop", headers=operate)
        )
        stop = await answer_next(ws, lambda mid: [3, mid, {"status": "Accepted"}])
        assert stop[2:] == ["RequestStopTransaction", {"transactionId": "TX-77"}]
        stopped = await stopping
        assert stopped.status_code == 200 and stopped.json()["payload"] == {"status": "Accepted"}
    finally:
        await ws.close()


async def test_16_remote_start_returns_the_transaction_id_the_csms_assigned(api: Api) -> None:
    ws = await station_16(api, "RS-1")
    try:
        operate = await api.key("operate")
        starting = asyncio.create_task(
            api.client.post(
                "/v1/stations/RS-1/remote-start",
                json={"id_token": "TAG-1", "connector_id": 2, "wait": 10},
                headers=operate,
            )
        )
        call = await answer_next(ws, lambda mid: [3, mid, {"status": "Accepted"}])
        assert call[2:] == ["RemoteStartTransaction", {"idTag": "TAG-1", "connectorId": 2}]
        start = {"connectorId": 2, "idTag": "TAG-1", "meterStart": 100, "timestamp": NOW}
        answer = await call_station(ws, "st-1", "StartTransaction", start)
        transaction_id = answer[2]["transactionId"]
        started = await starting
        assert started.status_code == 200, started.text
        body = started.json()
        assert body["status"] == "started" and body["transaction_id"] == str(transaction_id)

        stopping = asyncio.create_task(
            api.client.post(
                f"/v1/stations/RS-1/transactions/{transaction_id}/stop", headers=operate
            )
        )
        stop = await answer_next(ws, lambda mid: [3, mid, {"status": "Accepted"}])
        assert stop[2:] == ["RemoteStopTransaction", {"transactionId": transaction_id}]
        assert (await stopping).status_code == 200
    finally:
        await ws.close()


async def test_rejected_and_accepted_without_a_transaction(api: Api) -> None:
    ws = await station_201(api, "RS-R")
    try:
        operate = await api.key("operate")
        body = {"id_token": "TOKEN-2", "wait": 0.3}
        starting = asyncio.create_task(
            api.client.post("/v1/stations/RS-R/remote-start", json=body, headers=operate)
        )
        await answer_next(ws, lambda mid: [3, mid, {"status": "Rejected"}])
        rejected = await starting
        assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"

        starting = asyncio.create_task(
            api.client.post("/v1/stations/RS-R/remote-start", json=body, headers=operate)
        )
        await answer_next(ws, lambda mid: [3, mid, {"status": "Accepted"}])
        waited = await starting
        # Accepted, but the driver never plugged in within the wait: no transaction id.
        assert waited.status_code == 200
        assert waited.json()["status"] == "accepted" and waited.json()["transaction_id"] is None
    finally:
        await ws.close()


async def test_remote_stop_of_an_unknown_transaction_and_offline_start(api: Api) -> None:
    ws = await station_201(api, "RS-U")
    try:
        operate = await api.key("operate")
        unknown = await api.client.post("/v1/stations/RS-U/transactions/NOPE/stop", headers=operate)
        assert_error(unknown, 404, "transaction_not_found")
        read_only = await api.key("read")
        refused = await api.client.post(
            "/v1/stations/RS-U/remote-start", json={"id_token": "T"}, headers=read_only
        )
        assert refused.status_code == 403
    finally:
        await ws.close()
    await asyncio.sleep(0)  # let the gateway drop the station
    for _ in range(300):
        if "RS-U" not in api.gateway.connections:
            break
        await asyncio.sleep(0.01)
    offline = await api.client.post(
        "/v1/stations/RS-U/remote-start", json={"id_token": "T"}, headers=operate
    )
    assert_error(offline, 409, "station_offline")


TASKS = [
    # (route, body, 1.6 call, 2.0.1 call)
    ("reset", {}, ["Reset", {"type": "Hard"}], ["Reset", {"type": "Immediate"}]),
    (
        "reset",
        {"immediate": False},
        ["Reset", {"type": "Soft"}],
        ["Reset", {"type": "OnIdle"}],
    ),
    (
        "unlock",
        {"evse_id": 1, "connector_id": 2},
        ["UnlockConnector", {"connectorId": 2}],
        ["UnlockConnector", {"evseId": 1, "connectorId": 2}],
    ),
    (
        "availability",
        {"operative": False},
        ["ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}],
        ["ChangeAvailability", {"operationalStatus": "Inoperative"}],
    ),
    (
        "availability",
        {"operative": True, "evse_id": 1, "connector_id": 1},
        ["ChangeAvailability", {"connectorId": 1, "type": "Operative"}],
        [
            "ChangeAvailability",
            {"operationalStatus": "Operative", "evse": {"id": 1, "connectorId": 1}},
        ],
    ),
    (
        "trigger",
        {"message": "StatusNotification", "evse_id": 1},
        ["TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}],
        ["TriggerMessage", {"requestedMessage": "StatusNotification", "evse": {"id": 1}}],
    ),
]


@pytest.mark.parametrize(("route", "body", "call16", "call201"), TASKS)
async def test_tasks_have_one_shape_for_both_versions(
    api: Api, route: str, body: dict[str, Any], call16: list[Any], call201: list[Any]
) -> None:
    operate = await api.key("operate")
    for name, connect_station, expected in (
        (f"T16-{route}", station_16, call16),
        (f"T201-{route}", station_201, call201),
    ):
        ws = await connect_station(api, name)
        try:
            sending = asyncio.create_task(
                api.client.post(f"/v1/stations/{name}/{route}", json=body, headers=operate)
            )
            call = await answer_next(ws, lambda mid: [3, mid, {"status": "Accepted"}])
            assert call[2:] == expected
            answer = await sending
            assert answer.status_code == 200, answer.text
            assert answer.json()["payload"] == {"status": "Accepted"}
        finally:
            await ws.close()


async def test_task_payloads_a_version_refuses_are_422(api: Api) -> None:
    operate = await api.key("operate")
    ws = await station_201(api, "T-422")
    try:
        no_evse = await api.client.post(
            "/v1/stations/T-422/unlock", json={"connector_id": 1}, headers=operate
        )
        assert assert_error(no_evse, 422, "invalid_payload")["details"]["field"] == "evse_id"
        bad_message = await api.client.post(
            "/v1/stations/T-422/trigger", json={"message": "Coffee"}, headers=operate
        )
        details = assert_error(bad_message, 422, "invalid_payload")["details"]
        assert details["field"] == "requestedMessage"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)  # nothing reached the station
    finally:
        await ws.close()
