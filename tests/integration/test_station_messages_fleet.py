"""Every station-to-CSMS action of OCPP 2.0.1 and 1.6, and the 1.6 DataTransfer-wrapped ISO
15118 messages, sent by ``ocpp``-package stations through the real fleet: ``csms gateway`` +
two ``csms manager`` processes + ``csms api`` on the private Mosquitto and Redis.

The actions come from the schema table (:func:`tests.unit.test_coverage.station_actions`),
their payloads from the OCA schemas (``tests.ocpp_payloads``), so an action added to either is
covered without touching this test. Each one must be answered with a CallResult (no
NotSupported, NotImplemented or any other CallError) that the ``ocpp`` package's own schemas
accept, and for the actions that persist something, :data:`PERSISTED` names the API route
where it must then be readable: the route's body changed and carries a value of the message.
SignCertificate (both versions, and wrapped) goes all the way: the fleet signs a real CSR
with its CA, the station takes the CertificateSigned, and the certificate shows under the
station's certificates. Last, one wrapped message the other way (the API's
``iso15118/GetInstalledCertificateIds`` to the 1.6 charge point), its answer applied by a
manager and read back.
"""

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
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import OCPPError
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

from csms.versions import OcppVersion
from ocpp_schemas import Direction, validate
from services.pnc import PNC_VENDOR_ID, STATION_MESSAGES, WRAPPED_VERSION
from tests.certs import make_pki
from tests.integration.fleet import API_ADMIN_KEY, Fleet, fleet_with_api
from tests.integration.test_api_fleet import until_online
from tests.ocpp_payloads import build
from tests.timing import timeout as scaled
from tests.unit.test_coverage import station_actions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORG = "Fleet Charging"
TX_ROUTE = "/v1/transactions?station={id}"
EVENTS_ROUTE = "/v1/events?station_id={id}&follow=false"

PERSISTED: dict[OcppVersion, dict[str, str]] = {
    OcppVersion.OCPP201: {
        "BootNotification": "/v1/stations/{id}",
        "FirmwareStatusNotification": "/v1/stations/{id}/firmware",
        "Heartbeat": "/v1/stations/{id}",
        "LogStatusNotification": "/v1/stations/{id}/logs",
        "MeterValues": "/v1/stations/{id}/meter-values",
        "NotifyChargingLimit": "/v1/stations/{id}/charging",
        "NotifyCustomerInformation": "/v1/stations/{id}/customer-information",
        "NotifyDisplayMessages": "/v1/stations/{id}/display-messages",
        "NotifyEVChargingNeeds": "/v1/stations/{id}/charging",
        "NotifyEVChargingSchedule": "/v1/stations/{id}/charging",
        "NotifyEvent": "/v1/stations/{id}/events",
        "NotifyMonitoringReport": "/v1/stations/{id}/monitors",
        "NotifyReport": "/v1/stations/{id}/variables",
        "PublishFirmwareStatusNotification": "/v1/stations/{id}/firmware",
        "ReportChargingProfiles": "/v1/stations/{id}/charging",
        "ReservationStatusUpdate": "/v1/stations/{id}/reservations",
        "SecurityEventNotification": EVENTS_ROUTE,
        "SignCertificate": "/v1/stations/{id}/certificates",
        "StatusNotification": "/v1/stations/{id}",
        "TransactionEvent": TX_ROUTE,
    },
    OcppVersion.OCPP16: {
        "BootNotification": "/v1/stations/{id}",
        "DiagnosticsStatusNotification": "/v1/stations/{id}/logs",
        "FirmwareStatusNotification": "/v1/stations/{id}/firmware",
        "Heartbeat": "/v1/stations/{id}",
        "LogStatusNotification": "/v1/stations/{id}/logs",
        "MeterValues": "/v1/transactions/{id}/{tx}",
        "SecurityEventNotification": EVENTS_ROUTE,
        "SignCertificate": "/v1/stations/{id}/certificates",
        "SignedFirmwareStatusNotification": "/v1/stations/{id}/firmware",
        "StartTransaction": TX_ROUTE,
        "StatusNotification": "/v1/stations/{id}",
        "StopTransaction": TX_ROUTE,
    },
}
"""Where what a station sent must be readable once it is answered. The other actions are
answered from the stores or a service (Authorize, DataTransfer, the ISO 15118 messages) or
change only what an earlier message set (ClearedChargingLimit, with no limit to clear)."""

WRAPPED_PERSISTED = {"SignCertificate": "/v1/stations/{id}/certificates"}
"""The same for the wrapped 1.6 messages."""

ANSWERED_ONLY = {
    OcppVersion.OCPP201: {
        "Authorize",
        "ClearedChargingLimit",
        "DataTransfer",
        "Get15118EVCertificate",
        "GetCertificateStatus",
    },
    OcppVersion.OCPP16: {"Authorize", "DataTransfer"},
}

INSTALLED = {
    "certificateType": "V2GRootCertificate",
    "certificateHashData": {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": "c0ffee" * 8,
        "issuerKeyHash": "beef" * 8,
        "serialNumber": "5ca1ab1e",
    },
}
"""What the 1.6 charge point reports installed when asked (wrapped)."""

FIRST = {"BootNotification": 0, "StartTransaction": 1, "MeterValues": 2, "StopTransaction": 3}
"""Sending order where it matters (1.6: the readings go to the transaction just started)."""


def make_csr(common_name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def leaves(value: Any) -> list[str]:
    """The message's string values long enough to be told apart in a JSON body."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value] if isinstance(value, str) and len(value) >= 4 else []


class Station201(ChargePoint201):
    version = OcppVersion.OCPP201
    calls = call201

    @on("CertificateSigned")
    async def on_certificate_signed(self, **_: Any) -> result201.CertificateSigned:
        return result201.CertificateSigned(status="Accepted")


class Station16(ChargePoint16):
    version = OcppVersion.OCPP16
    calls = call16

    @on("CertificateSigned")
    async def on_certificate_signed(self, **_: Any) -> result16.CertificateSigned:
        return result16.CertificateSigned(status="Accepted")

    @on("DataTransfer")
    async def on_data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None
    ) -> result16.DataTransfer:
        """The wrapped CertificateSigned of the signed V2G certificate: taken; the wrapped
        GetInstalledCertificateIds: one V2G root."""
        assert vendor_id == PNC_VENDOR_ID and data is not None, vendor_id
        if message_id == "GetInstalledCertificateIds":
            answer = {"status": "Accepted", "certificateHashDataChain": [INSTALLED]}
            return result16.DataTransfer(status="Accepted", data=json.dumps(answer))
        assert message_id == "CertificateSigned", message_id
        assert "certificateChain" in json.loads(data)
        return result16.DataTransfer(status="Accepted", data=json.dumps({"status": "Accepted"}))


Station = Station201 | Station16


def payload_for(station: Station, action: str, started: dict[str, int]) -> dict[str, Any]:
    """The schema-built request, except where the fleet must be able to act on it."""
    version = station.version.value
    payload = build(version, action, Direction.REQUEST)
    if action == "SignCertificate":
        payload = {"csr": make_csr(station.id)}
    elif action == "DataTransfer":
        payload = {"vendorId": "com.example.nobody", "messageId": "Ping", "data": "ping"}
    elif action == "MeterValues" and station.version is OcppVersion.OCPP16:
        payload = {
            "connectorId": 1,
            "transactionId": started["id"],
            "meterValue": [
                {
                    "timestamp": "2031-03-03T02:05:00.000Z",
                    "sampledValue": [
                        {"value": "4321", "measurand": "Energy.Active.Import.Register"}
                    ],
                }
            ],
        }
    elif action == "StopTransaction" and station.version is OcppVersion.OCPP16:
        payload["transactionId"] = started["id"]
    return payload


async def send(station: Station, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Send through the ``ocpp`` package (its schemas check both ways); the CallResult
    payload, camelCase, or OCPPError for a CallError."""
    request = getattr(station.calls, action)(**camel_to_snake_case(payload))
    result = await station.call(request, suppress=False)
    answer: dict[str, Any] = json.loads(
        json.dumps(result, default=lambda o: o.__dict__)
    )  # the dataclass as plain JSON
    return answer


async def read(client: httpx.AsyncClient, route: str, station_id: str, tx: int = 0) -> str:
    answer = await client.get(route.format(id=station_id, tx=tx))
    assert answer.status_code == 200, (route, answer.text)
    return answer.text


def expected(action: str, payload: dict[str, Any]) -> list[str]:
    """What the route must then carry: a value of the message; for SignCertificate the type
    of the certificate signed; for Heartbeat nothing but the change (the time last seen)."""
    if action == "SignCertificate":
        return [payload.get("certificateType") or "ChargingStationCertificate"]
    if action == "Heartbeat":
        return []
    return leaves(payload)


async def persisted(
    client: httpx.AsyncClient,
    route: str,
    station_id: str,
    before: str,
    values: list[str],
    tx: int = 0,
) -> bool:
    """The route changed since ``before`` and now carries one of ``values`` (none: changed)."""
    deadline = asyncio.get_running_loop().time() + scaled(15)
    while True:
        now = await read(client, route, station_id, tx)
        if now != before and (not values or any(v in now for v in values)):
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)


@pytest.fixture
def fleet(mqtt_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[Fleet, str]]:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    env = {
        "CSMS_CA_CERTIFICATE_FILE": str(pki.ca.cert),
        "CSMS_CA_KEY_FILE": str(pki.ca.key),
        "CSMS_CERTIFICATE_ORGANIZATION": ORG,
        "CSMS_CERTIFICATE_SIGNED_DELAY": "0",
        "CSMS_OCSP_TIMEOUT": "2",
    }
    with fleet_with_api(mqtt_url, redis_url, tmp_path, managers=2, extra_env=env) as running:
        yield running


@pytest.fixture
async def client(fleet: tuple[Fleet, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=fleet[1],
        headers={"Authorization": f"Bearer {API_ADMIN_KEY}"},
        timeout=scaled(30),
    ) as http:
        yield http


async def every_station_action(client: httpx.AsyncClient, station: Station) -> dict[str, str]:
    """Send each station action of the station's version; action → what went wrong."""
    problems: dict[str, str] = {}
    started: dict[str, int] = {}
    table = PERSISTED[station.version]
    names = sorted(station_actions(station.version), key=lambda a: (FIRST.get(a, 9), a))
    assert set(names) == set(table) | ANSWERED_ONLY[station.version], station.version
    for action in names:
        payload = payload_for(station, action, started)
        route = table.get(action)
        tx = started.get("id", 0)
        before = await read(client, route, station.id, tx) if route else ""
        try:
            answer = await send(station, action, payload)
        except OCPPError as error:
            problems[action] = f"CallError {type(error).__name__}: {error}"
            continue
        if action == "StartTransaction":
            started["id"] = answer["transaction_id"]
        if action == "BootNotification":
            assert answer["status"] == "Accepted", answer
            await until_online(client, station.id)
            continue  # the first message: there was no station record to compare with
        values = expected(action, payload)
        if route and not await persisted(client, route, station.id, before, values, tx):
            problems[action] = f"not readable at {route}"
    return problems


async def wrapped_messages(client: httpx.AsyncClient, station: Station16) -> dict[str, str]:
    """Each wrapped ISO 15118 station message: an Accepted DataTransfer whose data is a valid
    2.0.1 response; the wrapped SignCertificate's certificate ends up readable."""
    problems: dict[str, str] = {}
    for message in sorted(STATION_MESSAGES):
        request = build(WRAPPED_VERSION, message, Direction.REQUEST)
        if message == "SignCertificate":
            request = {"csr": make_csr(station.id), "certificateType": "V2GCertificate"}
        route = WRAPPED_PERSISTED.get(message)
        before = await read(client, route, station.id) if route else ""
        try:
            answer = await station.call(
                call16.DataTransfer(
                    vendor_id=PNC_VENDOR_ID, message_id=message, data=json.dumps(request)
                ),
                suppress=False,
            )
        except OCPPError as error:
            problems[message] = f"CallError {type(error).__name__}: {error}"
            continue
        if answer.status != "Accepted":
            problems[message] = f"DataTransfer {answer.status}"
            continue
        response = json.loads(answer.data)
        validate(WRAPPED_VERSION, message, Direction.RESPONSE, response)
        if message == "SignCertificate" and response["status"] != "Accepted":
            problems[message] = f"not signed: {response}"
            continue
        values = expected(message, request)
        if route and not await persisted(client, route, station.id, before, values):
            problems[message] = f"not readable at {route}"
    return problems


async def test_every_station_message_of_both_versions_is_handled_and_kept(
    fleet: tuple[Fleet, str], client: httpx.AsyncClient
) -> None:
    fleet_, _ = fleet
    suffix = uuid.uuid4().hex[:6]
    ids = {OcppVersion.OCPP201: f"MSG2-{suffix}", OcppVersion.OCPP16: f"MSG1-{suffix}"}
    ws201 = await websockets.connect(
        fleet_.url(ids[OcppVersion.OCPP201]),
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
    )
    ws16 = await websockets.connect(
        fleet_.url(ids[OcppVersion.OCPP16]),
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
    )
    station201 = Station201(ids[OcppVersion.OCPP201], ws201, response_timeout=scaled(15))
    station16 = Station16(ids[OcppVersion.OCPP16], ws16, response_timeout=scaled(15))
    tasks = [asyncio.create_task(s.start()) for s in (station201, station16)]
    try:
        problems201, problems16 = await asyncio.gather(
            every_station_action(client, station201), every_station_action(client, station16)
        )
        wrapped = await wrapped_messages(client, station16)
        assert problems201 == {}, problems201
        assert problems16 == {}, problems16
        assert wrapped == {}, wrapped
        # The signed certificates: 2.0.1's and 1.6's own, and the wrapped V2G one.
        for station, types in (
            (station201, ["ChargingStationCertificate"]),
            (station16, ["ChargingStationCertificate", "V2GCertificate"]),
        ):
            body = json.loads(await read(client, "/v1/stations/{id}/certificates", station.id))
            issued = sorted((i["certificate_type"], i["status"]) for i in body["issued"])
            assert issued == [(t, "Accepted") for t in types], (station.id, issued)
        # And the other way: a wrapped CSMS message from the API, its answer applied by
        # whichever manager got it, readable through the API.
        asked = await client.post(
            f"/v1/stations/{station16.id}/iso15118/GetInstalledCertificateIds", json={}
        )
        assert asked.status_code == 200, asked.text
        assert asked.json()["iso15118"]["payload"]["certificateHashDataChain"] == [INSTALLED]
        route = "/v1/stations/{id}/certificates"
        assert await persisted(client, route, station16.id, "", ["5ca1ab1e"])
        # Nothing about these stations went wrong in any process.
        names = set(ids.values())
        for process in fleet_.processes:
            troubles = [
                record
                for record in process.log_records()
                if record.get("station") in names and record.get("level") in ("error", "critical")
            ]
            assert not troubles, (process.role, troubles)
    finally:
        for task in tasks:
            task.cancel()
        await ws201.close()
        await ws16.close()
