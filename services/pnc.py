"""ISO 15118 Plug & Charge: is an EV's contract certificate good, and what does its OCSP
responder say?

:class:`ContractVerifier` is the interface the Authorize and GetCertificateStatus handlers
use; operators with a PKI service of their own plug one in (setting ``pnc_verifier``,
``module:factory``). :class:`LocalContractVerifier` is the built-in one:

- a PEM chain (leaf first, up to but excluding the root, as OCPP sends it) must chain by
  signature to one of the configured V2G / mobility-operator roots
  (``v2g_root_certificates``) and every certificate must be within its validity dates;
- each certificate is checked with OCSP (the responder URL of the OCSP request data the
  station sent, else the certificate's Authority Information Access); the response must be
  signed by a responder that chains to a trusted root, name the certificate asked about and
  be current;
- responses are cached until their ``nextUpdate``, at most ``ocsp_cache_seconds``, so a
  busy site costs one OCSP round trip per contract and day, not per session.

The outcome is one of OCPP 2.0.1's ``AuthorizeCertificateStatusEnumType`` values.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import itertools
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx
import msgspec
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from csms.config import Settings
from ocpp_schemas import Direction, SchemaViolation, validate
from services.contract_certificates import (
    ContractCertificateProvider,
    HttpContractCertificateProvider,
    parse_credentials,
)
from services.loader import instantiate

__all__ = [
    "CSMS_MESSAGES",
    "PNC_VENDOR_ID",
    "STATION_MESSAGES",
    "WRAPPED_TRIGGERS",
    "WRAPPED_VERSION",
    "CertificateStatus",
    "ContractVerifier",
    "LocalContractVerifier",
    "OcspAnswer",
    "OcspCache",
    "OcspRequestData",
    "PlugAndCharge",
    "der_base64",
    "load_roots",
    "open_pnc",
    "request_data",
    "unwrap_request",
    "unwrap_response",
    "wrap",
]

_log = structlog.get_logger("services.pnc")

OCSP_CONTENT_TYPE = "application/ocsp-request"
MAX_CHAIN = 5
"""Certificates a contract chain may hold (leaf and sub-CAs): ISO 15118 allows two sub-CAs."""
MAX_CACHED = 10_000
NO_IDLE_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)
"""OCSP and provider requests are rare (answers are cached): no pooled sockets to close."""


class CertificateStatus(enum.StrEnum):
    """OCPP 2.0.1 ``AuthorizeCertificateStatusEnumType``."""

    ACCEPTED = "Accepted"
    SIGNATURE_ERROR = "SignatureError"
    CERTIFICATE_EXPIRED = "CertificateExpired"
    CERTIFICATE_REVOKED = "CertificateRevoked"
    NO_CERTIFICATE_AVAILABLE = "NoCertificateAvailable"
    CERT_CHAIN_ERROR = "CertChainError"
    CONTRACT_CANCELLED = "ContractCancelled"


class OcspRequestData(msgspec.Struct, frozen=True, kw_only=True):
    """OCPP 2.0.1 ``OCSPRequestDataType``: which certificate, and whom to ask."""

    hash_algorithm: str
    issuer_name_hash: str
    issuer_key_hash: str
    serial_number: str
    responder_url: str

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> OcspRequestData:
        return cls(
            hash_algorithm=data["hashAlgorithm"],
            issuer_name_hash=data["issuerNameHash"],
            issuer_key_hash=data["issuerKeyHash"],
            serial_number=data["serialNumber"],
            responder_url=data["responderURL"],
        )

    @property
    def key(self) -> tuple[str, str, str, int]:
        """Cache key: the certificate's identity, whatever the responder URL."""
        return (
            self.hash_algorithm,
            self.issuer_name_hash.lower(),
            self.issuer_key_hash.lower(),
            int(self.serial_number, 16),
        )


_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384,
    "SHA512": hashes.SHA512,
}


class OcspAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What a responder said about one certificate: the DER response and its verdict."""

    der: bytes
    status: ocsp.OCSPCertStatus | None
    """None when the responder answered but not with a usable, verified status."""


@runtime_checkable
class ContractVerifier(Protocol):
    """Checks contract certificates; the built-in one or an operator's PKI service."""

    async def verify_contract(
        self, certificate: str | None, hash_data: Sequence[OcspRequestData]
    ) -> CertificateStatus:
        """The status of the contract presented in an Authorize: its PEM chain (may be
        None) and/or the OCSP request data of its certificates."""
        ...

    async def certificate_status(self, request: OcspRequestData) -> bytes | None:
        """The responder's DER OCSP response for one certificate (GetCertificateStatus),
        None when it could not be had."""
        ...


@dataclass(slots=True)
class _Entry:
    answer: OcspAnswer
    expires_at: float


class OcspCache:
    """OCSP answers by certificate identity until their nextUpdate, at most ``max_age``
    seconds, at most :data:`MAX_CACHED` entries (the oldest go first). ``clock`` is Unix
    seconds, so tests can move time."""

    def __init__(self, max_age: float, clock: Callable[[], float] = time.time) -> None:
        self.max_age = max_age
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str, str, int], _Entry] = OrderedDict()

    def get(self, key: tuple[str, str, str, int]) -> OcspAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() >= entry.expires_at:
            del self._entries[key]
            return None
        return entry.answer

    def put(
        self, key: tuple[str, str, str, int], answer: OcspAnswer, next_update: dt.datetime | None
    ) -> None:
        """Keep ``answer`` until ``next_update`` (capped); one without it is not kept: the
        responder says newer information is always available."""
        if next_update is None or self.max_age <= 0:
            return
        expires = min(next_update.timestamp(), self.clock() + self.max_age)
        if expires <= self.clock():
            return
        self._entries[key] = _Entry(answer, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_CACHED:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def load_roots(paths: Sequence[str]) -> list[x509.Certificate]:
    """Every certificate in the PEM files ``paths``; raises ValueError naming a bad file."""
    roots: list[x509.Certificate] = []
    for path in paths:
        try:
            roots.extend(x509.load_pem_x509_certificates(Path(path).read_bytes()))
        except (OSError, ValueError) as exc:
            raise ValueError(f"v2g_root_certificates: cannot read {path}: {exc}") from exc
    return roots


def _parse_chain(pem: str) -> list[x509.Certificate] | None:
    try:
        chain = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        return None
    return chain if 0 < len(chain) <= MAX_CHAIN else None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool | None:
    """True when ``issuer`` signed ``cert``; False when the names match but the signature
    does not; None when ``issuer`` is not even named as the issuer."""
    if cert.issuer != issuer.subject:
        return None
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return False
    except (ValueError, TypeError):
        return None
    return True


def _ocsp_url(cert: x509.Certificate) -> str | None:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for description in aia:
        if description.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            description.access_location, x509.UniformResourceIdentifier
        ):
            return description.access_location.value
    return None


def request_data(cert: x509.Certificate, issuer: x509.Certificate, url: str) -> OcspRequestData:
    """The OCSP request data (SHA-256) of ``cert`` issued by ``issuer``, as a station sends it."""
    built = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256()).build()
    return OcspRequestData(
        hash_algorithm="SHA256",
        issuer_name_hash=built.issuer_name_hash.hex(),
        issuer_key_hash=built.issuer_key_hash.hex(),
        serial_number=format(cert.serial_number, "x"),
        responder_url=url,
    )


class LocalContractVerifier:
    """The built-in :class:`ContractVerifier`: trusted roots from files, OCSP over httpx.

    ``client`` is the HTTP client for OCSP (one is made, and closed by :meth:`aclose`, when
    none is given); ``clock`` is Unix seconds (validity dates and the cache).
    """

    def __init__(
        self,
        roots: Sequence[x509.Certificate],
        *,
        timeout: float = 5.0,
        cache_seconds: float = 3600.0,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.roots = list(roots)
        self.timeout = timeout
        self.clock = clock
        self.cache = OcspCache(cache_seconds, clock)
        self._own_client = client is None
        self._client = client
        self.lookups = 0
        """OCSP requests sent so far (for tests and logs)."""

    async def aclose(self) -> None:
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        """The OCSP client, made on first use (most CSMSs never ask a responder). It keeps no
        idle connections, so a process that never calls :meth:`aclose` leaks no socket."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=False, limits=NO_IDLE_CONNECTIONS
            )
        return self._client

    # -- the interface ----------------------------------------------------------------------

    async def verify_contract(
        self, certificate: str | None, hash_data: Sequence[OcspRequestData]
    ) -> CertificateStatus:
        if certificate:
            return await self._verify_chain(certificate, hash_data)
        if not hash_data:
            return CertificateStatus.NO_CERTIFICATE_AVAILABLE
        worst = CertificateStatus.ACCEPTED
        for data in hash_data:
            answer = await self._lookup(data)
            verdict = self._verdict(answer)
            if verdict is CertificateStatus.CERTIFICATE_REVOKED:
                return verdict
            if verdict is not CertificateStatus.ACCEPTED:
                worst = verdict
        return worst

    async def certificate_status(self, request: OcspRequestData) -> bytes | None:
        answer = await self._lookup(request, verify=False)
        return answer.der if answer is not None else None

    # -- chain ------------------------------------------------------------------------------

    async def _verify_chain(
        self, pem: str, hash_data: Sequence[OcspRequestData]
    ) -> CertificateStatus:
        chain = _parse_chain(pem)
        if chain is None:
            return CertificateStatus.CERT_CHAIN_ERROR
        for cert, issuer in itertools.pairwise(chain):
            linked = _issued_by(cert, issuer)
            if linked is None:
                return CertificateStatus.CERT_CHAIN_ERROR
            if not linked:
                return CertificateStatus.SIGNATURE_ERROR
        root = None
        for candidate in self.roots:
            linked = _issued_by(chain[-1], candidate)
            if linked is False:
                return CertificateStatus.SIGNATURE_ERROR
            if linked:
                root = candidate
                break
        if root is None:
            return CertificateStatus.CERT_CHAIN_ERROR
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        for cert in [*chain, root]:
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                return CertificateStatus.CERTIFICATE_EXPIRED
        urls = {data.key: data.responder_url for data in hash_data if _usable(data)}
        issuers = [*chain[1:], root]
        for cert, issuer in zip(chain, issuers, strict=True):
            data = request_data(cert, issuer, "")
            url = urls.get(data.key) or _ocsp_url(cert)
            if url is None:
                _log.info(
                    "no OCSP responder for a contract chain certificate",
                    serial=hex(cert.serial_number),
                )
                continue
            verdict = self._verdict(
                await self._lookup(msgspec.structs.replace(data, responder_url=url))
            )
            if verdict is not CertificateStatus.ACCEPTED:
                return verdict
        return CertificateStatus.ACCEPTED

    # -- OCSP -------------------------------------------------------------------------------

    @staticmethod
    def _verdict(answer: OcspAnswer | None) -> CertificateStatus:
        """Revoked is only what a verified responder says. No answer (responder down or
        timing out, a bad or unverifiable response, a certificate it does not know) leaves
        the chain's validity unestablished: CertChainError (OCPP 2.0.1 C07.FR.17; C07.FR.05
        asks for real-time or cached OCSP data, and the cache has none). NoCertificateAvailable
        is for a request that carried no certificate at all."""
        if answer is None or answer.status is None:
            return CertificateStatus.CERT_CHAIN_ERROR
        if answer.status is ocsp.OCSPCertStatus.REVOKED:
            return CertificateStatus.CERTIFICATE_REVOKED
        if answer.status is ocsp.OCSPCertStatus.GOOD:
            return CertificateStatus.ACCEPTED
        return CertificateStatus.CERT_CHAIN_ERROR

    async def _lookup(self, data: OcspRequestData, *, verify: bool = True) -> OcspAnswer | None:
        if not _usable(data):  # a serial number that is not hex: no certificate to ask about
            _log.info("OCSP request data unusable", serial=data.serial_number[:40])
            return None
        cached = self.cache.get(data.key)
        if cached is not None:
            return cached if not verify or cached.status is not None else None
        request = _build_request(data)
        if request is None:
            return None
        self.lookups += 1
        try:
            response = await self._http().post(
                data.responder_url,
                content=request.public_bytes(serialization.Encoding.DER),
                headers={"Content-Type": OCSP_CONTENT_TYPE},
                timeout=self.timeout,
            )
        except (httpx.HTTPError, ValueError) as exc:
            _log.warning("OCSP responder unreachable", url=data.responder_url, error=str(exc))
            return None
        if response.status_code != 200:
            _log.warning(
                "OCSP responder refused", url=data.responder_url, status=response.status_code
            )
            return None
        try:
            parsed = ocsp.load_der_ocsp_response(response.content)
        except ValueError:
            _log.warning("OCSP responder answered garbage", url=data.responder_url)
            return None
        if parsed.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            _log.warning(
                "OCSP responder answered unsuccessfully",
                url=data.responder_url,
                status=parsed.response_status.name,
            )
            return None
        status = self._checked_status(parsed, request)
        answer = OcspAnswer(der=response.content, status=status)
        if status is not None:
            self.cache.put(data.key, answer, parsed.next_update_utc)
        return answer if not verify or status is not None else None

    def _checked_status(
        self, response: ocsp.OCSPResponse, request: ocsp.OCSPRequest
    ) -> ocsp.OCSPCertStatus | None:
        """The response's status for the certificate asked about, None unless it is signed
        by a responder that chains to a trusted root, names that certificate and is current."""
        if (
            response.serial_number != request.serial_number
            or response.issuer_key_hash != request.issuer_key_hash
            or response.issuer_name_hash != request.issuer_name_hash
        ):
            _log.warning("OCSP response names another certificate")
            return None
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        if response.this_update_utc > now + dt.timedelta(minutes=5) or (
            response.next_update_utc is not None and response.next_update_utc < now
        ):
            _log.warning("OCSP response is not current")
            return None
        signer = self._trusted_signer(response)
        if signer is None:
            _log.warning("OCSP response not signed by a trusted responder")
            return None
        try:
            public_key: Any = signer.public_key()
            algorithm = response.signature_hash_algorithm
            if algorithm is None:
                return None
            if isinstance(public_key, ec.EllipticCurvePublicKey):
                public_key.verify(
                    response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm)
                )
            elif isinstance(public_key, rsa.RSAPublicKey):
                public_key.verify(
                    response.signature,
                    response.tbs_response_bytes,
                    padding.PKCS1v15(),
                    algorithm,
                )
            else:
                return None
        except InvalidSignature:
            _log.warning("OCSP response signature does not verify")
            return None
        return response.certificate_status

    def _trusted_signer(self, response: ocsp.OCSPResponse) -> x509.Certificate | None:
        """The certificate that signed ``response`` if it is a trusted root or chains to one
        (through the certificates the response carries)."""
        candidates = [*response.certificates, *self.roots]
        signer = None
        for cert in candidates:
            if response.responder_name is not None and cert.subject == response.responder_name:
                signer = cert
                break
            if response.responder_key_hash is not None:
                digest = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
                if digest == response.responder_key_hash:
                    signer = cert
                    break
        if signer is None:
            return None
        current, depth = signer, 0
        while depth <= MAX_CHAIN:
            if any(current == root for root in self.roots):
                return signer
            parent = next((c for c in candidates if c != current and _issued_by(current, c)), None)
            if parent is None:
                return None
            current, depth = parent, depth + 1
        return None


def _usable(data: OcspRequestData) -> bool:
    """Whether the request data names a certificate (its serial number is hex)."""
    try:
        data.key  # noqa: B018 (the check is whether it can be computed)
    except ValueError:
        return False
    return True


def _build_request(data: OcspRequestData) -> ocsp.OCSPRequest | None:
    algorithm = _HASHES.get(data.hash_algorithm)
    if algorithm is None:
        return None
    try:
        return (
            ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(
                binascii.unhexlify(data.issuer_name_hash),
                binascii.unhexlify(data.issuer_key_hash),
                int(data.serial_number, 16),
                algorithm(),
            )
            .build()
        )
    except (ValueError, binascii.Error):
        return None


def der_base64(der: bytes) -> str:
    """An OCSP response as GetCertificateStatus carries it."""
    return base64.b64encode(der).decode()


@dataclass(slots=True)
class PlugAndCharge:
    """What the ISO 15118 handlers use: the contract verifier and, when one is configured,
    the contract-certificate provider (None: Get15118EVCertificate answers Failed)."""

    verifier: ContractVerifier = field(default_factory=lambda: LocalContractVerifier([]))
    provider: ContractCertificateProvider | None = None

    async def aclose(self) -> None:
        """Close what the built-in implementations opened (plug-ins may have aclose too)."""
        for part in (self.verifier, self.provider):
            close = getattr(part, "aclose", None)
            if close is not None:
                await close()


async def open_pnc(settings: Settings) -> PlugAndCharge:
    """The verifier and provider ``settings`` ask for: plug-ins (``pnc_verifier``,
    ``contract_certificate_provider``) or the built-in ones. Raises ValueError for unreadable
    roots or credentials, and the loader's errors for a broken plug-in."""
    verifier: ContractVerifier
    if settings.pnc_verifier:
        verifier = await instantiate(settings.pnc_verifier, ContractVerifier, settings)
    else:
        verifier = LocalContractVerifier(
            load_roots(settings.v2g_root_certificates),
            timeout=settings.ocsp_timeout,
            cache_seconds=settings.ocsp_cache_seconds,
        )
    provider: ContractCertificateProvider | None = None
    if settings.contract_certificate_provider:
        provider = await instantiate(
            settings.contract_certificate_provider, ContractCertificateProvider, settings
        )
    elif settings.contract_certificate_provider_url:
        provider = HttpContractCertificateProvider(
            settings.contract_certificate_provider_url,
            timeout=settings.contract_certificate_provider_timeout,
            credentials=parse_credentials(settings.contract_certificate_provider_oauth2),
        )
    return PlugAndCharge(verifier=verifier, provider=provider)


# -- the 1.6 wrapping -----------------------------------------------------------------------
# OCA application note "Using ISO 15118 Plug & Charge with OCPP 1.6": the 2.0.1 messages of
# ISO 15118 certificate management and Plug & Charge travel in a 1.6 DataTransfer of this
# vendorId, messageId = the 2.0.1 action, data = the JSON text of the 2.0.1 payload, and
# "must be used only for the use cases described in this application note".

PNC_VENDOR_ID = "org.openchargealliance.iso15118pnc"
WRAPPED_VERSION = "ocpp2.0.1"
"""The schemas the wrapped payloads follow."""
STATION_MESSAGES = frozenset(
    {"Authorize", "Get15118EVCertificate", "GetCertificateStatus", "SignCertificate"}
)
"""Wrapped messages a 1.6 charge point sends."""
CSMS_MESSAGES = frozenset(
    {
        "CertificateSigned",
        "DeleteCertificate",
        "GetInstalledCertificateIds",
        "InstallCertificate",
        "TriggerMessage",
    }
)
"""Wrapped messages the CSMS sends to a 1.6 charge point."""
WRAPPED_TRIGGERS = frozenset({"SignV2GCertificate"})
"""What a wrapped TriggerMessage may ask for: the V2G certificate's CSR (a wrapped
SignCertificate); anything else has its own 1.6 message."""


def _json(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def wrap(message_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The 1.6 DataTransfer request carrying the 2.0.1 ``message_id`` request ``payload``.

    Raises ``KeyError`` for a message the note does not let the CSMS send, and
    :class:`~ocpp_schemas.SchemaViolation` for a payload the 2.0.1 schema refuses (or a
    TriggerMessage for anything but :data:`WRAPPED_TRIGGERS`)."""
    if message_id not in CSMS_MESSAGES:
        raise KeyError(message_id)
    validate(WRAPPED_VERSION, message_id, Direction.REQUEST, payload)
    if message_id == "TriggerMessage" and payload["requestedMessage"] not in WRAPPED_TRIGGERS:
        raise SchemaViolation(
            "requestedMessage",
            "enum",
            "a wrapped TriggerMessage can only ask for " + ", ".join(sorted(WRAPPED_TRIGGERS)),
        )
    return {"vendorId": PNC_VENDOR_ID, "messageId": message_id, "data": _json(payload)}


def unwrap_request(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The 2.0.1 action and request a CSMS-sent DataTransfer request carries, or None when
    it is not a wrapped message of :data:`CSMS_MESSAGES` (or its data does not parse)."""
    message_id = payload.get("messageId")
    if payload.get("vendorId") != PNC_VENDOR_ID or message_id not in CSMS_MESSAGES:
        return None
    try:
        request = json.loads(payload.get("data") or "")
    except ValueError:
        return None
    return (message_id, request) if isinstance(request, dict) else None


def unwrap_response(message_id: str, data: Any) -> dict[str, Any]:
    """The 2.0.1 response a station's Accepted DataTransfer answer carries in ``data``.
    Raises :class:`~ocpp_schemas.SchemaViolation` when it is not JSON text of a valid
    2.0.1 ``message_id`` response."""
    try:
        response = json.loads(data) if isinstance(data, str) else None
    except ValueError as exc:
        raise SchemaViolation("data", "json", f"data is not JSON: {exc}") from None
    if not isinstance(response, dict):
        raise SchemaViolation("data", "type", "data must be the JSON text of an object")
    validate(WRAPPED_VERSION, message_id, Direction.RESPONSE, response)
    return response
