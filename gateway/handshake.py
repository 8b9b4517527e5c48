"""A station's WebSocket handshake: path, subprotocol, credentials, then one HTTP answer.

:class:`Handshake` is the gateway's websockets ``process_request`` hook. It runs, in order:

1. the per-address connection limit (:meth:`gateway.guard.Guard.admit`, HTTP 429);
2. the path: exactly one percent-encoded station id after the prefix
   (:func:`parse_station_path`, 404 / 400);
3. the subprotocol: the station must offer ``ocpp2.0.1`` or ``ocpp1.6`` (400);
4. authentication: the listener's security profiles, the station's registry record, its
   Basic credentials (scrypt, on :class:`~gateway.password_checks.PasswordChecks`) or its
   verified client certificate, decided by the pure :func:`~gateway.admission.admit`
   (401 / 403 / 404, 503 when the registry is down or too many password checks wait).

Every stage ends in an :class:`Admitted` (the upgrade goes on with the version admission
chose) or a :class:`Refusal`, and :func:`respond` is the one place a refusal becomes an HTTP
response: its status, the reason as a plain-text body, its headers (``WWW-Authenticate``,
``Retry-After``). Refusing here, before the upgrade, gives a client a status it can act on
instead of a socket that is opened and then closed, and a refused connection publishes
nothing to the bus.
"""

from __future__ import annotations

import dataclasses
import functools
import http
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from csms.envelope import ADMITTED_AS
from csms.versions import supported
from gateway.admission import (
    Admission,
    StationLookup,
    UnknownStations,
    admit,
    parse_basic_auth,
    select_version,
)
from gateway.limits import LOG_INTERVAL, LogThrottle, format_peer, peer_host
from gateway.listeners import StationListener
from gateway.password_checks import PasswordChecks, PasswordChecksBusy
from gateway.tls import peer_identity

if TYPE_CHECKING:
    from gateway.guard import Guard

__all__ = [
    "BUSY_RETRY_AFTER",
    "MAX_STATION_ID_LENGTH",
    "REGISTRY_RETRY_AFTER",
    "Admitted",
    "Handshake",
    "HandshakeRefused",
    "Refusal",
    "offered_subprotocols",
    "parse_station_path",
    "respond",
]

MAX_STATION_ID_LENGTH = 48
BUSY_RETRY_AFTER = 5
"""Seconds a station is asked to wait when password checks are saturated (HTTP 503)."""
REGISTRY_RETRY_AFTER = 10
"""Seconds a station is asked to wait when the station registry is unavailable (HTTP 503)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """An upgrade request turned down: the HTTP status, why, and extra response headers."""

    status: http.HTTPStatus
    reason: str
    """Plain text for the log and the response body; never contains a password."""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, admission: Admission) -> Refusal:
        """The refusal an :class:`~gateway.admission.Admission` that is not accepted says."""
        return cls(admission.http_status, admission.reason, admission.headers)


def respond(ws: ServerConnection, refusal: Refusal) -> Response:
    """The HTTP response for ``refusal``: its status, its reason as the body, its headers."""
    response = ws.respond(refusal.status, refusal.reason + "\n")
    for name, value in refusal.headers:
        response.headers[name] = value
    return response


class HandshakeRefused(Exception):
    """A WebSocket upgrade request the gateway turns down with an HTTP status."""

    def __init__(self, status: http.HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    @property
    def refusal(self) -> Refusal:
        return Refusal(self.status, self.reason)


def parse_station_path(path: str, prefix: str) -> str:
    """Station id from a request path ``{prefix}/{percent-encoded id}[?query]``.

    Exactly one path segment must follow the prefix, so one station id has exactly one URL
    (ids holding ``/`` percent-encode it). Raises :class:`HandshakeRefused`: 404 for paths
    outside the scheme, 400 for ids that are empty, too long, not UTF-8 or not printable.
    """
    path = path.partition("?")[0]
    head = prefix + "/"
    raw = path[len(head) :] if path.startswith(head) else ""
    if not raw or "/" in raw:
        raise HandshakeRefused(
            http.HTTPStatus.NOT_FOUND, f"stations connect to {head}{{stationId}}"
        )
    try:
        station = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise HandshakeRefused(
            http.HTTPStatus.BAD_REQUEST, "station id is not valid percent-encoded UTF-8"
        ) from None
    if not 1 <= len(station) <= MAX_STATION_ID_LENGTH:
        raise HandshakeRefused(
            http.HTTPStatus.BAD_REQUEST,
            f"station id must be 1 to {MAX_STATION_ID_LENGTH} characters long",
        )
    if not station.isprintable():
        raise HandshakeRefused(
            http.HTTPStatus.BAD_REQUEST, "station id must not contain control characters"
        )
    return station


def offered_subprotocols(request: Request) -> list[str]:
    """The subprotocols of every ``Sec-WebSocket-Protocol`` header, in the order offered."""
    offered: list[str] = []
    for value in request.headers.get_all("Sec-WebSocket-Protocol"):
        offered.extend(item.strip() for item in value.split(",") if item.strip())
    return offered


@dataclasses.dataclass(frozen=True, slots=True)
class Admitted:
    """What the handshake decided for a connection, handed to its handler."""

    version: str
    admission: Admission

    def meta(self) -> dict[str, str] | None:
        """Envelope metadata telling the manager how an unknown station was admitted."""
        if self.admission.known:
            return None
        registration = "Pending" if self.admission.pending else "Accepted"
        return {ADMITTED_AS: registration}


class Handshake:
    """The handshake rules of one gateway (see the module docstring).

    Plug :meth:`process_request` (bound to a listener) and :meth:`select_subprotocol` into
    websockets' ``serve``; the connection handler then takes the decision with :meth:`take`.
    """

    def __init__(
        self,
        *,
        path_prefix: str,
        unknown_stations: UnknownStations,
        registry: StationLookup,
        password_checks: PasswordChecks,
        guard: Guard,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._path_prefix = path_prefix
        self._unknown_stations: UnknownStations = unknown_stations
        self._registry = registry
        self._password_checks = password_checks
        self._guard = guard
        self._log = log
        self._admitted: weakref.WeakKeyDictionary[ServerConnection, Admitted] = (
            weakref.WeakKeyDictionary()
        )
        """Admission of each connection between its handshake and its handler."""
        self._refusal_log = LogThrottle(LOG_INTERVAL, max_keys=4096)

    async def process_request(
        self, ws: ServerConnection, request: Request, listener: StationListener
    ) -> Response | None:
        """websockets' ``process_request``: None to go on with the upgrade, else the refusal."""
        outcome = await self.decide(ws, request, listener)
        if isinstance(outcome, Refusal):
            return respond(ws, outcome)
        self._admitted[ws] = outcome
        return None

    def select_subprotocol(
        self, ws: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """The version admission chose (it honours the record's ``allowed_versions``)."""
        admitted = self._admitted.get(ws)
        if admitted is None or admitted.version not in offered:
            raise NegotiationError("no subprotocol was admitted")
        return Subprotocol(admitted.version)

    def take(self, ws: ServerConnection) -> Admitted | None:
        """The decision for ``ws``, once; its handler calls this when the socket is open."""
        return self._admitted.pop(ws, None)

    async def decide(
        self, ws: ServerConnection, request: Request, listener: StationListener
    ) -> Admitted | Refusal:
        """Every stage of the handshake, in order; the first refusal ends it."""
        forwarded_for = None
        if listener.offload is not None:
            peer = peer_host(ws.remote_address)
            forwarded_for = listener.offload.client_address(peer, request.headers)
        if (too_many := self._guard.admit(ws, request, address=forwarded_for)) is not None:
            return too_many  # per-address limit (429); counts are released on socket close
        try:
            station = parse_station_path(request.path, self._path_prefix)
        except HandshakeRefused as refused:
            self._log.info(
                "connection refused",
                path=request.path,
                status=int(refused.status),
                reason=refused.reason,
            )
            return refused.refusal
        offered = offered_subprotocols(request)
        if not any(version in offered for version in supported()):
            reason = (
                f"unsupported or missing subprotocol (offered: {', '.join(offered) or 'none'}); "
                f"this server speaks {', '.join(supported())}"
            )
            self._log.info("connection refused", station=station, status=400, reason=reason)
            return Refusal(http.HTTPStatus.BAD_REQUEST, reason)
        return await self.authenticate(ws, request, station, listener)

    async def authenticate(
        self,
        ws: ServerConnection,
        request: Request,
        station_id: str,
        listener: StationListener,
    ) -> Admitted | Refusal:
        """Security-profile admission (see :mod:`gateway.admission`).

        Called once path and subprotocol are valid. Reads the station's record, checks its
        Basic password off the event loop (scrypt) or its verified client certificate, and
        picks the subprotocol among the versions the record allows. Every refusal is logged
        with the station id and the reason, never the password.
        """
        remote = format_peer(ws.remote_address)
        fields: dict[str, Any] = {"station": station_id, "remote": remote}
        if listener.offload is not None:
            host = peer_host(ws.remote_address)
            forwarded = listener.offload.inspect(host, request.headers)
            if forwarded.ignored:
                self._log.warning(
                    "tls offload headers from an untrusted address ignored",
                    headers=list(forwarded.ignored),
                    **fields,
                )
            if forwarded.client:
                fields["forwarded_for"] = forwarded.client
            if forwarded.certificate_error:
                fields["certificate_error"] = forwarded.certificate_error
            tls, certificate = forwarded.tls, forwarded.certificate
        else:
            tls = listener.ssl_context is not None
            certificate = peer_identity(ws.transport.get_extra_info("ssl_object")) if tls else None
        fields["listener"] = listener.describe()
        policy = listener.policy(tls)
        if policy is None:
            reason = (
                "this listener serves security profiles 2 and 3 only: connect with TLS (wss://)"
                if not tls
                else "this listener serves plain ws:// (security profile 1) only"
            )
            return self._refused(ws, Refusal(http.HTTPStatus.FORBIDDEN, reason), fields)
        try:
            record = await self._registry.get(station_id)
        except Exception as exc:
            self._log.error("station registry unavailable", error=str(exc), **fields)
            unavailable = Refusal(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                "station registry unavailable",
                (("Retry-After", str(REGISTRY_RETRY_AFTER)),),
            )
            return self._refused(ws, unavailable, fields)
        offered = offered_subprotocols(request)
        ordered = [version for version in supported() if version in offered]
        version = select_version(ordered, supported(), record.allowed_versions if record else ())
        authorization = request.headers.get_all("Authorization")
        credentials = parse_basic_auth(authorization[0]) if len(authorization) == 1 else None
        decide = functools.partial(
            admit,
            station_id,
            version,
            policy,
            record,
            unknown=self._unknown_stations,
            credentials=credentials,
            certificate=certificate,
        )
        has_password = record is not None and (
            record.password_hash is not None
            or record.pending_password_hash is not None
            or bool(record.unsettled_password_hashes)
        )
        if credentials is not None and has_password:
            try:
                admission = await self._password_checks.run(decide)  # scrypt, off the loop
            except PasswordChecksBusy as busy:
                self._log.warning("login refused: password checks saturated", error=str(busy))
                saturated = Refusal(
                    http.HTTPStatus.SERVICE_UNAVAILABLE,
                    "too many logins at once",
                    (("Retry-After", str(BUSY_RETRY_AFTER)),),
                )
                return self._refused(ws, saturated, fields)
        else:
            admission = decide()
        fields["profile"] = admission.profile
        if not admission.accepted:
            return self._refused(ws, Refusal.of(admission), fields)
        if version is None:  # admit() refuses this; kept so no path accepts without one
            reason = "no OCPP version offered is allowed for this station"
            return self._refused(ws, Refusal(http.HTTPStatus.FORBIDDEN, reason), fields)
        self._log.info(
            "station admitted",
            reason=admission.reason,
            version=version,
            known=admission.known,
            **fields,
        )
        return Admitted(version, admission)

    def _refused(self, ws: ServerConnection, refusal: Refusal, fields: dict[str, Any]) -> Refusal:
        # One line per source, station, listener and reason every LOG_INTERVAL, with a count
        # of the repeats: a password-guessing flood must not flood the logs too.
        status, reason = int(refusal.status), refusal.reason
        host = peer_host(ws.remote_address)
        key = (host, fields.get("station"), fields.get("listener"), status, reason)
        repeated = self._refusal_log.allow(key, time.monotonic())
        if repeated is not None:
            extra = {"repeated": repeated} if repeated else {}
            self._log.warning("connection refused", status=status, reason=reason, **fields, **extra)
        return refusal
