"""Station certificates: the CSR check, the local CA, SignCertificate → CertificateSigned with
real WebSocket stations of both versions on ``csms run``'s composition, and renewal."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import connect

from cli.processes import Embedded, embedded
from csms.config import Settings
from manager.common.certificates import renew_due_certificates, renewal_round
from manager.router import Deps
from services.certificates import (
    CsrRefused,
    LocalCaSigner,
    check_csr,
    describe_chain,
    open_signer,
)
from services.models import StationCredentials
from tests.certs import Pki, make_pki

ADMIN = "bootstrap-admin-key-for-tests"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
ORG = "Example Charging"

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def make_csr(
    common_name: str, *, key: Key | None = None, organization: str | None = ORG
) -> tuple[str, Key]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        names.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(names))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def load_ca(pki: Pki) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())


# --- the CSR check -------------------------------------------------------------------------


def test_a_csr_naming_the_station_with_an_accepted_key_passes() -> None:
    for key in (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ):
        pem, _ = make_csr("CS001", key=key)
        csr = check_csr(pem, names={"CS001"}, organization=ORG)
        assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "CS001"


@pytest.mark.parametrize(
    ("pem_of", "reason"),
    [
        (lambda: make_csr("CS002")[0], "does not name the station"),
        (lambda: make_csr("CS001", organization="Someone Else")[0], "is not"),
        (lambda: make_csr("CS001", organization=None)[0], "is not"),
        (
            lambda: make_csr(
                "CS001", key=rsa.generate_private_key(public_exponent=65537, key_size=1024)
            )[0],
            "RSA key of 1024 bits",
        ),
        (
            lambda: make_csr("CS001", key=ec.generate_private_key(ec.SECP521R1()))[0],
            "EC curve secp521r1",
        ),
        (lambda: "not a csr", "not a PEM"),
    ],
    ids=["other-station", "other-org", "no-org", "weak-rsa", "p521", "garbage"],
)
def test_a_csr_that_may_not_be_signed_is_refused_with_the_reason(pem_of: Any, reason: str) -> None:
    with pytest.raises(CsrRefused, match=reason):
        check_csr(pem_of(), names={"CS001"}, organization=ORG)


def test_a_csr_with_a_broken_signature_is_refused() -> None:
    good, _ = make_csr("CS001")
    forged = bytearray(
        x509.load_pem_x509_csr(good.encode()).public_bytes(serialization.Encoding.DER)
    )
    forged[-5] ^= 0xFF  # inside the signature value: the CSR still parses
    pem = x509.load_der_x509_csr(bytes(forged)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CsrRefused, match="signature"):
        check_csr(pem.decode(), names={"CS001"}, organization=ORG)


def test_the_registered_certificate_identity_is_a_name_of_the_station() -> None:
    pem, _ = make_csr("serial-0042")
    check_csr(pem, names={"CS001", "serial-0042"}, organization=ORG)


# --- the local CA --------------------------------------------------------------------------


def test_the_local_ca_signs_a_leaf_chained_to_it(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    now = dt.datetime(2025, 1, 15, 12, tzinfo=dt.UTC)
    signer = LocalCaSigner.from_files(pki.ca.cert, pki.ca.key, validity_days=30, clock=lambda: now)
    pem, key = make_csr("CS001")
    chain = x509.load_pem_x509_certificates(
        signer.sign_now(pem, "ChargingStationCertificate").encode()
    )
    leaf, ca = chain
    assert ca == load_ca(pki)
    leaf.verify_directly_issued_by(ca)
    assert leaf.public_key() == key.public_key()
    assert leaf.subject.rfc4514_string() == f"O={ORG},CN=CS001"
    assert leaf.not_valid_after_utc == now + dt.timedelta(days=30)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    facts = describe_chain(signer.sign_now(pem, "V2GCertificate"))
    assert facts.not_after == now + dt.timedelta(days=30)


def test_the_ca_key_must_belong_to_the_ca_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with pytest.raises(ValueError, match="does not belong"):
        LocalCaSigner.from_files(pki.ca.cert, pki.foreign_ca.key)


async def test_no_ca_configured_means_no_signer(tmp_path: Path) -> None:
    assert await open_signer(Settings()) is None
    pki = make_pki(tmp_path)
    settings = Settings(ca_certificate_file=str(pki.ca.cert), ca_key_file=str(pki.ca.key))
    assert isinstance(await open_signer(settings), LocalCaSigner)


# --- SignCertificate → CertificateSigned through the embedded CSMS ------------------------


@contextlib.asynccontextmanager
async def running_csms(**values: Any) -> AsyncIterator[tuple[Embedded, httpx.AsyncClient]]:
    values = {
        "listen_port": 0,
        "api_port": 0,
        "api_admin_key": ADMIN,
        "call_timeout": 5,
        "ping_interval": None,
        "ping_timeout": None,
        "certificate_organization": ORG,
        "certificate_signed_delay": 0,
        **values,
    }
    settings = Settings(**values)
    async with embedded(settings) as running:
        assert running.api is not None
        async with httpx.AsyncClient(base_url=running.api.url, timeout=10) as client:
            yield running, client


class Station201(ChargePoint201):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signed: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.triggers: asyncio.Queue[str] = asyncio.Queue()

    @on("CertificateSigned")
    async def on_certificate_signed(self, **payload: Any) -> result201.CertificateSigned:
        await self.signed.put(payload)
        return result201.CertificateSigned(status="Accepted")

    @on("TriggerMessage")
    async def on_trigger(self, requested_message: str, **_: Any) -> result201.TriggerMessage:
        await self.triggers.put(requested_message)
        return result201.TriggerMessage(status="Accepted")


class Station16(ChargePoint16):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signed: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.triggers: asyncio.Queue[str] = asyncio.Queue()

    @on("CertificateSigned")
    async def on_certificate_signed(self, **payload: Any) -> result16.CertificateSigned:
        await self.signed.put(payload)
        return result16.CertificateSigned(status="Accepted")

    @on("ExtendedTriggerMessage")
    async def on_trigger(self, requested_message: str, **_: Any) -> result16.ExtendedTriggerMessage:
        await self.triggers.put(requested_message)
        return result16.ExtendedTriggerMessage(status="Accepted")


@contextlib.asynccontextmanager
async def station_online(
    running: Embedded, station_id: str, version: str
) -> AsyncIterator[Station201 | Station16]:
    url = running.gateway.url_for(station_id)
    async with connect(url, subprotocols=[version]) as ws:  # type: ignore[list-item]
        cls = Station201 if version == "ocpp2.0.1" else Station16
        station = cls(station_id, ws, response_timeout=5)
        task = asyncio.create_task(station.start())
        try:
            for _ in range(500):
                record = await running.services.stations.get(station_id)
                if record is not None and record.online:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError(f"{station_id} never came online")
            yield station
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def sign(station: Station201 | Station16, csr: str) -> Any:
    if isinstance(station, Station201):
        return await station.call(
            call201.SignCertificate(csr=csr, certificate_type="ChargingStationCertificate")
        )
    return await station.call(call16.SignCertificate(csr=csr))


async def issued_of(client: httpx.AsyncClient, station_id: str) -> list[dict[str, Any]]:
    for _ in range(500):
        answer = await client.get(f"/v1/stations/{station_id}/certificates", headers=HEADERS)
        assert answer.status_code == 200, answer.text
        issued: list[dict[str, Any]] = answer.json()["issued"]
        if issued:
            return issued
        await asyncio.sleep(0.01)
    raise AssertionError("no issued certificate recorded")


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp1.6"])
async def test_a_station_s_csr_comes_back_signed_recorded_and_renewed_once(
    tmp_path: Path, version: str
) -> None:
    pki = make_pki(tmp_path)
    station_id = "CS-CERT-1"
    async with (
        running_csms(ca_certificate_file=str(pki.ca.cert), ca_key_file=str(pki.ca.key)) as (
            running,
            client,
        ),
        station_online(running, station_id, version) as station,
    ):
        pem, key = make_csr(station_id)
        answer = await sign(station, pem)
        assert answer.status == "Accepted"
        delivered = await asyncio.wait_for(station.signed.get(), 5)
        leaf, ca = x509.load_pem_x509_certificates(delivered["certificate_chain"].encode())
        leaf.verify_directly_issued_by(load_ca(pki))
        assert ca == load_ca(pki)
        assert leaf.public_key() == key.public_key()
        assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == station_id
        if version == "ocpp2.0.1":
            assert delivered["certificate_type"] == "ChargingStationCertificate"

        (issued,) = await issued_of(client, station_id)
        assert issued["serial_number"] == format(leaf.serial_number, "x")
        assert issued["fingerprint_sha256"] == leaf.fingerprint(hashes.SHA256()).hex()
        assert issued["status"] == "Accepted"
        assert issued["certificate_type"] == "ChargingStationCertificate"
        assert issued["renewal_requested_at"] is None

        deps = running.manager.deps
        not_after = leaf.not_valid_after_utc
        early = not_after - dt.timedelta(days=31)
        assert await renew_due_certificates(deps, early) == 0
        due = not_after - dt.timedelta(days=29)
        assert await renew_due_certificates(deps, due) == 1
        expected = (
            "SignChargingStationCertificate"
            if version == "ocpp2.0.1"
            else ("SignChargePointCertificate")
        )
        assert await asyncio.wait_for(station.triggers.get(), 5) == expected
        assert await renew_due_certificates(deps, due + dt.timedelta(days=1)) == 0
        (issued,) = await issued_of(client, station_id)
        assert issued["renewal_requested_at"] is not None
        assert station.triggers.empty()


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp1.6"])
async def test_a_csr_for_another_station_is_rejected_and_nothing_is_sent(
    tmp_path: Path, version: str
) -> None:
    pki = make_pki(tmp_path)
    async with (
        running_csms(ca_certificate_file=str(pki.ca.cert), ca_key_file=str(pki.ca.key)) as (
            running,
            _,
        ),
        station_online(running, "CS-CERT-2", version) as station,
    ):
        answer = await sign(station, make_csr("CS-OTHER")[0])
        assert answer.status == "Rejected"
        if version == "ocpp2.0.1":
            assert answer.status_info["reason_code"] == "InvalidCSR"
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        assert (await sign(station, make_csr("CS-CERT-2", key=weak)[0])).status == "Rejected"
        await asyncio.sleep(0.05)
        assert station.signed.empty()


async def test_the_registered_certificate_identity_may_be_the_csr_s_cn(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    async with running_csms(ca_certificate_file=str(pki.ca.cert), ca_key_file=str(pki.ca.key)) as (
        running,
        _,
    ):
        await running.services.stations.set_credentials(
            "CS-CERT-3", StationCredentials(certificate_identity="serial-0042")
        )
        async with station_online(running, "CS-CERT-3", "ocpp2.0.1") as station:
            assert (await sign(station, make_csr("serial-0042")[0])).status == "Accepted"
            delivered = await asyncio.wait_for(station.signed.get(), 5)
            assert "BEGIN CERTIFICATE" in delivered["certificate_chain"]


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp1.6"])
async def test_without_a_ca_sign_certificate_is_rejected(version: str) -> None:
    async with (
        running_csms() as (running, _),
        station_online(running, "CS-CERT-4", version) as station,
    ):
        answer = await sign(station, make_csr("CS-CERT-4")[0])
        assert answer.status == "Rejected"
        if version == "ocpp2.0.1":
            assert answer.status_info["reason_code"] == "NoCA"


async def test_one_manager_runs_each_renewal_round() -> None:
    async with running_csms() as (running, _):
        deps: Deps = running.manager.deps
        now = dt.datetime(2025, 1, 15, 12, tzinfo=dt.UTC)
        assert await renewal_round(deps, "manager-a", now) is True
        assert await renewal_round(deps, "manager-b", now) is False
        assert await renewal_round(deps, "manager-a", now) is False
        later = now + dt.timedelta(seconds=deps.settings.certificate_check_interval)
        assert await renewal_round(deps, "manager-b", later) is True
