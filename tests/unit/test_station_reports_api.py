"""Station-initiated reports end to end: ``csms run``'s composition (gateway, manager and
operator API on the in-process bus, in-memory stores), real WebSocket stations of both
versions sending OCPP-J frames, then the API's read routes showing what was stored."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from cli.processes import Embedded, embedded
from csms.config import Settings
from ocpp_schemas import Direction
from services.call_records import CallRecord, CallState
from tests.ocpp_payloads import build

ADMIN = "bootstrap-admin-key-for-tests"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
STATION_201, PATH_201 = "CS-R/1", "CS-R%2F1"
STATION_16 = "CP-R16"


@dataclass
class Csms:
    running: Embedded
    client: httpx.AsyncClient

    async def read(self, path: str, **params: Any) -> Any:
        answer = await self.client.get(path, params=params, headers=HEADERS)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    values: dict[str, Any] = {
        "listen_port": 0,
        "api_port": 0,
        "api_admin_key": ADMIN,
        "unknown_stations": "accept",
        "ping_interval": None,
        "ping_timeout": None,
    }
    async with embedded(Settings(**values)) as running:
        assert running.api is not None
        async with httpx.AsyncClient(base_url=running.api.url, timeout=10) as client:
            yield Csms(running, client)


class Station:
    """A station speaking raw OCPP-J over a real WebSocket: one Call at a time."""

    def __init__(self, ws: ClientConnection, version: str) -> None:
        self.ws = ws
        self.version = version
        self._ids = itertools.count(1)

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        message_id = f"m{next(self._ids)}"
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        while True:
            frame = json.loads(await self.ws.recv())
            if frame[0] == 2:  # a CSMS call (none expected here): refuse it
                await self.ws.send(json.dumps([4, frame[1], "NotSupported", "", {}]))
                continue
            assert frame[1] == message_id, frame
            return list(frame)

    async def ok(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        frame = await self.call(action, payload)
        assert frame[0] == 3, frame
        answer: dict[str, Any] = frame[2]
        return answer

    async def boot(self) -> None:
        payload = build(self.version, "BootNotification", Direction.REQUEST)
        assert (await self.ok("BootNotification", payload))["status"] == "Accepted"


@pytest.fixture
async def station201(csms: Csms) -> AsyncIterator[Station]:
    url = csms.running.gateway.url_for(STATION_201)
    async with connect(url, subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        station = Station(ws, "ocpp2.0.1")
        await station.boot()
        yield station


@pytest.fixture
async def station16(csms: Csms) -> AsyncIterator[Station]:
    url = csms.running.gateway.url_for(STATION_16)
    async with connect(url, subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        station = Station(ws, "ocpp1.6")
        await station.boot()
        yield station


def request(version: str, action: str, **changes: Any) -> dict[str, Any]:
    payload = copy.deepcopy(build(version, action, Direction.REQUEST))
    payload.update(changes)
    return payload


async def record_call(
    csms: Csms, station_id: str, version: str, action: str, message_id: str, **req: Any
) -> None:
    """A CSMS call as the API records it, so a status notification has a call to name."""
    await csms.running.manager.services.call_records.finish(
        CallRecord(
            message_id=message_id,
            station_id=station_id,
            version=version,
            action=action,
            request=req,
            requested_at=1.0,
            outcome=CallState.RESULT,
            payload={"status": "Accepted"},
            finished_at=2.0,
        )
    )


BASE = f"/v1/stations/{PATH_201}"


async def test_ev_charging_needs_are_stored_per_evse_and_evse_0_is_rejected(
    csms: Csms, station201: Station
) -> None:
    needs = request("ocpp2.0.1", "NotifyEVChargingNeeds", evseId=2)
    assert (await station201.ok("NotifyEVChargingNeeds", needs))["status"] == "Accepted"
    rejected = await station201.ok("NotifyEVChargingNeeds", {**needs, "evseId": 0})
    assert rejected["status"] == "Rejected"
    assert rejected["statusInfo"]["reasonCode"] == "InvalidEVSE"
    schedule = request("ocpp2.0.1", "NotifyEVChargingSchedule", evseId=2)
    assert (await station201.ok("NotifyEVChargingSchedule", schedule))["status"] == "Accepted"
    charging = await csms.read(f"{BASE}/charging")
    (stored,) = charging["needs"]
    assert (stored["evse_id"], stored["charging_needs"]) == (2, needs["chargingNeeds"])
    (chosen,) = charging["schedules"]
    assert chosen["charging_schedule"] == schedule["chargingSchedule"]
    assert chosen["time_base"] == schedule["timeBase"]


async def test_charging_limits_are_stored_and_cleared_per_evse_and_source(
    csms: Csms, station201: Station
) -> None:
    ems = {"chargingLimitSource": "EMS", "isGridCritical": True}
    for evse_id in (1, 2):
        limit = request("ocpp2.0.1", "NotifyChargingLimit", evseId=evse_id, chargingLimit=ems)
        assert await station201.ok("NotifyChargingLimit", limit) == {}
    so = request(
        "ocpp2.0.1", "NotifyChargingLimit", evseId=1, chargingLimit={"chargingLimitSource": "SO"}
    )
    await station201.ok("NotifyChargingLimit", so)
    limits = (await csms.read(f"{BASE}/charging"))["limits"]
    assert [(x["evse_id"], x["charging_limit_source"]) for x in limits] == [
        (1, "EMS"),
        (1, "SO"),
        (2, "EMS"),
    ]
    cleared = {"chargingLimitSource": "EMS", "evseId": 2}
    assert await station201.ok("ClearedChargingLimit", cleared) == {}
    limits = (await csms.read(f"{BASE}/charging"))["limits"]
    assert [(x["evse_id"], x["charging_limit_source"]) for x in limits] == [(1, "EMS"), (1, "SO")]
    await station201.ok("ClearedChargingLimit", {"chargingLimitSource": "EMS"})  # every EVSE
    limits = (await csms.read(f"{BASE}/charging"))["limits"]
    assert [x["charging_limit_source"] for x in limits] == ["SO"]


async def test_charging_profiles_reported_in_parts_are_tied_to_their_request(
    csms: Csms, station201: Station
) -> None:
    await record_call(csms, STATION_201, "ocpp2.0.1", "GetChargingProfiles", "get-1", requestId=7)
    part = request("ocpp2.0.1", "ReportChargingProfiles", requestId=7, evseId=1, tbc=True)
    profile = part["chargingProfile"][0]
    part["chargingProfile"] = [{**profile, "id": 11}]
    assert await station201.ok("ReportChargingProfiles", part) == {}
    report = (await csms.read(f"{BASE}/charging"))["profile_reports"]
    assert [(r["request_id"], r["parts"], r["complete"]) for r in report] == [(7, 1, False)]
    last = {**part, "evseId": 2, "tbc": False, "chargingProfile": [{**profile, "id": 12}]}
    await station201.ok("ReportChargingProfiles", last)
    charging = await csms.read(f"{BASE}/charging")
    (report,) = charging["profile_reports"]
    assert report["call_id"] == "get-1"
    assert (report["parts"], report["profiles"], report["complete"]) == (2, 2, True)
    assert report["evse_ids"] == [1, 2]
    stored = [(p["evse_id"], p["charging_profile"]["id"]) for p in charging["profiles"]]
    assert stored == [(1, 11), (2, 12)]


async def test_status_histories_name_the_request_that_caused_them(
    csms: Csms, station201: Station
) -> None:
    await record_call(csms, STATION_201, "ocpp2.0.1", "UpdateFirmware", "fw-1", requestId=5)
    await record_call(csms, STATION_201, "ocpp2.0.1", "GetLog", "log-1", requestId=6)
    for status in ("Downloading", "Installed"):
        firmware = {"status": status, "requestId": 5}
        assert await station201.ok("FirmwareStatusNotification", firmware) == {}
    publish = request("ocpp2.0.1", "PublishFirmwareStatusNotification", status="Published")
    publish.pop("requestId", None)
    await station201.ok("PublishFirmwareStatusNotification", publish)
    await station201.ok("LogStatusNotification", {"status": "Uploaded", "requestId": 6})
    history = (await csms.read(f"{BASE}/firmware"))["items"]
    assert [(h["action"], h["status"], h["call_id"]) for h in history] == [
        ("PublishFirmwareStatusNotification", "Published", None),
        ("FirmwareStatusNotification", "Installed", "fw-1"),
        ("FirmwareStatusNotification", "Downloading", "fw-1"),
    ]
    assert history[0]["location"] == publish.get("location", [])
    assert len((await csms.read(f"{BASE}/firmware", limit=1))["items"]) == 1
    (log,) = (await csms.read(f"{BASE}/logs"))["items"]
    assert (log["status"], log["request_id"], log["call_id"]) == ("Uploaded", 6, "log-1")


async def test_customer_information_parts_are_assembled_in_seq_no_order(
    csms: Csms, station201: Station
) -> None:
    def part(seq_no: int, data: str, tbc: bool) -> dict[str, Any]:
        return request(
            "ocpp2.0.1", "NotifyCustomerInformation", requestId=3, seqNo=seq_no, data=data, tbc=tbc
        )

    await station201.ok("NotifyCustomerInformation", part(1, "world", False))
    (item,) = (await csms.read(f"{BASE}/customer-information"))["items"]
    assert (item["complete"], item["data"]) == (False, "world")
    await station201.ok("NotifyCustomerInformation", part(0, "hello ", True))
    (item,) = (await csms.read(f"{BASE}/customer-information"))["items"]
    assert (item["request_id"], item["parts"], item["complete"]) == (3, 2, True)
    assert item["data"] == "hello world"


async def test_display_messages_reservations_and_monitors_are_stored(
    csms: Csms, station201: Station
) -> None:
    shown = request("ocpp2.0.1", "NotifyDisplayMessages", requestId=4)
    info = shown["messageInfo"][0]
    shown["messageInfo"] = [{**info, "id": 1}, {**info, "id": 2}]
    assert await station201.ok("NotifyDisplayMessages", shown) == {}
    messages = (await csms.read(f"{BASE}/display-messages"))["items"]
    assert [m["message_info"]["id"] for m in messages] == [1, 2]
    assert messages[0]["message_info"]["message"] == info["message"]

    update = {"reservationId": 9, "reservationUpdateStatus": "Expired"}
    assert await station201.ok("ReservationStatusUpdate", update) == {}
    (reservation,) = (await csms.read(f"{BASE}/reservations"))["items"]
    assert (reservation["reservation_id"], reservation["status"]) == (9, "Expired")

    report = request("ocpp2.0.1", "NotifyMonitoringReport", requestId=8, seqNo=0, tbc=False)
    monitored = report["monitor"][0]
    monitoring = monitored["variableMonitoring"][0]
    monitored["variableMonitoring"] = [{**monitoring, "id": 21}, {**monitoring, "id": 22}]
    report["monitor"] = [monitored]
    assert await station201.ok("NotifyMonitoringReport", report) == {}
    monitors = (await csms.read(f"{BASE}/monitors"))["items"]
    assert [m["monitor"]["id"] for m in monitors] == [21, 22]
    assert monitors[0]["component"] == monitored["component"]


async def test_notify_event_notes_problem_and_cleared_transitions(
    csms: Csms, station201: Station
) -> None:
    base_event = request("ocpp2.0.1", "NotifyEvent")["eventData"][0]

    def event(event_id: int, trigger: str, cleared: bool) -> dict[str, Any]:
        data = {**base_event, "eventId": event_id, "trigger": trigger, "cleared": cleared}
        return {"generatedAt": "2025-01-15T11:00:00Z", "seqNo": 0, "eventData": [data]}

    await station201.ok("NotifyEvent", event(1, "Alerting", False))
    await station201.ok("NotifyEvent", event(2, "Alerting", False))  # still the same problem
    assert len((await csms.read(f"{BASE}/events"))["open_problems"]) == 1
    await station201.ok("NotifyEvent", event(3, "Delta", True))
    events = await csms.read(f"{BASE}/events")
    assert [(e["event"]["eventId"], e["transition"]) for e in events["items"]] == [
        (3, "cleared"),
        (2, None),
        (1, "problem"),
    ]
    assert events["open_problems"] == []


async def test_meter_values_are_stored_per_evse(csms: Csms, station201: Station) -> None:
    for evse_id in (0, 1, 1):
        values = request("ocpp2.0.1", "MeterValues", evseId=evse_id)
        assert await station201.ok("MeterValues", values) == {}
    everything = await csms.read(f"{BASE}/meter-values")
    assert everything["evse_ids"] == [0, 1]
    assert len(everything["items"]) == 3
    one = await csms.read(f"{BASE}/meter-values", evse=1)
    assert [m["evse_id"] for m in one["items"]] == [1, 1]
    assert one["items"][0]["meter_value"] == values["meterValue"]
    assert one["items"][0]["transaction_id"] is None


async def test_16_status_notifications_are_tied_to_the_latest_request(
    csms: Csms, station16: Station
) -> None:
    await record_call(csms, STATION_16, "ocpp1.6", "GetDiagnostics", "diag-1")
    await record_call(csms, STATION_16, "ocpp1.6", "UpdateFirmware", "fw-16")
    await record_call(csms, STATION_16, "ocpp1.6", "SignedUpdateFirmware", "sfw-16", requestId=4)
    await station16.ok("DiagnosticsStatusNotification", {"status": "Uploaded"})
    await station16.ok("LogStatusNotification", {"status": "Uploading", "requestId": 77})
    await station16.ok("FirmwareStatusNotification", {"status": "Installed"})
    signed = {"status": "SignatureVerified", "requestId": 4}
    await station16.ok("SignedFirmwareStatusNotification", signed)
    base = f"/v1/stations/{STATION_16}"
    logs = (await csms.read(f"{base}/logs"))["items"]
    assert [(h["action"], h["status"], h["call_id"]) for h in logs] == [
        ("LogStatusNotification", "Uploading", None),  # no GetLog with requestId 77 was sent
        ("DiagnosticsStatusNotification", "Uploaded", "diag-1"),
    ]
    firmware = (await csms.read(f"{base}/firmware"))["items"]
    assert [(h["action"], h["call_id"]) for h in firmware] == [
        ("SignedFirmwareStatusNotification", "sfw-16"),
        ("FirmwareStatusNotification", "fw-16"),
    ]


@pytest.mark.parametrize(
    ("action", "payload", "code"),
    [
        ("NotifyEVChargingNeeds", {"evseId": 1}, "OccurrenceConstraintViolation"),
        ("NotifyChargingLimit", {"chargingLimit": {"chargingLimitSource": "Moon"}}, None),
        (
            "ReservationStatusUpdate",
            {"reservationId": "x", "reservationUpdateStatus": "Expired"},
            "TypeConstraintViolation",
        ),
        ("NotifyCustomerInformation", {"data": "x"}, "OccurrenceConstraintViolation"),
    ],
)
async def test_invalid_reports_get_the_right_call_error(
    csms: Csms, station201: Station, action: str, payload: dict[str, Any], code: str | None
) -> None:
    frame = await station201.call(action, payload)
    assert frame[0] == 4, frame
    assert frame[2] == (code or "PropertyConstraintViolation"), frame
    assert (await csms.read(f"{BASE}/charging"))["limits"] == []


async def test_reading_an_unknown_station_is_404(csms: Csms) -> None:
    for route in ("charging", "firmware", "logs", "events", "meter-values", "monitors"):
        answer = await csms.client.get(f"/v1/stations/nobody/{route}", headers=HEADERS)
        assert answer.status_code == 404, route
        assert answer.json()["code"] == "station_not_found"
