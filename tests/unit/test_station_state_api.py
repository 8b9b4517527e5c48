"""The station state routes end to end: ``csms run``'s composition (gateway, manager and operator
API on the in-process bus, in-memory stores), real WebSocket stations of both versions (the
``ocpp`` package) answering the calls the API sends, then the API's read routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import connect

from cli.processes import Embedded, embedded
from csms.config import Settings
from services.models import RegistrationStatus

ADMIN = "bootstrap-admin-key-for-tests"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
STATION_201, PATH_201 = "CS-1/A", "CS-1%2FA"
STATION_16 = "CP-16"


@dataclass
class Csms:
    running: Embedded
    client: httpx.AsyncClient

    async def send(self, path: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        answer = await self.client.post(
            f"/v1/stations/{path}/calls/{action}", json=payload, headers=HEADERS
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        assert body["outcome"] == "result", body
        return body

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
        "call_timeout": 5,
        "ping_interval": None,
        "ping_timeout": None,
    }
    settings = Settings(**values)
    async with embedded(settings) as running:
        assert running.api is not None
        async with httpx.AsyncClient(base_url=running.api.url, timeout=10) as client:
            yield Csms(running, client)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check`` holds: the managers apply a call's outcome from the shared topic,
    possibly just after the API has answered its caller."""
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the state never appeared")


@contextlib.asynccontextmanager
async def running_station(csms: Csms, station: Any, station_id: str) -> AsyncIterator[None]:
    task = asyncio.create_task(station.start())
    try:
        for _ in range(500):
            record = await csms.running.manager.services.stations.get(station_id)
            held = station_id in csms.running.gateway.connections
            if held and record is not None and record.online:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"{station_id} never came online")
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Station201(ChargePoint201):
    values = {("OCPPCommCtrlr", "HeartbeatInterval"): "300", ("EVSE", "Power"): "11000"}

    @on("GetVariables")
    async def on_get_variables(
        self, get_variable_data: list[dict[str, Any]], **_: Any
    ) -> result201.GetVariables:
        results = []
        for item in get_variable_data:
            found = self.values.get((item["component"]["name"], item["variable"]["name"]))
            result = {
                "component": item["component"],
                "variable": item["variable"],
                "attribute_status": "Accepted" if found else "UnknownVariable",
            }
            if found:
                result["attribute_value"] = found
            results.append(result)
        return result201.GetVariables(get_variable_result=results)

    @on("SendLocalList")
    async def on_send_local_list(self, **_: Any) -> result201.SendLocalList:
        return result201.SendLocalList(status="Accepted")


class Station16(ChargePoint16):
    @on("GetConfiguration")
    async def on_get_configuration(self, **_: Any) -> result16.GetConfiguration:
        return result16.GetConfiguration(
            configuration_key=[
                {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
                {"key": "NumberOfConnectors", "readonly": True, "value": "2"},
            ]
        )

    @on("ChangeConfiguration")
    async def on_change_configuration(self, **_: Any) -> result16.ChangeConfiguration:
        return result16.ChangeConfiguration(status="RebootRequired")

    @on("GetInstalledCertificateIds")
    async def on_get_installed(self, **_: Any) -> result16.GetInstalledCertificateIds:
        return result16.GetInstalledCertificateIds(
            status="Accepted",
            certificate_hash_data=[
                {
                    "hash_algorithm": "SHA256",
                    "issuer_name_hash": "aa11",
                    "issuer_key_hash": "bb22",
                    "serial_number": "0c",
                }
            ],
        )


REPORT = [
    {
        "component": {"name": "EVSE", "evse": {"id": 1}},
        "variable": {"name": "Power"},
        "variable_attribute": [
            {"type": "Actual", "value": "0", "mutability": "ReadOnly"},
            {"type": "MaxSet", "value": "22000"},
        ],
        "variable_characteristics": {
            "data_type": "decimal",
            "supports_monitoring": True,
            "unit": "W",
        },
    }
]


async def test_a_201_station_s_answers_and_report_are_read_through_the_api(csms: Csms) -> None:
    url = csms.running.gateway.url_for(STATION_201)
    async with connect(url, subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        station = Station201(STATION_201, ws, response_timeout=5)
        async with running_station(csms, station, STATION_201):
            base = f"/v1/stations/{PATH_201}"
            assert (await csms.read(f"{base}/variables")) == {"items": [], "next_cursor": None}
            await csms.send(
                PATH_201,
                "GetVariables",
                {
                    "getVariableData": [
                        {
                            "component": {"name": "OCPPCommCtrlr"},
                            "variable": {"name": "HeartbeatInterval"},
                        },
                        {
                            "component": {"name": "EVSE", "evse": {"id": 1}},
                            "variable": {"name": "Power"},
                        },
                        {
                            "component": {"name": "EVSE", "evse": {"id": 1}},
                            "variable": {"name": "Gone"},
                        },
                    ]
                },
            )

            async def both_read() -> bool:
                return len((await csms.read(f"{base}/variables"))["items"]) == 2

            await eventually(both_read)
            await station.call(
                call201.NotifyReport(
                    request_id=1, generated_at="2025-01-15T11:00:00Z", seq_no=0, report_data=REPORT
                )
            )
            evse = await csms.read(f"{base}/variables", component="EVSE")
            assert evse["next_cursor"] is None
            (power,) = evse["items"]
            assert (power["component"], power["evse_id"], power["variable"]) == ("EVSE", 1, "Power")
            attributes = {a["type"]: a for a in power["attributes"]}
            assert set(attributes) == {"Actual", "MaxSet"}
            assert attributes["Actual"]["value"] == "0"  # the report is newer than the read
            assert attributes["Actual"]["mutability"] == "ReadOnly"
            assert attributes["Actual"]["source"] == "NotifyReport"
            assert (attributes["MaxSet"]["value"], attributes["MaxSet"]["mutability"]) == (
                "22000",
                "ReadWrite",
            )
            assert power["characteristics"]["unit"] == "W"
            # Pages of one, in key order, until the cursor runs out.
            seen, cursor = [], None
            while True:
                page = await csms.read(
                    f"{base}/variables", limit=1, **({"cursor": cursor} if cursor else {})
                )
                seen += [item["component"] for item in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == ["EVSE", "OCPPCommCtrlr"]
            heartbeat = (await csms.read(f"{base}/variables", component="OCPPCommCtrlr"))["items"]
            assert heartbeat[0]["attributes"][0]["value"] == "300"
            assert heartbeat[0]["attributes"][0]["source"] == "GetVariables"

            await csms.send(PATH_201, "SendLocalList", {"versionNumber": 7, "updateType": "Full"})

            async def sent() -> bool:
                return bool((await csms.read(f"{base}/local-list"))["version"] == 7)

            await eventually(sent)
            local_list = await csms.read(f"{base}/local-list")
            assert local_list == {
                "station_id": STATION_201,
                "version": 7,
                "update_type": "Full",
                "source": "SendLocalList",
                "updated_at": local_list["updated_at"],
            }
            # The station detail route still answers for the same id.
            detail = await csms.read(base)
            assert detail["station_id"] == STATION_201


async def test_a_16_station_s_configuration_and_certificates_through_the_api(csms: Csms) -> None:
    url = csms.running.gateway.url_for(STATION_16)
    async with connect(url, subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        station = Station16(STATION_16, ws, response_timeout=5)
        async with running_station(csms, station, STATION_16):
            base = f"/v1/stations/{STATION_16}"
            await csms.send(STATION_16, "GetConfiguration", {})

            async def configured() -> bool:
                return len((await csms.read(f"{base}/configuration"))["items"]) == 2

            await eventually(configured)
            await csms.send(
                STATION_16, "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"}
            )

            async def changed() -> bool:
                items = (await csms.read(f"{base}/configuration"))["items"]
                return bool(items[0]["value"] == "60")

            await eventually(changed)
            items = (await csms.read(f"{base}/configuration"))["items"]
            assert [(i["key"], i["value"], i["readonly"], i["reboot_required"]) for i in items] == [
                ("HeartbeatInterval", "60", False, True),
                ("NumberOfConnectors", "2", True, False),
            ]
            await csms.send(
                STATION_16,
                "GetInstalledCertificateIds",
                {"certificateType": "CentralSystemRootCertificate"},
            )

            async def listed() -> bool:
                return bool((await csms.read(f"{base}/certificates"))["items"])

            await eventually(listed)
            certificates = await csms.read(f"{base}/certificates")
            assert certificates["installs"] == []
            (installed,) = certificates["items"]
            assert installed["certificate_type"] == "CentralSystemRootCertificate"
            assert installed["certificate_hash_data"] == {
                "hash_algorithm": "SHA256",
                "issuer_name_hash": "aa11",
                "issuer_key_hash": "bb22",
                "serial_number": "0c",
            }
            assert (await csms.read(f"{base}/local-list"))["version"] is None


@pytest.mark.parametrize("route", ["variables", "configuration", "local-list", "certificates"])
async def test_routes_need_a_key_and_a_known_station(csms: Csms, route: str) -> None:
    answer = await csms.client.get(f"/v1/stations/NOPE%2FX/{route}", headers=HEADERS)
    assert answer.status_code == 404, answer.text
    body = answer.json()
    assert body["code"] == "station_not_found" and "NOPE/X" in body["message"]
    assert body["details"] == {"field": "station_id", "in": "path"}
    unauthorized = await csms.client.get(f"/v1/stations/NOPE/{route}")
    assert unauthorized.status_code == 401


async def test_a_read_key_may_read_and_bad_cursors_are_400(csms: Csms) -> None:
    await csms.running.manager.services.stations.provision(STATION_201, RegistrationStatus.ACCEPTED)
    created = await csms.client.post(
        "/v1/api-keys", json={"name": "reader", "scope": "read"}, headers=HEADERS
    )
    read = {"Authorization": f"Bearer {created.json()['key']}"}
    base = f"/v1/stations/{PATH_201}"
    for route in ("variables", "configuration", "local-list", "certificates"):
        answer = await csms.client.get(f"{base}/{route}", headers=read)
        assert answer.status_code == 200, answer.text
    bad = await csms.client.get(f"{base}/variables", params={"cursor": "xyz"}, headers=read)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_cursor"
    too_many = await csms.client.get(f"{base}/variables", params={"limit": 0}, headers=read)
    assert too_many.status_code == 422
