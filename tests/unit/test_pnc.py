"""ISO 15118 Plug & Charge through the embedded CSMS with real WebSocket stations: contract
chains checked against a local V2G root and a local OCSP responder, GetCertificateStatus
as OCSP proxy, Get15118EVCertificate through a provider over HTTP, the 1.6 DataTransfer
wrapping of all three, and the DataTransfer vendor registry."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import ocsp
from websockets.asyncio.client import ClientConnection, connect

from cli import processes
from csms.config import Settings, TokenSettings
from services.data_transfer import MessageTable, VendorAnswer, VendorMessage
from services.pnc import (
    CertificateStatus,
    LocalContractVerifier,
    OcspAnswer,
    OcspCache,
    request_data,
)
from tests.pnc_pki import ContractPki, Responder, issue, pem, running_responder

BOOT_201 = {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}
BOOT_16 = {"chargePointVendor": "V", "chargePointModel": "M"}
PNC = "org.openchargealliance.iso15118pnc"
EMAID = "DE8ACC12E46L89"
EMAID_16 = "DE8ACC12E46L90"


def make_vendor(settings: Settings) -> MessageTable:
    """A vendor handler as an operator plugs one in (``data_transfer_handlers``)."""

    async def echo(message: VendorMessage) -> VendorAnswer:
        return VendorAnswer(status="Accepted", data={"echo": message.data, "v": message.version})

    return MessageTable({"Echo": echo})


@pytest.fixture
def responder() -> Iterator[Responder]:
    with running_responder() as running:
        yield running


@pytest.fixture
def pki(tmp_path: Path, responder: Responder) -> ContractPki:
    made = ContractPki(tmp_path, f"{responder.url}/ocsp")
    responder.pki = made
    return made


def pnc_settings(pki: ContractPki, responder: Responder, **extra: Any) -> Settings:
    return Settings(
        listen_port=0,
        api_port=0,
        ping_interval=None,
        ping_timeout=None,
        v2g_root_certificates=[str(pki.root_file)],
        contract_certificate_provider_url=f"{responder.url}/provider",
        data_transfer_handlers={"com.example": "tests.unit.test_pnc:make_vendor"},
        tokens=[TokenSettings(id_token=EMAID), TokenSettings(id_token=EMAID_16)],
        **extra,
    )


class Station:
    """A real WebSocket station sending Calls one at a time."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count()

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        message_id = str(next(self.ids))
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        answer = json.loads(await self.ws.recv())
        assert answer[0] == 3 and answer[1] == message_id, answer
        return answer[2]


@pytest.fixture
async def csms(pki: ContractPki, responder: Responder) -> AsyncIterator[processes.Embedded]:
    async with processes.embedded(pnc_settings(pki, responder)) as running:
        yield running


async def station(csms: processes.Embedded, name: str, version: str) -> AsyncIterator[Station]:
    async with connect(csms.gateway.url_for(name), subprotocols=[version]) as ws:  # type: ignore[list-item]
        s = Station(ws)
        boot = BOOT_201 if version == "ocpp2.0.1" else BOOT_16
        assert (await s.call("BootNotification", boot))["status"] == "Accepted"
        yield s


def hash_data(pki: ContractPki, chain: str, url: str) -> dict[str, str]:
    leaf, sub = x509.load_pem_x509_certificates(chain.encode())
    data = request_data(leaf, sub, url)
    return {
        "hashAlgorithm": data.hash_algorithm,
        "issuerNameHash": data.issuer_name_hash,
        "issuerKeyHash": data.issuer_key_hash,
        "serialNumber": data.serial_number,
        "responderURL": data.responder_url,
    }


def authorize(
    certificate: str | None = None, hashes: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {"idToken": {"idToken": EMAID, "type": "eMAID"}}
    if certificate is not None:
        payload["certificate"] = certificate
    if hashes is not None:
        payload["iso15118CertificateHashData"] = hashes
    return payload


async def test_authorize_checks_the_contract_chain_and_ocsp(
    csms: processes.Embedded, pki: ContractPki, responder: Responder
) -> None:
    async for cs in station(csms, "CS-PNC-1", "ocpp2.0.1"):
        good = await cs.call("Authorize", authorize(pki.contract("good")))
        assert good == {"idTokenInfo": {"status": "Accepted"}, "certificateStatus": "Accepted"}
        hits = responder.ocsp_hits
        assert hits == 1
        revoked = await cs.call("Authorize", authorize(pki.contract("bad", "revoked")))
        assert revoked["certificateStatus"] == "CertificateRevoked"
        assert revoked["idTokenInfo"]["status"] == "Invalid"  # C07.FR.16
        expired = await cs.call("Authorize", authorize(pki.contract("old", expired=True)))
        assert expired["certificateStatus"] == "CertificateExpired"
        assert expired["idTokenInfo"]["status"] == "Expired"
        foreign = await cs.call("Authorize", authorize(pki.foreign_contract("alien")))
        assert foreign["certificateStatus"] == "CertChainError"
        assert foreign["idTokenInfo"]["status"] == "Invalid"
        garbage = await cs.call("Authorize", authorize("-----BEGIN CERTIFICATE-----\nAAAA\n"))
        assert garbage["certificateStatus"] == "CertChainError"
        # Hash data only: the station sends what it would ask the responder itself.
        chain = pki.contract("hashed")
        by_hash = await cs.call(
            "Authorize", authorize(hashes=[hash_data(pki, chain, pki.ocsp_url)])
        )
        assert by_hash["certificateStatus"] == "Accepted"
        before = responder.ocsp_hits
        again = await cs.call("Authorize", authorize(hashes=[hash_data(pki, chain, pki.ocsp_url)]))
        assert again["certificateStatus"] == "Accepted"
        assert responder.ocsp_hits == before  # cached until nextUpdate
        # A responder that cannot be reached proves nothing: not Accepted, not Revoked, but a
        # chain whose validity is not established (C07.FR.17).
        down = await cs.call(
            "Authorize",
            authorize(hashes=[hash_data(pki, pki.contract("x"), "http://127.0.0.1:9/ocsp")]),
        )
        assert down["certificateStatus"] == "CertChainError"
        assert down["idTokenInfo"]["status"] == "Invalid"
        # Without ISO 15118 data Authorize stays what it was: no certificateStatus.
        assert await cs.call("Authorize", authorize()) == {"idTokenInfo": {"status": "Accepted"}}


async def test_get_certificate_status_proxies_the_responder(
    csms: processes.Embedded, pki: ContractPki
) -> None:
    async for cs in station(csms, "CS-PNC-2", "ocpp2.0.1"):
        data = hash_data(pki, pki.contract("proxied", "revoked"), pki.ocsp_url)
        answer = await cs.call("GetCertificateStatus", {"ocspRequestData": data})
        assert answer["status"] == "Accepted"
        parsed = ocsp.load_der_ocsp_response(base64.b64decode(answer["ocspResult"]))
        assert parsed.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert format(parsed.serial_number, "x") == data["serialNumber"]
        unreachable = dict(data, responderURL="http://127.0.0.1:9/ocsp", serialNumber="ab12")
        failed = await cs.call("GetCertificateStatus", {"ocspRequestData": unreachable})
        assert failed["status"] == "Failed" and "ocspResult" not in failed
        # A serial number that is not hex names no certificate: Failed, not InternalError.
        nonsense = dict(data, serialNumber="serial-x")
        unusable = await cs.call("GetCertificateStatus", {"ocspRequestData": nonsense})
        assert unusable["status"] == "Failed"
        by_hash = await cs.call("Authorize", authorize(hashes=[nonsense]))
        assert by_hash["certificateStatus"] == "CertChainError"


async def test_get15118_ev_certificate_goes_to_the_provider(
    csms: processes.Embedded, responder: Responder
) -> None:
    request = {
        "iso15118SchemaVersion": "urn:iso:15118:2:2013:MsgDef",
        "action": "Install",
        "exiRequest": "RVhJLXJlcXVlc3Q=",
    }
    async for cs in station(csms, "CS-PNC-3", "ocpp2.0.1"):
        answer = await cs.call("Get15118EVCertificate", request)
        assert answer == {"status": "Accepted", "exiResponse": "RVhJLXJlc3BvbnNl"}
        assert responder.provider_requests[-1][0] == request
        responder.provider_status = 503
        failed = await cs.call("Get15118EVCertificate", request)
        assert failed["status"] == "Failed"
        assert failed["statusInfo"]["reasonCode"] == "ProviderFailed"


async def test_get15118_ev_certificate_without_a_provider_fails(
    pki: ContractPki, responder: Responder
) -> None:
    settings = pnc_settings(pki, responder).model_copy(
        update={"contract_certificate_provider_url": None}
    )
    async with processes.embedded(settings) as running:
        async for cs in station(running, "CS-PNC-4", "ocpp2.0.1"):
            answer = await cs.call(
                "Get15118EVCertificate",
                {"iso15118SchemaVersion": "urn:x", "action": "Update", "exiRequest": "AA=="},
            )
    assert answer["status"] == "Failed"
    assert answer["statusInfo"]["reasonCode"] == "NoProvider"
    assert responder.provider_requests == []


async def test_16_data_transfer_wraps_the_201_messages(
    csms: processes.Embedded, pki: ContractPki, responder: Responder
) -> None:
    def wrapped(message_id: str, data: Any) -> dict[str, Any]:
        return {"vendorId": PNC, "messageId": message_id, "data": json.dumps(data)}

    async for cs in station(csms, "CS-PNC-16", "ocpp1.6"):
        token = {"idToken": {"idToken": EMAID_16, "type": "eMAID"}}
        good = await cs.call(
            "DataTransfer", wrapped("Authorize", {**token, "certificate": pki.contract("g16")})
        )
        assert good["status"] == "Accepted"
        assert json.loads(good["data"]) == {
            "idTokenInfo": {"status": "Accepted"},
            "certificateStatus": "Accepted",
        }
        revoked = await cs.call(
            "DataTransfer",
            wrapped("Authorize", {**token, "certificate": pki.contract("r16", "revoked")}),
        )
        assert json.loads(revoked["data"])["certificateStatus"] == "CertificateRevoked"
        assert json.loads(revoked["data"])["idTokenInfo"]["status"] == "Invalid"
        data = hash_data(pki, pki.contract("p16"), pki.ocsp_url)
        status = await cs.call(
            "DataTransfer", wrapped("GetCertificateStatus", {"ocspRequestData": data})
        )
        assert json.loads(status["data"])["status"] == "Accepted"
        ev = await cs.call(
            "DataTransfer",
            wrapped(
                "Get15118EVCertificate",
                {"iso15118SchemaVersion": "urn:x", "action": "Install", "exiRequest": "AA=="},
            ),
        )
        assert json.loads(ev["data"])["exiResponse"] == "RVhJLXJlc3BvbnNl"
        # Not the 2.0.1 request's shape, or not JSON at all: Rejected.
        assert (await cs.call("DataTransfer", wrapped("Authorize", {"idTag": "x"})))[
            "status"
        ] == "Rejected"
        broken = {"vendorId": PNC, "messageId": "Authorize", "data": "{not json"}
        assert (await cs.call("DataTransfer", broken)) == {"status": "Rejected"}
        unknown = await cs.call("DataTransfer", {"vendorId": PNC, "messageId": "Nope"})
        assert unknown == {"status": "UnknownMessageId"}


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
async def test_vendor_registry(csms: processes.Embedded, version: str) -> None:
    async for cs in station(csms, f"CS-VENDOR-{version}", version):
        data: Any = "hello" if version == "ocpp1.6" else {"n": 1}
        echoed = await cs.call(
            "DataTransfer", {"vendorId": "com.example", "messageId": "Echo", "data": data}
        )
        assert echoed["status"] == "Accepted"
        body = echoed["data"] if version == "ocpp2.0.1" else json.loads(echoed["data"])
        assert body == {"echo": data, "v": version}
        other = await cs.call("DataTransfer", {"vendorId": "com.example", "messageId": "Other"})
        assert other == {"status": "UnknownMessageId"}
        assert await cs.call("DataTransfer", {"vendorId": "org.unknown"}) == {
            "status": "UnknownVendorId"
        }
    if version == "ocpp2.0.1":
        # The PnC vendor is a 1.6 wrapping: a 2.0.1 station has the real messages.
        async for cs in station(csms, "CS-VENDOR-PNC", version):
            answer = await cs.call("DataTransfer", {"vendorId": PNC, "messageId": "Authorize"})
            assert answer == {"status": "UnknownVendorId"}


async def test_ocsp_cache_keeps_answers_until_next_update_capped(
    pki: ContractPki, responder: Responder
) -> None:
    clock = [time.time()]  # the responder stamps real time; the cache reads this clock
    verifier = LocalContractVerifier([pki.root.cert], cache_seconds=600, clock=lambda: clock[0])
    chain = pki.contract("cached")
    assert await verifier.verify_contract(chain, []) is CertificateStatus.ACCEPTED
    assert await verifier.verify_contract(chain, []) is CertificateStatus.ACCEPTED
    assert responder.ocsp_hits == 1 and len(verifier.cache) == 1
    clock[0] += 601  # past the cap (nextUpdate is an hour away)
    pki.status[x509.load_pem_x509_certificates(chain.encode())[0].serial_number] = "revoked"
    assert await verifier.verify_contract(chain, []) is CertificateStatus.CERTIFICATE_REVOKED
    assert responder.ocsp_hits == 2
    await verifier.aclose()


def test_cache_keeps_nothing_without_next_update() -> None:
    cache = OcspCache(600, clock=lambda: 1000.0)
    cache.put(("SHA256", "a", "b", 1), OcspAnswer(der=b"x", status=ocsp.OCSPCertStatus.GOOD), None)
    assert cache.get(("SHA256", "a", "b", 1)) is None
    assert len(cache) == 0


async def test_signature_error_when_a_link_does_not_verify(pki: ContractPki) -> None:
    leaf = x509.load_pem_x509_certificates(pki.contract("sig").encode())[0]
    # A sub-CA of the same name as the real issuer, but another key.
    impostor = issue("MO Sub-CA", pki.root, ca=True)
    verifier = LocalContractVerifier([pki.root.cert])
    status = await verifier.verify_contract(pem(leaf, impostor.cert), [])
    assert status is CertificateStatus.SIGNATURE_ERROR


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """An OCSP URL whose server takes the connection and never answers (a hung responder)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/ocsp"


async def test_an_ocsp_outage_is_a_cert_chain_error_not_a_verdict(tmp_path: Path) -> None:
    """C07.FR.17: with the responder stopped or hanging past ``ocsp_timeout`` (and nothing
    cached, C07.FR.05) the chain's validity is not established: CertChainError, Invalid."""
    with running_responder() as stopped:
        pki = ContractPki(tmp_path, f"{stopped.url}/ocsp")
        stopped.pki = pki
        chain = pki.contract("outage")
    # Left the context: the local responder is stopped, its port closed.
    with silent_server() as hung, running_responder() as provider:
        settings = pnc_settings(pki, provider, ocsp_timeout=0.5)
        async with processes.embedded(settings) as running:
            async for cs in station(running, "CS-PNC-OUTAGE", "ocpp2.0.1"):
                down = await cs.call("Authorize", authorize(chain))
                assert down == {
                    "idTokenInfo": {"status": "Invalid"},
                    "certificateStatus": "CertChainError",
                }
                by_hash = authorize(hashes=[hash_data(pki, chain, hung)])
                hanging = await cs.call("Authorize", by_hash)
                assert hanging["certificateStatus"] == "CertChainError"
                assert hanging["idTokenInfo"]["status"] == "Invalid"
            async for cp in station(running, "CP-PNC-OUTAGE", "ocpp1.6"):
                token = {"idToken": {"idToken": EMAID_16, "type": "eMAID"}}
                wrapped = await cp.call(
                    "DataTransfer",
                    {
                        "vendorId": PNC,
                        "messageId": "Authorize",
                        "data": json.dumps({**token, "certificate": chain}),
                    },
                )
                assert json.loads(wrapped["data"])["certificateStatus"] == "CertChainError"
        assert provider.ocsp_hits == 0
