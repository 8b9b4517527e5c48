"""An RSA and an ECDSA server certificate served side by side on one listener context
(OCPP 2.0.1 A00.FR.318): a station offering only RSA suites and one offering only ECDSA
suites both complete a real TLS 1.2 handshake, each getting the certificate it can use."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from csms.config import ListenerTlsSettings
from gateway.tls import CertificateReloader, server_ssl_context
from tests.certs import CertFiles, Pki, make_pki


def rsa_server(pki: Pki, directory: Path) -> CertFiles:
    """An RSA server certificate for localhost, issued by the test CA."""
    ca = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = CertFiles(directory / "server-rsa.pem", directory / "server-rsa.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


async def handshake(server_context: ssl.SSLContext, pki: Pki, ciphers: str) -> tuple[str, str]:
    """(negotiated cipher, the server certificate's key type) for a TLS 1.2 client that
    offers only ``ciphers``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cafile=str(pki.ca.cert))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers(ciphers)
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
        ssl_object = writer.get_extra_info("ssl_object")
        cipher = ssl_object.cipher()[0]
        der = ssl_object.getpeercert(binary_form=True)
        key = x509.load_der_x509_certificate(der).public_key()
        writer.close()
        return cipher, "rsa" if isinstance(key, rsa.RSAPublicKey) else "ecdsa"
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


async def test_rsa_and_ecdsa_clients_each_get_their_certificate(pki: Pki, tmp_path: Path) -> None:
    rsa_files = rsa_server(pki, tmp_path)
    context = server_ssl_context(
        rsa_files.cert, rsa_files.key, more_certificates=[(pki.server.cert, pki.server.key)]
    )
    assert await handshake(context, pki, "AES128-GCM-SHA256") == ("AES128-GCM-SHA256", "rsa")
    assert await handshake(context, pki, "ECDHE-RSA-AES256-GCM-SHA384") == (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "rsa",
    )
    assert await handshake(context, pki, "ECDHE-ECDSA-AES128-GCM-SHA256") == (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ecdsa",
    )


async def test_with_one_certificate_the_other_suites_fail(pki: Pki, tmp_path: Path) -> None:
    rsa_files = rsa_server(pki, tmp_path)
    context = server_ssl_context(rsa_files.cert, rsa_files.key)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await handshake(context, pki, "ECDHE-ECDSA-AES128-GCM-SHA256")


async def test_a_reload_keeps_both_certificates(pki: Pki, tmp_path: Path) -> None:
    rsa_files = rsa_server(pki, tmp_path)
    more = [(pki.server.cert, pki.server.key)]
    context = server_ssl_context(rsa_files.cert, rsa_files.key, more_certificates=more)
    reloader = CertificateReloader(context, rsa_files.cert, rsa_files.key, more_certificates=more)
    renewed = pki.issue_server("server-ec-renewed")
    pki.server.cert.write_bytes(renewed.cert.read_bytes())
    pki.server.key.write_bytes(renewed.key.read_bytes())
    assert reloader.reload_if_changed()
    _, kind = await handshake(context, pki, "ECDHE-ECDSA-AES256-GCM-SHA384")
    assert kind == "ecdsa"
    assert (await handshake(context, pki, "AES256-GCM-SHA384"))[1] == "rsa"


def test_the_ecdsa_pair_is_configured_whole() -> None:
    with pytest.raises(ValueError, match="go together"):
        ListenerTlsSettings(cert_file="a.pem", key_file="a.key", ecdsa_cert_file="b.pem")
