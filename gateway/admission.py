"""Who may open an OCPP WebSocket: the security-profile decision, pure (no I/O, no clock).

The gateway gathers the facts of one upgrade request (station id from the path, the OCPP
version it will speak, the ``Authorization`` header, the verified client certificate, the
registry's record) and :func:`admit` returns an :class:`Admission`: accept, or refuse with an
HTTP status and a log-friendly reason. Nothing here reads a socket, a file or the registry,
so every rule is tested by a table (``tests/unit/test_admission.py``).

Security profiles (OCPP 2.0.1 Part 2 "Security", OCPP 1.6 Security Whitepaper):

====  ==============================  ======================================================
 1    plain ``ws://`` + HTTP Basic    username = station id, password from the registry
 2    TLS + HTTP Basic                as 1, over a TLS connection (server certificate)
 3    TLS + client certificate        chain verified by TLS; subject CN (or a SAN dNSName)
                                      equals the station id
====  ==============================  ======================================================

What a station presents decides the profile it connects with: a verified client certificate
on a listener serving profile 3 is profile 3; otherwise Basic credentials are profile 2 on TLS
and 1 on plain ``ws``; nothing is profile 0. A station is refused when that profile is lower
than the one it is registered for (no downgrade). Higher is accepted: that is how a station
moves up (OCPP 2.0.1 A05, security profile upgrade) before the operator updates the registry.
When the station accepted such an upgrade (``StationRecord.pending_security_profile``), a
connection at that profile or higher says so (``reached_security_profile``): the registry then
raises the registered profile, and lower profiles are downgrades from then on.

A Basic password is checked against the registry's current hash, then against the pending
hash of a rotation in flight (``StationRecord.pending_password_hash``): a 1.6 station that
answers Accepted to a new AuthorizationKey reconnects with it at once, before a manager has
stored the answer. Then against the hashes of earlier rotations whose outcome was never
learned (``unsettled_password_hashes``): the station may have taken any of them. A login
with a pending or unsettled password proves what the station uses; the admission says so
(``proven_password_hash``) and the gateway passes it on, so the registry promotes it.

HTTP statuses:

- **401** + ``WWW-Authenticate: Basic`` when Basic credentials are missing or wrong (RFC 7235:
  the request lacks valid credentials; some HTTP clients only send credentials after this
  challenge). Never sent when answering with credentials would itself be a downgrade (a
  profile-2 station on plain ``ws``): a challenge there would invite the password in clear.
- **403** when credentials cannot help: downgrade, certificate not bound to the station,
  unverified certificate, Basic username naming another station, OCPP version not allowed.
- **404** for stations the registry does not know (policy ``"reject"``), as OCPP-J 1.6 §3.2
  says ("does not recognize the charge point identifier in the URL path"). This tells a
  caller that an id is not provisioned; station ids are printed on the stations and are not
  secrets, and an operator debugging a new station needs to tell "unknown" from "wrong
  password".

Refusal reasons never contain a password.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import http
from collections.abc import Callable, Collection, Sequence
from typing import Literal, Protocol

from csms.credentials import verify_password
from csms.versions import PasswordStyle, spec
from services.models import StationRecord

__all__ = [
    "Admission",
    "CertificateIdentity",
    "ListenerPolicy",
    "NoStations",
    "StationLookup",
    "UnknownStations",
    "admit",
    "parse_basic_auth",
    "select_version",
]

UnknownStations = Literal["reject", "pending", "accept"]
"""What to do with a station id the registry does not know: refuse it (404), admit it as
Pending (the manager answers its BootNotification Pending until an operator provisions it),
or admit it to be Accepted (labs only)."""

MAX_AUTHORIZATION_HEADER = 4096
"""Longer ``Authorization`` values are garbage, not credentials."""

_ALL_PROFILES = frozenset({1, 2, 3})


class StationLookup(Protocol):
    """What admission needs from the station registry: one station's record.

    The gateway asks for nothing else, so any store can serve it (the managers' Redis
    registry in a fleet, the shared in-memory one in ``csms run``).
    """

    async def get(self, station_id: str) -> StationRecord | None: ...


class NoStations:
    """A :class:`StationLookup` that knows no station (only ``unknown_stations`` or
    first-try mode let stations in)."""

    async def get(self, station_id: str) -> StationRecord | None:
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerPolicy:
    """What one listening socket serves.

    ``tls`` means the station's connection is encrypted up to this process (terminated here,
    or by a trusted proxy that forwards the verified client certificate). Profile 1 belongs to
    plain listeners, profiles 2 and 3 to TLS ones. ``first_try`` also admits stations that
    present no credentials, if they are unknown or registered with profile 0 (a station
    registered for a higher profile still has to prove it): the caller must allow it only on a
    loopback address, checked once at start-up.
    """

    profiles: frozenset[int]
    tls: bool
    first_try: bool = False
    realm: str = "OCPP"

    def __post_init__(self) -> None:
        profiles = frozenset(self.profiles)
        object.__setattr__(self, "profiles", profiles)
        if not profiles <= _ALL_PROFILES:
            raise ValueError(f"security profiles are 1, 2 and 3, not {sorted(profiles)}")
        if not profiles:
            raise ValueError("a listener serves at least one security profile")
        if self.tls and 1 in profiles:
            raise ValueError("profile 1 is Basic auth without TLS: serve it on a plain listener")
        if not self.tls and profiles - {1}:
            raise ValueError("profiles 2 and 3 need TLS")
        if '"' in self.realm or "\\" in self.realm:
            raise ValueError("realm must not contain quotes or backslashes")

    @property
    def basic_profile(self) -> int | None:
        """The profile Basic credentials mean here (1 plain, 2 TLS), None if not served."""
        profile = 2 if self.tls else 1
        return profile if profile in self.profiles else None


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateIdentity:
    """The identity in a client certificate, as the TLS layer reported it.

    ``verified`` is True only when the chain was verified against the configured CA(s) during
    the handshake; an unverified certificate proves nothing and is refused.
    """

    common_name: str | None
    san_dns: tuple[str, ...] = ()
    verified: bool = False

    def names(self, identity: str) -> bool:
        """True when the certificate is bound to ``identity``: the subject CN equals it, or a
        SAN dNSName equals it (compared case-insensitively, as DNS names are)."""
        if self.common_name == identity:
            return True
        folded = identity.casefold()
        return any(name.casefold() == folded for name in self.san_dns)


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """The decision for one upgrade request."""

    accepted: bool
    http_status: http.HTTPStatus
    """101 (Switching Protocols) when accepted, else the refusal status."""
    reason: str
    """Why, for logs and the plain-text body of a refusal; never contains a password."""
    profile: int
    """Security profile the station connected with (0 = none); on refusal, what it presented."""
    pending: bool = False
    """Admitted as an unknown station under the ``"pending"`` policy."""
    known: bool = True
    """False when the registry has no record of the station."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers (``WWW-Authenticate`` on 401)."""
    proven_password_hash: str | None = None
    """The pending or unsettled rotation hash the station's password matched: it uses that
    password now, so the registry should make it current."""
    reached_security_profile: int = 0
    """The station's pending security-profile upgrade when it authenticated at that profile
    or higher (0 = none): the registry should raise its registered profile to it."""


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """``(username, password)`` from an ``Authorization: Basic`` value (RFC 7617), or None.

    Tolerates any garbage (wrong scheme, bad base64, no colon) by returning None. The scheme
    is case-insensitive and missing base64 padding is accepted. The user-id ends at the first
    colon; the password is everything after it. Octets that are not UTF-8 are kept, decoded
    with ``surrogateescape``: an OCPP 1.6 station sends the raw octets of its hex
    AuthorizationKey, which need not be text (see :mod:`csms.credentials`).
    """
    if not header or len(header) > MAX_AUTHORIZATION_HEADER:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "basic" or not token or " " in token:
        return None
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = raw.partition(b":")
    if not colon:
        return None
    return (
        user.decode("utf-8", "surrogateescape"),
        password.decode("utf-8", "surrogateescape"),
    )


def select_version(
    offered: Sequence[str], supported: Collection[str], allowed: Collection[str] = ()
) -> str | None:
    """The subprotocol to negotiate: the first one the station offers that this server
    supports and the station's record allows (empty ``allowed`` = any); None if none is.

    Lets a station registered for 1.6 only that offers ``ocpp2.0.1, ocpp1.6`` get 1.6 instead
    of a refusal.
    """
    for version in offered:
        if version in supported and (not allowed or version in allowed):
            return version
    return None


def _refuse(
    status: http.HTTPStatus,
    reason: str,
    profile: int,
    *,
    known: bool = True,
    challenge: str | None = None,
) -> Admission:
    headers = (("WWW-Authenticate", f'Basic realm="{challenge}", charset="UTF-8"'),)
    return Admission(
        accepted=False,
        http_status=status,
        reason=reason,
        profile=profile,
        known=known,
        headers=headers if challenge is not None else (),
    )


def _accept(reason: str, profile: int, *, pending: bool = False, known: bool = True) -> Admission:
    return Admission(
        accepted=True,
        http_status=http.HTTPStatus.SWITCHING_PROTOCOLS,
        reason=reason,
        profile=profile,
        pending=pending,
        known=known,
    )


def _password_matches(
    password: str, encoded: str, version: str | None, verify: Callable[[str, str], bool]
) -> bool:
    if verify(password, encoded):
        return True
    # Some 1.6 stations send their AuthorizationKey as the hex text instead of the octets it
    # encodes. Knowing the hex is knowing the octets, so accepting it weakens nothing.
    sends_keys = version is None or spec(version).password is PasswordStyle.AUTHORIZATION_KEY
    if sends_keys and 32 <= len(password) <= 40:
        try:
            octets = bytes.fromhex(password)
        except ValueError:
            return False
        return verify(octets.decode("utf-8", "surrogateescape"), encoded)
    return False


def admit(
    station_id: str,
    version: str | None,
    listener: ListenerPolicy,
    record: StationRecord | None,
    *,
    unknown: UnknownStations = "reject",
    credentials: tuple[str, str] | None = None,
    certificate: CertificateIdentity | None = None,
    verify: Callable[[str, str], bool] = verify_password,
) -> Admission:
    """Decide whether ``station_id`` may connect; see the module docstring for the rules.

    ``version`` is the subprotocol that will be negotiated (see :func:`select_version`);
    ``credentials`` come from :func:`parse_basic_auth`; ``certificate`` from the TLS layer
    (ignored on a plain listener). ``verify`` checks a password against a stored hash (the
    default costs one scrypt, tens of milliseconds: call ``admit`` off the event loop, or
    pass a caching verifier).
    """
    # A record the fleet wrote for a station it admitted while unknown (connection events,
    # boot facts) does not make the station provisioned: only ``known`` records do.
    known = record is not None and record.known
    challenge = listener.realm

    # 1. Which profile does the station present?
    if certificate is not None and listener.tls and 3 in listener.profiles:
        if not certificate.verified:
            return _refuse(
                http.HTTPStatus.FORBIDDEN, "client certificate not verified", 3, known=known
            )
        presented = 3
    elif credentials is not None:
        presented = 2 if listener.tls else 1
    else:
        presented = 0

    # 2. Credentials that name another station are refused before anything else is looked at.
    if presented in (1, 2) and credentials is not None and credentials[0] != station_id:
        return _refuse(
            http.HTTPStatus.FORBIDDEN,
            "Basic auth username is not the station id",
            presented,
            known=known,
        )
    if presented in (1, 2) and listener.basic_profile is None:
        return _refuse(
            http.HTTPStatus.FORBIDDEN,
            "Basic auth is not served here: this listener requires a client certificate",
            presented,
            known=known,
        )

    # 3. Stations the registry does not know. No password can be checked for them, so the
    #    profile reported is 3 for a verified certificate bound to the id and 0 otherwise.
    if record is None or not record.known:
        if presented == 3 and certificate is not None and not certificate.names(station_id):
            return _refuse(
                http.HTTPStatus.FORBIDDEN,
                "client certificate is not issued to this station id",
                3,
                known=False,
            )
        proven = 3 if presented == 3 else 0
        # Pending first: an operator who asked for it gets it in first-try mode too.
        if unknown == "pending":
            return _accept("unknown station admitted as Pending", proven, pending=True, known=False)
        if listener.first_try:
            return _accept("unknown station admitted (first-try mode)", proven, known=False)
        if unknown == "accept":
            return _accept(
                "unknown station admitted (unknown_stations = accept)", proven, known=False
            )
        return _refuse(http.HTTPStatus.NOT_FOUND, "unknown station id", presented, known=False)

    required = record.security_profile

    # 4. Nothing presented: first-try admits stations registered without credentials;
    #    otherwise challenge for Basic when that is what the station needs here.
    if presented == 0:
        if required == 0 and listener.first_try:
            reason = "station admitted without credentials (first-try mode)"
            return _version_check(record, version, _accept(reason, 0))
        basic = listener.basic_profile
        if basic is not None and required <= basic:
            return _refuse(
                http.HTTPStatus.UNAUTHORIZED, "no Basic auth credentials", 0, challenge=challenge
            )
        if required == 3 or 3 in listener.profiles:
            return _refuse(http.HTTPStatus.FORBIDDEN, "client certificate required", 0)
        return _refuse(
            http.HTTPStatus.FORBIDDEN,
            f"station requires security profile {required}, this listener serves "
            f"{_profiles_text(listener)}",
            0,
        )

    # 5. No downgrade.
    if presented < required:
        return _refuse(
            http.HTTPStatus.FORBIDDEN,
            f"downgrade refused: station is registered for security profile {required}, "
            f"presented profile {presented}",
            presented,
        )

    # 6. Verify what was presented.
    if presented == 3:
        assert certificate is not None
        expected = record.certificate_identity or station_id
        if not certificate.names(expected):
            return _refuse(
                http.HTTPStatus.FORBIDDEN,
                "client certificate is not issued to this station",
                3,
            )
        admission = _accept("client certificate verified", 3)
    else:
        assert credentials is not None
        current, pending = record.password_hash, record.pending_password_hash
        rotated = [h for h in (pending, *reversed(record.unsettled_password_hashes)) if h]
        if current is None and not rotated:
            return _refuse(
                http.HTTPStatus.UNAUTHORIZED,
                "no password provisioned for this station",
                presented,
                challenge=challenge,
            )
        if current is not None and _password_matches(credentials[1], current, version, verify):
            admission = _accept("Basic auth password verified", presented)
        else:
            # A station may reconnect with a rotated password before its Accepted is stored,
            # or after the answer was lost altogether.
            matched = next(
                (h for h in rotated if _password_matches(credentials[1], h, version, verify)),
                None,
            )
            if matched is None:
                return _refuse(
                    http.HTTPStatus.UNAUTHORIZED, "wrong password", presented, challenge=challenge
                )
            reason = (
                "password verified (rotation pending)"
                if matched == pending
                else "password verified (earlier rotation whose answer was lost)"
            )
            admission = dataclasses.replace(
                _accept(reason, presented), proven_password_hash=matched
            )

    # 7. A security-profile upgrade the station accepted is done once it authenticates at
    #    that profile: the registry raises the profile (later connections below it refused).
    upgrade = record.pending_security_profile
    if upgrade is not None and admission.profile >= upgrade > required:
        admission = dataclasses.replace(admission, reached_security_profile=upgrade)

    # 8. OCPP versions the operator allows for this station (checked once authenticated, so
    #    an anonymous client learns nothing about the record).
    return _version_check(record, version, admission)


def _version_check(record: StationRecord, version: str | None, admission: Admission) -> Admission:
    allowed = record.allowed_versions
    if allowed and version not in allowed:
        return _refuse(
            http.HTTPStatus.FORBIDDEN,
            f"OCPP version {version or 'none'} not allowed for this station "
            f"(allowed: {', '.join(allowed)})",
            admission.profile,
        )
    return admission


def _profiles_text(listener: ListenerPolicy) -> str:
    return ", ".join(str(p) for p in sorted(listener.profiles)) or "none (first-try only)"
