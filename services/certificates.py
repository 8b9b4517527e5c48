"""Station certificates: checking a station's CSR and signing it (SignCertificate, A02/A03).

- :func:`check_csr` decides whether a CSR may be signed: a valid signature, the subject CN
  naming the station (its id or its registered certificate identity), the subject O the
  configured organisation, and a key OCPP accepts (RSA of at least 2048 bits, EC P-256 or
  P-384). It raises :class:`CsrRefused` with the reason.
- :class:`CertificateSigner` is the integration point that turns an accepted CSR into a
  certificate chain. :class:`LocalCaSigner` (the built-in one) signs with a CA certificate
  and key read from files; operators plug their own in with ``certificate_signer =
  "module:factory"`` (an external CA, an HSM, a V2G PKI) through :mod:`services.loader`.
- :func:`describe_chain` reads what the CSMS records of a certificate it sent
  (CertificateSigned): serial, not-after, fingerprint.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.loader import instantiate

if TYPE_CHECKING:
    from csms.config import Settings

__all__ = [
    "CHARGING_STATION_CERTIFICATE",
    "EC_CURVES",
    "MIN_RSA_BITS",
    "V2G_CERTIFICATE",
    "CertificateFacts",
    "CertificateSigner",
    "CsrRefused",
    "LocalCaSigner",
    "check_csr",
    "describe_chain",
    "open_signer",
]

CHARGING_STATION_CERTIFICATE = "ChargingStationCertificate"
"""The certificate the station presents as TLS client (security profile 3); 1.6 has only it."""
V2G_CERTIFICATE = "V2GCertificate"
"""The station's ISO 15118 SECC certificate (TLS server towards the EV)."""
MIN_RSA_BITS = 2048
EC_CURVES = frozenset({"secp256r1", "secp384r1"})
"""Curves OCPP's cipher suites use (P-256, P-384)."""
_BACKDATE = dt.timedelta(minutes=5)
"""A new certificate is valid from a little before now: station clocks drift."""


class CsrRefused(ValueError):
    """A CSR the CSMS will not sign; the message says why (logged, and put in 2.0.1's
    ``statusInfo.additionalInfo``)."""


def check_csr(
    pem: str, *, names: Collection[str], organization: str | None
) -> x509.CertificateSigningRequest:
    """The parsed CSR when it may be signed for a station known by ``names`` (its id and its
    registered certificate identity); raises :class:`CsrRefused` otherwise. ``organization``
    None accepts any O (none configured)."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError as exc:
        raise CsrRefused(f"not a PEM certificate signing request: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except Exception:  # an algorithm cryptography cannot verify
        valid = False
    if not valid:
        raise CsrRefused("the CSR's signature is not valid")
    common_names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(common_names) != 1 or common_names[0] not in names:
        raise CsrRefused(f"subject CN {common_names!r} does not name the station")
    if organization is not None:
        orgs = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        if orgs != [organization]:
            raise CsrRefused(f"subject O {orgs!r} is not {organization!r}")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrRefused(f"RSA key of {key.key_size} bits (at least {MIN_RSA_BITS})")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_CURVES:
            raise CsrRefused(f"EC curve {key.curve.name} (P-256 or P-384 only)")
    else:
        raise CsrRefused(f"key type {type(key).__name__} (RSA or EC only)")
    return csr


@runtime_checkable
class CertificateSigner(Protocol):
    """Signs a station's accepted CSR. Called after :func:`check_csr` accepted it, off the
    station's Call (the SignCertificate answer does not wait for it)."""

    async def sign(self, csr: str, station_id: str, certificate_type: str) -> str:
        """The certificate chain in PEM, the station's certificate first, then the CAs up
        to (not necessarily including) the root. Raises on failure (logged, nothing sent)."""
        ...


CaKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class LocalCaSigner:
    """:class:`CertificateSigner` with a CA certificate and key held by the CSMS.

    The certificate keeps the CSR's subject and key, is valid for ``validity_days``, and is
    a leaf (no CA) for TLS client authentication (ChargingStationCertificate) or TLS server
    authentication (V2GCertificate, the station towards the EV)."""

    def __init__(
        self,
        ca_certificate: x509.Certificate,
        ca_key: CaKey,
        *,
        validity_days: int = 365,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        if ca_certificate.public_key() != ca_key.public_key():
            raise ValueError("the CA key does not belong to the CA certificate")
        self.ca_certificate = ca_certificate
        self._key = ca_key
        self.validity = dt.timedelta(days=validity_days)
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    @classmethod
    def from_files(
        cls,
        certificate_file: str | Path,
        key_file: str | Path,
        *,
        validity_days: int = 365,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> LocalCaSigner:
        """Load the CA (PEM certificate, unencrypted PEM key); raises ValueError / OSError."""
        certificate = x509.load_pem_x509_certificate(Path(certificate_file).read_bytes())
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_file}: the CA key must be RSA or EC")
        return cls(certificate, key, validity_days=validity_days, clock=clock)

    async def sign(self, csr: str, station_id: str, certificate_type: str) -> str:
        return await asyncio.to_thread(self.sign_now, csr, certificate_type)

    def sign_now(self, csr: str, certificate_type: str) -> str:
        """:meth:`sign`, on the calling thread."""
        request = x509.load_pem_x509_csr(csr.encode())
        now = self._clock()
        usage = (
            ExtendedKeyUsageOID.SERVER_AUTH
            if certificate_type == V2G_CERTIFICATE
            else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        public_key = cast(rsa.RSAPublicKey | ec.EllipticCurvePublicKey, request.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(request.subject)
            .issuer_name(self.ca_certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + self.validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=isinstance(public_key, ec.EllipticCurvePublicKey),
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        ca = self.ca_certificate.public_bytes(serialization.Encoding.PEM)
        return (pem + ca).decode()


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What the CSMS records of a certificate it issued."""

    serial_number: str
    """Hex, lower case, no leading zeros (as OCPP's CertificateHashData writes it)."""
    not_after: dt.datetime
    fingerprint_sha256: str
    subject: str


def describe_chain(chain_pem: str) -> CertificateFacts:
    """The facts of the first certificate of a PEM chain; raises ValueError."""
    certificate = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    return CertificateFacts(
        serial_number=format(certificate.serial_number, "x"),
        not_after=certificate.not_valid_after_utc,
        fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
        subject=certificate.subject.rfc4514_string(),
    )


async def open_signer(settings: Settings) -> CertificateSigner | None:
    """The signer the settings configure: the ``certificate_signer`` plug-in, else a
    :class:`LocalCaSigner` when ``ca_certificate_file`` and ``ca_key_file`` are set, else
    None (SignCertificate is then answered Rejected)."""
    if settings.certificate_signer:
        return cast(
            CertificateSigner,
            await instantiate(settings.certificate_signer, CertificateSigner, settings),
        )
    if settings.ca_certificate_file and settings.ca_key_file:
        return LocalCaSigner.from_files(
            settings.ca_certificate_file,
            settings.ca_key_file,
            validity_days=settings.certificate_validity_days,
        )
    return None
