"""TLS offload: a listener behind a TLS-terminating proxy, on loopback.

The test plays the proxy: it connects over plain TCP from 127.0.0.1 and sets the headers a
proxy would (``X-Forwarded-Proto``, the client certificate as URL-encoded PEM). Only trusted
proxy addresses are believed; the same headers from anyone else are ignored and logged.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_pem_x509_certificate
from structlog.testing import capture_logs

from csms.config import ListenerSettings, TlsOffloadSettings
from csms.credentials import hash_password
from tests.certs import CertFiles, Pki, make_pki
from tests.integration.test_security_profiles import (
    PASSWORD,
    V16,
    Csms,
    basic,
    charge_16,
    embedded,
    open_ws,
    refused,
    security_settings,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), station_ids=["CP3", "OTHER"])


def offload_settings(pki: Pki, trusted: list[str], **offload: Any) -> Any:
    listener = ListenerSettings(
        host="127.0.0.1",
        port=0,
        profiles=[1, 2, 3],
        offload=TlsOffloadSettings(
            trusted_proxies=trusted, client_cert_header="X-SSL-Client-Cert", **offload
        ),
    )
    return security_settings(pki, listeners=[listener])


@pytest.fixture
async def behind_proxy(pki: Pki) -> AsyncIterator[Csms]:
    async with embedded(offload_settings(pki, ["127.0.0.0/8", "::1"])) as csms:
        yield csms


@pytest.fixture
async def untrusted(pki: Pki) -> AsyncIterator[Csms]:
    async with embedded(offload_settings(pki, ["10.0.0.0/8"])) as csms:
        yield csms


def escaped_pem(files: CertFiles) -> str:
    """The certificate as nginx's ``$ssl_client_escaped_cert`` sends it."""
    return quote(files.cert.read_text(), safe="")


def proxy_headers(cert: CertFiles | None = None, *, scheme: str = "https") -> dict[str, str]:
    headers = {"X-Forwarded-Proto": scheme, "X-Forwarded-For": "198.51.100.7"}
    if cert is not None:
        headers["X-SSL-Client-Cert"] = escaped_pem(cert)
    return headers


async def test_trusted_proxy_certificate_is_profile_3(behind_proxy: Csms, pki: Pki) -> None:
    await behind_proxy.register("CP3", 3)
    with capture_logs() as logs:
        async with await open_ws(
            behind_proxy.url("CP3"), V16, headers=proxy_headers(pki.client("CP3"))
        ) as ws:
            assert await charge_16(ws, "CP3") == "Accepted"
    admitted = next(log for log in logs if log["event"] == "station admitted")
    assert admitted["profile"] == 3 and admitted["forwarded_for"] == "198.51.100.7"


async def test_trusted_proxy_certificate_of_another_station_is_403(
    behind_proxy: Csms, pki: Pki
) -> None:
    await behind_proxy.register("CP3", 3)
    response = await refused(behind_proxy.url("CP3"), headers=proxy_headers(pki.client("OTHER")))
    assert response.status_code == 403
    assert await behind_proxy.quiet() == []


async def test_trusted_proxy_expired_certificate_is_403(behind_proxy: Csms, pki: Pki) -> None:
    await behind_proxy.register("CP3", 3)
    with capture_logs() as logs:
        response = await refused(behind_proxy.url("CP3"), headers=proxy_headers(pki.expired))
    assert response.status_code == 403
    refusal = next(log for log in logs if log["event"] == "connection refused")
    assert refusal["station"] == "CP3"
    assert "expired" in refusal["certificate_error"]


async def test_trusted_proxy_garbage_certificate_is_403(behind_proxy: Csms) -> None:
    await behind_proxy.register("CP3", 3)
    headers = {"X-Forwarded-Proto": "https", "X-SSL-Client-Cert": "not a certificate"}
    response = await refused(behind_proxy.url("CP3"), headers=headers)
    assert response.status_code == 403


async def test_trusted_proxy_profile_2_and_downgrade(behind_proxy: Csms, pki: Pki) -> None:
    await behind_proxy.register("CP2", 2, password_hash=hash_password(PASSWORD))
    credentials = basic("CP2", PASSWORD)
    async with await open_ws(behind_proxy.url("CP2"), headers=proxy_headers() | credentials):
        pass
    # The proxy says the station came over plain ws: a profile-2 station is refused.
    response = await refused(
        behind_proxy.url("CP2"), headers=proxy_headers(scheme="http") | credentials
    )
    assert response.status_code == 403 and b"downgrade" in response.body


async def test_certificate_checked_against_configured_cas(pki: Pki) -> None:
    settings = offload_settings(pki, ["127.0.0.1"], client_ca_files=[str(pki.ca.cert)])
    async with embedded(settings) as csms:
        await csms.register("CP3", 3)
        async with await open_ws(csms.url("CP3"), headers=proxy_headers(pki.client("CP3"))):
            pass
        with capture_logs() as logs:
            response = await refused(csms.url("CP3"), headers=proxy_headers(pki.foreign))
        assert response.status_code == 403
        refusal = next(log for log in logs if log["event"] == "connection refused")
        assert refusal["certificate_error"] == "client certificate not issued by a trusted CA"


async def test_untrusted_source_headers_are_ignored_and_logged(untrusted: Csms, pki: Pki) -> None:
    await untrusted.register("CP3", 3)
    with capture_logs() as logs:
        response = await refused(untrusted.url("CP3"), headers=proxy_headers(pki.client("CP3")))
    # Not believed: the connection is plain ws, and profile 3 needs TLS.
    assert response.status_code == 403
    ignored = next(log for log in logs if "untrusted" in log["event"])
    assert ignored["station"] == "CP3"
    assert ignored["headers"] == ["X-Forwarded-Proto", "X-SSL-Client-Cert"]
    assert ignored["log_level"] == "warning"
    assert await untrusted.quiet() == []


async def test_untrusted_source_still_serves_profile_1(untrusted: Csms) -> None:
    await untrusted.register("CP1", 1, password_hash=hash_password(PASSWORD))
    async with await open_ws(untrusted.url("CP1"), headers=basic("CP1", PASSWORD)):
        pass


async def test_other_certificate_encodings(behind_proxy: Csms, pki: Pki) -> None:
    """Envoy's XFCC ``Cert=`` field and HAProxy's base64 DER are understood too."""
    await behind_proxy.register("CP3", 3)
    files = pki.client("CP3")
    der = load_pem_x509_certificate(files.cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    for value in (
        f'By=spiffe://proxy;Hash=abc;Cert="{escaped_pem(files)}";Subject="CN=CP3"',
        base64.b64encode(der).decode(),
        files.cert.read_text().replace("\n", " "),
    ):
        headers = {"X-Forwarded-Proto": "https", "X-SSL-Client-Cert": value}
        async with await open_ws(behind_proxy.url("CP3"), headers=headers):
            pass


async def test_per_address_limit_counts_the_forwarded_station_address(pki: Pki) -> None:
    settings = offload_settings(pki, ["127.0.0.0/8", "::1"]).model_copy(
        update={"max_connections_per_address": 2}
    )
    async with embedded(settings) as csms:
        for station in ("CP-A", "CP-B", "CP-C"):
            await csms.register(station, 1, password_hash=hash_password(PASSWORD))

        def via_proxy(station: str, client: str) -> dict[str, str]:
            # A client-supplied entry first, then the address the proxy appended.
            forwarded = {"X-Forwarded-For": f"203.0.113.99, {client}"}
            return {**basic(station, PASSWORD), **forwarded}

        # Three stations behind one proxy, from three addresses: all admitted.
        held = [
            await open_ws(csms.url(station), headers=via_proxy(station, f"198.51.100.{i}"))
            for i, station in enumerate(("CP-A", "CP-B", "CP-C"))
        ]
        try:
            # A third connection from an address that already holds two is refused, even
            # though its made-up first entry differs.
            await held[0].close()
            await held[1].close()
            same = "198.51.100.77"
            held = held[2:] + [
                await open_ws(csms.url(s), headers=via_proxy(s, same)) for s in ("CP-A", "CP-B")
            ]
            response = await refused(csms.url("CP-C"), headers=via_proxy("CP-C", same))
            assert response.status_code == 429
        finally:
            for ws in held:
                await ws.close()
