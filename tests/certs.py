"""A throwaway PKI for TLS tests, written with ``cryptography`` into a temporary directory.

``make_pki(tmp_path)`` gives a CA, a server certificate for ``localhost`` / ``127.0.0.1``,
one client certificate per station id (subject CN = station id), an expired client
certificate and one issued by another, untrusted CA. EC P-256 keys throughout: fast to make,
and what OCPP's mandatory ECDSA cipher suites use.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertFiles", "Pki", "client_context", "make_pki"]

_DAY = datetime.timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class CertFiles:
    """A PEM certificate and its PEM private key."""

    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class _Issuer:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclasses.dataclass
class Pki:
    """Paths of everything :func:`make_pki` wrote, and a way to issue more."""

    directory: Path
    ca: CertFiles
    server: CertFiles
    clients: dict[str, CertFiles]
    expired: CertFiles
    """Client certificate for the first station id, valid until yesterday."""
    foreign_ca: CertFiles
    foreign: CertFiles
    """Client certificate for the first station id, issued by ``foreign_ca`` (not trusted)."""
    _issuer: _Issuer = dataclasses.field(repr=False)

    def client(self, station_id: str) -> CertFiles:
        """The client certificate of ``station_id``, issued on first use."""
        if station_id not in self.clients:
            self.clients[station_id] = self.issue_client(station_id)
        return self.clients[station_id]

    def issue_client(
        self,
        common_name: str,
        *,
        san_dns: Iterable[str] = (),
        expired: bool = False,
        name: str | None = None,
    ) -> CertFiles:
        """A new client certificate signed by the CA."""
        return _issue(
            self.directory,
            name or f"client-{_slug(common_name)}{'-expired' if expired else ''}",
            self._issuer,
            common_name,
            server=False,
            san_dns=san_dns,
            expired=expired,
        )

    def issue_server(self, name: str, *, common_name: str = "localhost") -> CertFiles:
        """A new server certificate for localhost / 127.0.0.1 signed by the CA (for reloads)."""
        return _issue(
            self.directory, name, self._issuer, common_name, server=True, san_dns=("localhost",)
        )


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertFiles:
    files = CertFiles(directory / f"{name}.pem", directory / f"{name}.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


def _make_ca(directory: Path, name: str, common_name: str) -> tuple[CertFiles, _Issuer]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 30 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, name, cert, key), _Issuer(cert, key)


def _issue(
    directory: Path,
    name: str,
    issuer: _Issuer,
    common_name: str,
    *,
    server: bool,
    san_dns: Iterable[str] = (),
    expired: bool = False,
) -> CertFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_before, not_after = (
        (now - 10 * _DAY, now - _DAY) if expired else (now - _DAY, now + 30 * _DAY)
    )
    names: list[x509.GeneralName] = [x509.DNSName(dns) for dns in san_dns]
    if server:
        names.append(x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer.key, hashes.SHA256())
    return _write(directory, name, cert, key)


def make_pki(directory: Path, station_ids: Iterable[str] = ("CS001",)) -> Pki:
    """Write a CA, a server certificate, client certificates for ``station_ids``, an expired
    one and a foreign one (both for the first station id) into ``directory``."""
    ids = list(station_ids) or ["CS001"]
    ca, issuer = _make_ca(directory, "ca", "CSMS Test CA")
    foreign_ca, foreign_issuer = _make_ca(directory, "foreign-ca", "Someone Else's CA")
    server = _issue(directory, "server", issuer, "localhost", server=True, san_dns=("localhost",))
    clients = {
        station: _issue(directory, f"client-{_slug(station)}", issuer, station, server=False)
        for station in ids
    }
    expired = _issue(
        directory, f"client-{_slug(ids[0])}-expired", issuer, ids[0], server=False, expired=True
    )
    foreign = _issue(
        directory, f"client-{_slug(ids[0])}-foreign", foreign_issuer, ids[0], server=False
    )
    return Pki(
        directory=directory,
        ca=ca,
        server=server,
        clients=clients,
        expired=expired,
        foreign_ca=foreign_ca,
        foreign=foreign,
        _issuer=issuer,
    )


def client_context(pki: Pki, client: CertFiles | None = None) -> ssl.SSLContext:
    """A station's context: trusts the test CA, presents ``client`` when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca.cert))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context
