"""TLS for the station listener (security profiles 2 and 3): context, hot reload, peer identity.

- :func:`server_ssl_context` builds the server context: TLS 1.2 minimum, AEAD cipher suites
  only, and client certificates requested as the served profiles need.
- :class:`CertificateReloader` loads a renewed certificate and key (and added CAs) into that
  **same** context object. New handshakes use them; established connections are untouched,
  so renewing the server certificate never disconnects a station.
- :func:`peer_identity` reads the station's certificate identity after the handshake, for
  :func:`gateway.admission.admit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.admission import CertificateIdentity

__all__ = [
    "OCPP_CIPHERS",
    "CertificatePair",
    "CertificateReloader",
    "certificate_identity",
    "peer_identity",
    "server_ssl_context",
]

log = structlog.get_logger("gateway.tls")

CertificatePair = tuple[str | os.PathLike[str], str | os.PathLike[str]]
"""A PEM certificate chain file and its private key file."""

OCPP_CIPHERS = ":".join(
    [
        # Required by OCPP 2.0.1 / the 1.6 Security Whitepaper (ECDSA server certificates).
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        # Same with RSA server certificates, and ChaCha20 for stations without AES hardware.
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        # TLS_RSA_WITH_AES_{128,256}_GCM: no forward secrecy, but the OCPP test tool expects a
        # CSMS to offer them for old stations. Listed last, so only chosen when nothing else is.
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
    ]
)
"""TLS 1.2 cipher suites (OpenSSL names). TLS 1.3 suites are OpenSSL's defaults (all AEAD)."""


def server_ssl_context(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    *,
    client_ca_files: Sequence[str | os.PathLike[str]] | None = None,
    require_client_cert: bool = False,
    ciphers: str = OCPP_CIPHERS,
    more_certificates: Sequence[CertificatePair] = (),
) -> ssl.SSLContext:
    """A server context for the station listener.

    ``more_certificates`` are further (certificate, key) pairs of other key types loaded into
    the same context: with an RSA and an ECDSA certificate side by side OpenSSL picks, per
    handshake, the one the client's offered cipher suites can use, so TLS_RSA / ECDHE_RSA
    and ECDHE_ECDSA suites all negotiate (OCPP 2.0.1 A00.FR.318). Pairs of the same key type
    replace each other (the last wins).

    With ``client_ca_files`` and ``require_client_cert=False`` client certificates are
    optional (``CERT_OPTIONAL``): for listeners serving profiles 2 and 3 together, where a
    profile-2 station sends none. A certificate that *is* sent must still verify against the
    CAs, or the handshake fails. ``require_client_cert=True`` (profile-3-only listeners)
    makes it mandatory (``CERT_REQUIRED``) and needs ``client_ca_files``. Without CAs no
    client certificate is requested (profile 2 only).
    """
    if require_client_cert and not client_ca_files:
        raise ValueError("requiring client certificates needs client_ca_files to verify them")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    for more_cert, more_key in more_certificates:
        context.load_cert_chain(os.fspath(more_cert), os.fspath(more_key))
    for ca_file in client_ca_files or ():
        context.load_verify_locations(cafile=os.fspath(ca_file))
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    elif client_ca_files:
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclasses.dataclass(frozen=True, slots=True)
class _Stamp:
    mtime_ns: int
    size: int
    inode: int


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)


class CertificateReloader:
    """Keeps the certificate of a live :class:`ssl.SSLContext` in step with its files.

    :meth:`reload` loads cert, key and CA files into the context given at construction (the
    one the server was started with; a server cannot be handed a new context). Files are read
    once and checked in a scratch context first, so a half-written or mismatched pair raises
    and leaves the live context as it was. :meth:`reload_if_changed` does that only when a
    file's mtime, size or inode changed (certbot-style symlink swaps included); :meth:`run`
    polls it.

    Limits of a live context: CA files can only *add* trust anchors (OpenSSL cannot remove
    one), and a certificate of another key type (RSA vs. EC) is loaded next to the old pair
    rather than over it. Dropping a CA or changing key type takes a restart.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        *,
        client_ca_files: Sequence[str | os.PathLike[str]] = (),
        more_certificates: Sequence[CertificatePair] = (),
    ) -> None:
        self.context = context
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.more_certificates = tuple((Path(c), Path(k)) for c, k in more_certificates)
        """Pairs of other key types served beside the main one (see server_ssl_context)."""
        self.client_ca_files = tuple(Path(path) for path in client_ca_files)
        self._stamps = self._current_stamps()

    def _paths(self) -> tuple[Path, ...]:
        pairs = [path for pair in self.more_certificates for path in pair]
        return (self.cert_file, self.key_file, *pairs, *self.client_ca_files)

    def _current_stamps(self) -> tuple[_Stamp | None, ...]:
        return tuple(_stamp(path) for path in self._paths())

    def changed(self) -> bool:
        """True when a file differs from what was last loaded (or last failed to load)."""
        return self._current_stamps() != self._stamps

    def reload(self) -> None:
        """Load the files into the live context now; raises (``OSError``, ``ssl.SSLError``)
        and keeps the previous certificate when they are unreadable or do not match."""
        stamps = self._current_stamps()
        with tempfile.TemporaryDirectory(prefix="csms-tls-") as scratch:
            # Snapshot the files: what is checked is exactly what is loaded, even if they
            # change again in between. mkstemp files are private (0600).
            snapshot = [self._copy(path, scratch) for path in self._paths()]
            pairs_end = 2 + 2 * len(self.more_certificates)
            pairs = list(zip(snapshot[:pairs_end:2], snapshot[1:pairs_end:2], strict=True))
            cas = snapshot[pairs_end:]
            probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            for cert, key in pairs:
                probe.load_cert_chain(cert, key)
            for ca in cas:
                probe.load_verify_locations(cafile=ca)
            for cert, key in pairs:
                self.context.load_cert_chain(cert, key)
            for ca in cas:
                self.context.load_verify_locations(cafile=ca)
        self._stamps = stamps
        log.info("tls certificate loaded", cert_file=str(self.cert_file))

    @staticmethod
    def _copy(path: Path, directory: str) -> str:
        data = path.read_bytes()
        fd, name = tempfile.mkstemp(dir=directory)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        return name

    def reload_if_changed(self) -> bool:
        """Reload when a file changed; True when a new certificate is in use. A failed reload
        is logged and not retried until the files change again."""
        if not self.changed():
            return False
        try:
            self.reload()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._stamps = self._current_stamps()
            log.error(
                "tls certificate reload failed; keeping the previous one",
                cert_file=str(self.cert_file),
                error=str(exc),
            )
            return False
        return True

    async def run(self, interval: float = 60.0) -> None:
        """Poll the files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()


def _common_names(name: x509.Name) -> list[str]:
    return [
        value
        for attribute in name.get_attributes_for_oid(NameOID.COMMON_NAME)
        if isinstance(value := attribute.value, str)
    ]


def _identity_from_der(der: bytes, *, verified: bool) -> CertificateIdentity | None:
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return certificate_identity(certificate, verified=verified)


def certificate_identity(certificate: x509.Certificate, *, verified: bool) -> CertificateIdentity:
    """The names a certificate binds (last subject CN, SAN dNSNames), for admission."""
    common_names = _common_names(certificate.subject)
    san_dns: list[str] = []
    with contextlib.suppress(x509.ExtensionNotFound, ValueError):
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        san_dns = extension.value.get_values_for_type(x509.DNSName)
    return CertificateIdentity(
        common_name=common_names[-1] if common_names else None,
        san_dns=tuple(san_dns),
        verified=verified,
    )


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> CertificateIdentity | None:
    """The client certificate's identity, or None when the station sent none.

    ``verified`` is True when the handshake verified the chain (the context requested client
    certificates with CAs loaded); a certificate obtained without verification is parsed but
    marked unverified. Pass ``transport.get_extra_info("ssl_object")``.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    verified = ssl_object.context.verify_mode != ssl.CERT_NONE and bool(ssl_object.getpeercert())
    return _identity_from_der(der, verified=verified)
