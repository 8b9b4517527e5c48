"""Station listeners: the sockets a gateway opens and the security facts of each connection.

One :class:`StationListener` per configured listener (``listeners`` in the settings; by
default one plain listener on ``listen_host:listen_port``). It knows:

- its TLS context and :class:`~gateway.tls.CertificateReloader` (``wss://`` listeners), so a
  renewed certificate is picked up without closing connected stations;
- its TLS-offload rules (:class:`TlsOffload`), for a listener behind a proxy that terminates
  TLS: only connections from the trusted proxy addresses may say "the station used TLS" and
  hand over the station's client certificate, in headers;
- the :class:`~gateway.admission.ListenerPolicy` that :func:`~gateway.admission.admit`
  applies to a connection, for plain and for TLS connections.

First-try mode (:func:`decide_first_try`) admits stations without credentials. It is only
ever on when every listener is bound to a loopback address: nobody but this machine can
then reach the gateway.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import ipaddress
import re
import ssl
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from websockets.asyncio.server import Server
from websockets.datastructures import Headers

from csms.config import ListenerSettings, Settings, TlsOffloadSettings
from gateway.admission import CertificateIdentity, ListenerPolicy
from gateway.tls import (
    CertificatePair,
    CertificateReloader,
    certificate_identity,
    server_ssl_context,
)

__all__ = [
    "FirstTry",
    "Forwarded",
    "StationListener",
    "TlsOffload",
    "decide_first_try",
    "is_loopback",
    "parse_forwarded_certificate",
    "station_listeners",
]

MAX_CERTIFICATE_HEADER = 16_384
"""Longer client-certificate header values are refused unparsed (a station certificate chain
in PEM is a few KiB)."""

_XFCC_CERT = re.compile(r'(?:^|[;,])\s*Cert="?([^";,]*)"?', re.IGNORECASE)
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address (or ``localhost``); an empty host or a
    wildcard (``0.0.0.0``, ``::``) listens on every interface and is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def station_listeners(settings: Settings) -> list[ListenerSettings]:
    """The configured listeners; without any, one plain profile-1 listener on
    ``listen_host:listen_port`` (what ``--host`` / ``--port`` set)."""
    if settings.listeners:
        return list(settings.listeners)
    return [ListenerSettings(host=settings.listen_host, port=settings.listen_port, profiles=[1])]


@dataclasses.dataclass(frozen=True, slots=True)
class FirstTry:
    """Whether first-try mode is on, and a sentence saying why, for the start-up log."""

    enabled: bool
    reason: str


def decide_first_try(settings: Settings, *, embedded: bool) -> FirstTry:
    """First-try mode for this process.

    ``first_try`` unset means on for the embedded ``csms run`` (``embedded=True``) and off
    for ``csms gateway``. Asked for or not, it stays off unless every listener is on a
    loopback address.
    """
    requested = settings.first_try if settings.first_try is not None else embedded
    if not requested:
        return FirstTry(False, "first-try mode is off: stations must be registered")
    public = [
        f"{item.host or '*'}:{item.port}"
        for item in station_listeners(settings)
        if not is_loopback(item.host)
    ]
    if public:
        return FirstTry(
            False,
            f"first-try mode is off: listening on {', '.join(public)}, not on loopback only; "
            "stations must be registered",
        )
    unknown = "Pending" if settings.unknown_stations == "pending" else "Accepted"
    return FirstTry(
        True,
        "first-try mode: any station may connect without credentials (unknown stations are "
        f"{unknown}); listening on loopback only. Not for production.",
    )


# -- TLS offload ------------------------------------------------------------------------------


def parse_forwarded_certificate(value: str) -> x509.Certificate:
    """The station certificate a TLS-terminating proxy forwarded in a header.

    Accepts URL-encoded PEM (nginx ``$ssl_client_escaped_cert``, AWS ALB), PEM with its line
    breaks folded into spaces, an Envoy ``X-Forwarded-Client-Cert`` element (its ``Cert=``
    field) and base64 DER (HAProxy ``ssl_c_der,base64``). The first certificate is the
    station's; any chain after it is ignored. Raises ``ValueError``.
    """
    text = value.strip()
    if not text or len(text) > MAX_CERTIFICATE_HEADER:
        raise ValueError("empty or oversized client certificate header")
    xfcc = _XFCC_CERT.search(text)
    if xfcc is not None:
        text = xfcc.group(1)
    text = unquote(text)
    if _PEM_BEGIN in text:
        text = text.split(_PEM_BEGIN, 1)[1].split(_PEM_END, 1)[0]
    try:
        der = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("client certificate header is neither PEM nor base64 DER") from None
    return x509.load_der_x509_certificate(der)


def _issuer_error(
    certificate: x509.Certificate, authorities: Sequence[x509.Certificate], now: dt.datetime
) -> str | None:
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        return "client certificate expired or not yet valid"
    if not authorities:
        return None
    for authority in authorities:
        if authority.subject != certificate.issuer:
            continue
        if not authority.not_valid_before_utc <= now <= authority.not_valid_after_utc:
            continue
        try:
            certificate.verify_directly_issued_by(authority)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return None
    return "client certificate not issued by a trusted CA"


def _load_authorities(files: Sequence[str]) -> list[x509.Certificate]:
    authorities: list[x509.Certificate] = []
    for name in files:
        authorities.extend(x509.load_pem_x509_certificates(Path(name).read_bytes()))
    return authorities


@dataclasses.dataclass(frozen=True, slots=True)
class Forwarded:
    """What a connection on an offload listener may be believed about the station's side."""

    trusted: bool
    """The connection comes from a trusted proxy address."""
    tls: bool
    """The station reached the proxy over TLS (said by a trusted proxy)."""
    certificate: CertificateIdentity | None = None
    certificate_error: str | None = None
    """Why a forwarded certificate was not accepted (then ``certificate`` is unverified)."""
    ignored: tuple[str, ...] = ()
    """Offload headers present on a connection from an untrusted address, ignored."""
    client: str | None = None
    """The station's address per ``X-Forwarded-For`` (trusted proxies only), for logs."""


def _single(headers: Headers, name: str) -> str | None:
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else None


class TlsOffload:
    """Trusted-proxy rules of one offload listener (see :class:`TlsOffloadSettings`)."""

    def __init__(self, settings: TlsOffloadSettings) -> None:
        self.settings = settings
        self.networks = tuple(
            ipaddress.ip_network(item, strict=False) for item in settings.trusted_proxies
        )
        self.authorities = _load_authorities(settings.client_ca_files)

    def trusts(self, host: str | None) -> bool:
        """True when ``host`` (the TCP peer) is one of the trusted proxies."""
        if not host:
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def client_address(self, host: str | None, headers: Headers) -> str | None:
        """The station's IP address as the trusted proxy saw it, None when unknown.

        That is the LAST ``X-Forwarded-For`` entry: the proxy appends the address it accepted
        the connection from, while any entry before it came from the client and can be made
        up. Only an IP address is returned, and only when ``host`` is a trusted proxy.
        """
        if not self.trusts(host):
            return None
        entries = ",".join(headers.get_all("X-Forwarded-For")).split(",")
        last = entries[-1].strip()
        try:
            return str(ipaddress.ip_address(last.strip("[]")))
        except ValueError:
            return None

    def inspect(
        self, host: str | None, headers: Headers, *, now: dt.datetime | None = None
    ) -> Forwarded:
        """The facts of one upgrade request from TCP peer ``host``."""
        settings = self.settings
        names = (settings.tls_header, settings.client_cert_header)
        if not self.trusts(host):
            return Forwarded(
                trusted=False, tls=False, ignored=tuple(name for name in names if name in headers)
            )
        scheme = _single(headers, settings.tls_header) or ""
        tls = scheme.split(",", 1)[0].strip().lower() == settings.tls_header_value.lower()
        client = self.client_address(host, headers)
        values = headers.get_all(settings.client_cert_header)
        if not tls or not any(value.strip() for value in values):
            # No certificate (proxies send an empty header when the station presented none).
            return Forwarded(trusted=True, tls=tls, client=client)
        value = values[0] if len(values) == 1 else None
        try:
            if value is None:
                raise ValueError("several client certificate headers")
            certificate = parse_forwarded_certificate(value)
        except ValueError as exc:
            unverified = CertificateIdentity(common_name=None, verified=False)
            return Forwarded(
                trusted=True, tls=True, certificate=unverified, certificate_error=str(exc)
            )
        error = _issuer_error(certificate, self.authorities, now or dt.datetime.now(dt.UTC))
        return Forwarded(
            trusted=True,
            tls=True,
            certificate=certificate_identity(certificate, verified=error is None),
            certificate_error=error,
            client=client,
        )


# -- listeners --------------------------------------------------------------------------------


class StationListener:
    """One listening socket for stations: TLS context, offload rules, admission policies."""

    def __init__(self, index: int, settings: ListenerSettings, *, first_try: bool) -> None:
        self.index = index
        self.settings = settings
        profiles = frozenset(settings.profiles or ())
        self.ssl_context: ssl.SSLContext | None = None
        self.reloader: CertificateReloader | None = None
        self.offload = TlsOffload(settings.offload) if settings.offload is not None else None
        if settings.tls is not None:
            tls = settings.tls
            client_cas = tls.client_ca_files if 3 in profiles else []
            more: list[CertificatePair] = []
            if tls.ecdsa_cert_file and tls.ecdsa_key_file:
                more.append((tls.ecdsa_cert_file, tls.ecdsa_key_file))
            self.ssl_context = server_ssl_context(
                tls.cert_file,
                tls.key_file,
                client_ca_files=client_cas,
                require_client_cert=profiles == {3},
                more_certificates=more,
            )
            self.reloader = CertificateReloader(
                self.ssl_context,
                tls.cert_file,
                tls.key_file,
                client_ca_files=client_cas,
                more_certificates=more,
            )
        secure = profiles & {2, 3}
        self._tls_policy = (
            ListenerPolicy(secure, tls=True, first_try=first_try)
            if secure and (settings.tls is not None or settings.offload is not None)
            else None
        )
        self._plain_policy = (
            ListenerPolicy(frozenset({1}), tls=False, first_try=first_try)
            if 1 in profiles and settings.tls is None
            else None
        )
        self.server: Server | None = None

    @property
    def profiles(self) -> tuple[int, ...]:
        return tuple(self.settings.profiles or ())

    @property
    def scheme(self) -> str:
        """``wss`` when this process terminates TLS, else ``ws`` (offload: as seen by the
        proxy, which stations reach at its own ``wss://`` address)."""
        return "wss" if self.ssl_context is not None else "ws"

    def policy(self, tls: bool) -> ListenerPolicy | None:
        """The policy for a connection that is (``tls``) or is not encrypted up to here or
        to a trusted proxy; None when this listener serves no profile for it."""
        return self._tls_policy if tls else self._plain_policy

    @property
    def port(self) -> int:
        """The bound TCP port (differs from the configured one when that is 0)."""
        if self.server is None:
            raise RuntimeError("listener is not started")
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def url_for(self, station_id: str, path_prefix: str) -> str:
        """The URL a station with ``station_id`` connects to on this listener."""
        host = self.settings.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}{path_prefix}/{quote(station_id, safe='')}"

    def describe(self) -> str:
        """For logs: ``wss://0.0.0.0:9443 profiles 2,3``."""
        kind = "offload " if self.offload is not None else ""
        profiles = ",".join(str(p) for p in self.profiles)
        port = self.port if self.server is not None else self.settings.port
        return f"{kind}{self.scheme}://{self.settings.host}:{port} profiles {profiles}"
