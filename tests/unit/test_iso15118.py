"""ISO 15118 certificate management of 1.6 charge points through the Plug & Charge wrapping
(OCA application note "Using ISO 15118 Plug & Charge with OCPP 1.6"), on ``csms run``'s
composition with real ``ocpp``-package stations: the wrapped SignCertificate signed by the
local CA and answered by a wrapped CertificateSigned; ``POST /v1/stations/{id}/iso15118/..``
wrapping each CSMS message, unwrapping the answer and applying it to the station's
certificates like a 2.0.1 station's; 2.0.1 stations getting the 2.0.1 call itself."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from cryptography import x509
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import connect

from cli.main import main
from cli.processes import Embedded, embedded
from csms.config import Settings
from manager.common.certificates import renew_due_certificates
from services.pnc import PNC_VENDOR_ID
from tests.certs import make_pki
from tests.unit.test_certificates import ORG, make_csr

ADMIN = "bootstrap-admin-key-for-tests"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
HASH = {
    "hashAlgorithm": "SHA256",
    "issuerNameHash": "a" * 64,
    "issuerKeyHash": "b" * 64,
    "serialNumber": "1f",
}
ROOT_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@dataclass
class Csms:
    running: Embedded
    client: httpx.AsyncClient

    async def iso15118(
        self, station: str, message_id: str, payload: dict[str, Any], **params: Any
    ) -> httpx.Response:
        return await self.client.post(
            f"/v1/stations/{station}/iso15118/{message_id}",
            json=payload,
            params=params,
            headers=HEADERS,
        )

    async def certificates(self, station: str) -> dict[str, Any]:
        answer = await self.client.get(f"/v1/stations/{station}/certificates", headers=HEADERS)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


@pytest.fixture
async def csms(tmp_path: Path) -> AsyncIterator[Csms]:
    pki = make_pki(tmp_path)
    values: dict[str, Any] = {
        "listen_port": 0,
        "api_port": 0,
        "api_admin_key": ADMIN,
        "call_timeout": 5,
        "ping_interval": None,
        "ping_timeout": None,
        "certificate_organization": ORG,
        "certificate_signed_delay": 0,
        "ca_certificate_file": str(pki.ca.cert),
        "ca_key_file": str(pki.ca.key),
    }
    settings = Settings(**values)
    async with embedded(settings) as running:
        assert running.api is not None
        async with httpx.AsyncClient(base_url=running.api.url, timeout=10) as client:
            yield Csms(running, client)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """The managers apply an answer from the shared topic, maybe just after the API replied."""
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the state never appeared")


Answer = tuple[str, dict[str, Any] | str | None]
"""A DataTransfer answer: status, and the 2.0.1 response (or raw text) for ``data``."""


class Station16(ChargePoint16):
    """A 1.6 charge point speaking the note's wrapped messages: it answers each wrapped
    CSMS message from ``answers`` and records what it got."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.got: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.answers: dict[str, Answer] = {
            "CertificateSigned": ("Accepted", {"status": "Accepted"}),
            "InstallCertificate": ("Accepted", {"status": "Accepted"}),
            "DeleteCertificate": ("Accepted", {"status": "Accepted"}),
            "GetInstalledCertificateIds": (
                "Accepted",
                {
                    "status": "Accepted",
                    "certificateHashDataChain": [
                        {"certificateType": "V2GRootCertificate", "certificateHashData": HASH}
                    ],
                },
            ),
            "TriggerMessage": ("Accepted", {"status": "Accepted"}),
        }

    @on("DataTransfer")
    async def on_data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None
    ) -> result16.DataTransfer:
        assert vendor_id == PNC_VENDOR_ID and message_id is not None and data is not None
        await self.got.put((message_id, json.loads(data)))
        status, response = self.answers[message_id]
        text = response if isinstance(response, str) or response is None else json.dumps(response)
        return result16.DataTransfer(status=status, data=text)

    async def wrapped(self, message_id: str, request: dict[str, Any]) -> tuple[str, Any]:
        """Send a wrapped station message; the DataTransfer status and the unwrapped data."""
        answer = await self.call(
            call16.DataTransfer(
                vendor_id=PNC_VENDOR_ID, message_id=message_id, data=json.dumps(request)
            )
        )
        return answer.status, json.loads(answer.data) if answer.data else None


class Station201(ChargePoint201):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.installed: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    @on("InstallCertificate")
    async def on_install(self, **payload: Any) -> result201.InstallCertificate:
        await self.installed.put(payload)
        return result201.InstallCertificate(status="Accepted")


@contextlib.asynccontextmanager
async def online(csms: Csms, station: Any, station_id: str) -> AsyncIterator[None]:
    task = asyncio.create_task(station.start())
    try:
        if isinstance(station, Station16):
            boot = await station.call(
                call16.BootNotification(charge_point_model="M", charge_point_vendor="V")
            )
        else:
            boot = await station.call(
                call201.BootNotification(
                    charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp"
                )
            )
        assert boot.status == "Accepted"
        for _ in range(500):
            if station_id in csms.running.gateway.connections:
                break
            await asyncio.sleep(0.01)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def station16(csms: Csms, station_id: str) -> AsyncIterator[Station16]:
    url = csms.running.gateway.url_for(station_id)
    async with connect(url, subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        station = Station16(station_id, ws)
        async with online(csms, station, station_id):
            yield station


async def test_a_wrapped_sign_certificate_is_signed_and_sent_back_wrapped(csms: Csms) -> None:
    async with station16(csms, "CP-PNC-SIGN") as cp:
        csr, _ = make_csr("CP-PNC-SIGN")
        status, answer = await cp.wrapped(
            "SignCertificate", {"csr": csr, "certificateType": "V2GCertificate"}
        )
        assert (status, answer) == ("Accepted", {"status": "Accepted"})
        message_id, signed = await asyncio.wait_for(cp.got.get(), 10)
        assert message_id == "CertificateSigned"
        assert signed["certificateType"] == "V2GCertificate"
        leaf = x509.load_pem_x509_certificates(signed["certificateChain"].encode())[0]
        assert "CP-PNC-SIGN" in leaf.subject.rfc4514_string()

        async def recorded() -> bool:
            issued = (await csms.certificates("CP-PNC-SIGN"))["issued"]
            return [(i["certificate_type"], i["status"]) for i in issued] == [
                ("V2GCertificate", "Accepted")
            ]

        await eventually(recorded)
        # Renewed the way it came: a wrapped TriggerMessage for SignV2GCertificate.
        deps = csms.running.manager.deps
        due = leaf.not_valid_after_utc - dt.timedelta(days=29)
        assert await renew_due_certificates(deps, due - dt.timedelta(days=2)) == 0
        assert await renew_due_certificates(deps, due) == 1
        trigger = await asyncio.wait_for(cp.got.get(), 10)
        assert trigger == ("TriggerMessage", {"requestedMessage": "SignV2GCertificate"})
        assert await renew_due_certificates(deps, due) == 0  # once per certificate
        # The same CSR checks as 2.0.1: a CSR naming another station is refused, nothing sent.
        other, _ = make_csr("SOMEONE-ELSE")
        status, refused = await cp.wrapped("SignCertificate", {"csr": other})
        assert status == "Accepted" and refused["status"] == "Rejected"
        assert refused["statusInfo"]["reasonCode"] == "InvalidCSR"
        assert cp.got.empty()
        # Not the 2.0.1 request's shape: the DataTransfer itself is Rejected.
        assert (await cp.wrapped("SignCertificate", {"certificate": "x"}))[0] == "Rejected"


async def test_each_csms_message_is_wrapped_unwrapped_and_applied(csms: Csms) -> None:
    async with station16(csms, "CP-PNC-API") as cp:
        installed = await csms.iso15118(
            "CP-PNC-API",
            "InstallCertificate",
            {"certificateType": "MORootCertificate", "certificate": ROOT_PEM},
        )
        assert installed.status_code == 200, installed.text
        body = installed.json()
        assert (body["outcome"], body["action"], body["version"]) == (
            "result",
            "DataTransfer",
            "ocpp1.6",
        )
        assert body["iso15118"] == {
            "message_id": "InstallCertificate",
            "wrapped": True,
            "status": "Accepted",
            "payload": {"status": "Accepted"},
            "error": None,
        }
        assert await cp.got.get() == (
            "InstallCertificate",
            {"certificateType": "MORootCertificate", "certificate": ROOT_PEM},
        )

        listed = await csms.iso15118(
            "CP-PNC-API", "GetInstalledCertificateIds", {"certificateType": ["V2GRootCertificate"]}
        )
        assert listed.json()["iso15118"]["payload"]["certificateHashDataChain"][0][
            "certificateType"
        ] == ("V2GRootCertificate")
        assert (await cp.got.get())[0] == "GetInstalledCertificateIds"

        async def applied() -> bool:
            state = await csms.certificates("CP-PNC-API")
            return [i["certificate_type"] for i in state["installs"]] == ["MORootCertificate"] and [
                (c["certificate_type"], c["certificate_hash_data"]["serial_number"])
                for c in state["items"]
            ] == [("V2GRootCertificate", "1f")]

        await eventually(applied)

        deleted = await csms.iso15118(
            "CP-PNC-API", "DeleteCertificate", {"certificateHashData": HASH}
        )
        assert deleted.json()["iso15118"]["payload"] == {"status": "Accepted"}
        assert await cp.got.get() == ("DeleteCertificate", {"certificateHashData": HASH})

        async def gone() -> bool:
            items: list[Any] = (await csms.certificates("CP-PNC-API"))["items"]
            return items == []

        await eventually(gone)

        trigger = await csms.iso15118(
            "CP-PNC-API", "TriggerMessage", {"requestedMessage": "SignV2GCertificate"}
        )
        assert trigger.json()["iso15118"]["payload"] == {"status": "Accepted"}
        assert await cp.got.get() == ("TriggerMessage", {"requestedMessage": "SignV2GCertificate"})


async def test_refusals_and_broken_answers_are_returned_as_such(csms: Csms) -> None:
    async with station16(csms, "CP-PNC-NO") as cp:
        cp.answers["InstallCertificate"] = ("UnknownMessageId", None)
        payload = {"certificateType": "V2GRootCertificate", "certificate": ROOT_PEM}
        unknown = (await csms.iso15118("CP-PNC-NO", "InstallCertificate", payload)).json()
        assert unknown["iso15118"]["status"] == "UnknownMessageId"
        assert unknown["iso15118"]["payload"] is None
        cp.answers["InstallCertificate"] = ("Accepted", {"status": "Maybe"})
        broken = (await csms.iso15118("CP-PNC-NO", "InstallCertificate", payload)).json()
        assert broken["iso15118"]["payload"] is None
        assert broken["iso15118"]["error"]
        cp.answers["InstallCertificate"] = ("Accepted", "{not json")
        garbage = (await csms.iso15118("CP-PNC-NO", "InstallCertificate", payload)).json()
        assert "JSON" in garbage["iso15118"]["error"]
        # Neither refusal installed anything.
        assert (await csms.certificates("CP-PNC-NO"))["installs"] == []
        # Refused before sending: another messageId, a payload the 2.0.1 schema refuses, a
        # TriggerMessage for anything but the V2G certificate.
        nope = await csms.iso15118("CP-PNC-NO", "Reset", {"type": "Immediate"})
        assert nope.status_code == 404 and nope.json()["code"] == "unknown_message"
        bad = await csms.iso15118("CP-PNC-NO", "InstallCertificate", {"certificate": "x"})
        assert bad.status_code == 422 and bad.json()["details"]["in"] == "body"
        boot = await csms.iso15118(
            "CP-PNC-NO", "TriggerMessage", {"requestedMessage": "BootNotification"}
        )
        assert boot.status_code == 422 and boot.json()["details"]["field"] == "requestedMessage"
        # Without waiting: 202, the wrapped call readable from the call records.
        pending = await csms.iso15118("CP-PNC-NO", "InstallCertificate", payload, wait="false")
        assert pending.status_code == 202
        assert pending.headers["Location"].startswith("/v1/calls/")
        await cp.got.get()
        record = await csms.client.get(pending.headers["Location"], headers=HEADERS)
        assert record.json()["request"]["messageId"] == "InstallCertificate"


async def test_a_201_station_gets_the_201_call_itself(csms: Csms) -> None:
    url = csms.running.gateway.url_for("CS-PNC-201")
    async with connect(url, subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        station = Station201("CS-PNC-201", ws)
        async with online(csms, station, "CS-PNC-201"):
            payload = {"certificateType": "V2GRootCertificate", "certificate": ROOT_PEM}
            answer = await csms.iso15118("CS-PNC-201", "InstallCertificate", payload)
            body = answer.json()
            assert (body["action"], body["payload"]) == (
                "InstallCertificate",
                {"status": "Accepted"},
            )
            assert body["iso15118"]["wrapped"] is False
            assert body["iso15118"]["payload"] == {"status": "Accepted"}
            got = await station.installed.get()
            assert got["certificate_type"] == "V2GRootCertificate"


async def test_an_offline_station_is_409_at_once(csms: Csms) -> None:
    async with station16(csms, "CP-PNC-GONE"):
        pass
    for _ in range(500):
        if "CP-PNC-GONE" not in csms.running.gateway.connections:
            break
        await asyncio.sleep(0.01)
    answer = await csms.iso15118(
        "CP-PNC-GONE", "TriggerMessage", {"requestedMessage": "SignV2GCertificate"}
    )
    assert answer.status_code == 409 and answer.json()["code"] == "station_offline"


async def test_the_cli_sends_it_and_exits_by_the_answer(
    csms: Csms, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # keep stdout clean
    try:
        async with station16(csms, "CP-PNC-CLI") as cp:
            assert csms.running.api is not None
            flags = ["--api-url", csms.running.api.url, "--api-key", ADMIN]
            payload = json.dumps({"certificateType": "V2GRootCertificate", "certificate": ROOT_PEM})
            argv = ["iso15118", "CP-PNC-CLI", "InstallCertificate", payload, *flags]
            capsys.readouterr()
            assert await asyncio.to_thread(main, [*argv, "--json"]) == 0
            body = json.loads(capsys.readouterr().out)
            assert body["iso15118"]["payload"] == {"status": "Accepted"}
            assert (await cp.got.get())[0] == "InstallCertificate"
            cp.answers["InstallCertificate"] = ("Rejected", None)
            assert await asyncio.to_thread(main, argv) == 3
            assert "Rejected" in capsys.readouterr().out
            bad = ["iso15118", "CP-PNC-CLI", "InstallCertificate", "{}", *flags]
            assert await asyncio.to_thread(main, bad) == 2
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)
