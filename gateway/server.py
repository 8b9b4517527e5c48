"""The gateway: WebSocket server for stations, bridged to the bus.

:class:`Gateway` accepts station sockets (``ws://host:port{path_prefix}/{stationId}``,
subprotocol ``ocpp2.0.1`` or ``ocpp1.6``), gives each a :class:`~gateway.pipe.Pipe` inside a
:class:`~gateway.connection.Connection`, and runs one consumer task that routes what the bus
delivers: CSMS traffic on ``{prefix}/out/{version}/{station}`` to the connection holding the
station, takeover notices on ``{prefix}/ctl/{station}`` to the duplicate-connection rule.

Choices worth knowing:

- **Refuse before accepting.** Path, station id, subprotocol and the station's credentials
  (security profiles, see :meth:`Gateway.authenticate` and :mod:`gateway.admission`) are
  checked in ``process_request``, so a refused client gets an HTTP status (400/401/403/404)
  with a plain-text reason instead of a socket that is opened and then closed. A refused
  connection publishes nothing to the bus.
- **Several listeners.** One server per configured listener (:mod:`gateway.listeners`), e.g.
  ``ws://`` for profile 1 and ``wss://`` for profiles 2 and 3, all feeding the same stations
  table and bus; TLS certificates are reloaded in place, so connected stations stay.
- **Oversized frames.** websockets is given a hard limit of ``4 * max_frame_bytes``; frames
  above ``max_frame_bytes`` but under the hard limit reach the pipe, which answers a Call with
  a FormatViolation (1.6: FormationViolation) CallError and keeps the socket. Frames above the
  hard limit close the socket with 1009 (message too big): reading them would cost memory a
  misbehaving station should not be able to claim.
- **Control filter ``{prefix}/ctl/+``.** One subscription made at start-up instead of one more
  subscribe / unsubscribe round trip per station connection. Every gateway then sees every
  takeover notice, but notices are only published when a station connects, which is rare next
  to the station traffic itself.
- **Newest wins.** A connection is older than another when its ``(connected_at, connection
  id)`` is smaller. Every gateway applies the same total order, so exactly one socket keeps a
  station even when two gateways accept it at nearly the same time (with clock skew between
  gateways the survivor may be the slightly older one; never both, never neither).
- **The gateway consumes ``bus.messages()``.** It needs a bus connection of its own (the
  interface allows one consumer per bus); the caller opens and closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import http
import os
import socket
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, Self
from urllib.parse import unquote

import msgspec
import structlog
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from csms.bus import Bus, BusUnavailable, Message
from csms.config import Settings
from csms.envelope import (
    ADMITTED_AS,
    ConnectionEvent,
    ConnectionEventKind,
    GatewayPresence,
    GatewayState,
    decode_envelope,
    decode_event,
    encode,
)
from csms.topics import Topics
from csms.versions import supported
from gateway.admission import (
    Admission,
    NoStations,
    StationLookup,
    admit,
    parse_basic_auth,
    select_version,
)
from gateway.connection import Connection
from gateway.guard import LOG_INTERVAL, Guard
from gateway.limits import LogThrottle, format_peer, peer_host
from gateway.listeners import StationListener, is_loopback, station_listeners
from gateway.password_checks import PasswordChecks, PasswordChecksBusy
from gateway.pipe import STATION_DISCONNECTED, Limits, Pipe
from gateway.tls import peer_identity

__all__ = ["Gateway", "HandshakeRefused", "parse_station_path"]

log = structlog.get_logger("gateway")

MAX_STATION_ID_LENGTH = 48
HARD_LIMIT_FACTOR = 4
"""websockets closes the socket (1009) above ``HARD_LIMIT_FACTOR * max_frame_bytes``."""
BUSY_RETRY_AFTER = 5
"""Seconds a station is asked to wait when password checks are saturated (HTTP 503)."""
BUS_WATCH_INTERVAL = 1.0
"""Seconds between two retries of connection events the bus did not take."""
MAX_LOST_EVENTS = 50_000
"""Disconnect events kept for a retry during a broker outage; the oldest go first."""
RECEIVE_QUEUE = 4
"""Frames websockets buffers per connection ahead of the reader (its default is 16). The
reader is throttled by the connection's lanes, so a flooding station waits in its TCP window
instead of in this process: at most ``4 * HARD_LIMIT_FACTOR * max_frame_bytes`` per socket."""
CLOSE_TIMEOUT = 5.0
"""Seconds a closing handshake may take before the TCP connection is dropped."""
REPLACED = "replaced by a newer connection"


class HandshakeRefused(Exception):
    """A WebSocket upgrade request the gateway turns down with an HTTP status."""

    def __init__(self, status: http.HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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
            http.HTTPStatus.NOT_FOUND, f"stations connect to {head}{{stationId}}\n"
        )
    try:
        station = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise HandshakeRefused(
            http.HTTPStatus.BAD_REQUEST, "station id is not valid percent-encoded UTF-8\n"
        ) from None
    if not 1 <= len(station) <= MAX_STATION_ID_LENGTH:
        raise HandshakeRefused(
            http.HTTPStatus.BAD_REQUEST,
            f"station id must be 1 to {MAX_STATION_ID_LENGTH} characters long\n",
        )
    if not station.isprintable():
        raise HandshakeRefused(
            http.HTTPStatus.BAD_REQUEST, "station id must not contain control characters\n"
        )
    return station


def _offered_subprotocols(request: Request) -> list[str]:
    offered: list[str] = []
    for value in request.headers.get_all("Sec-WebSocket-Protocol"):
        offered.extend(item.strip() for item in value.split(",") if item.strip())
    return offered


def default_gateway_id() -> str:
    """``host-pid``: the gateway id unless ``gateway_id`` is set."""
    return f"{socket.gethostname()}-{os.getpid()}"


LEASE_FACTOR = 3
"""A gateway's presence lease lasts this many heartbeat intervals."""


def presence_will(topics: Topics, gateway_id: str) -> Callable[[str], tuple[str, bytes]]:
    """The MQTT last will of a gateway's bus connection: "gone", naming the bus session, so
    the managers take its stations offline when the broker loses the gateway."""

    def will(session: str) -> tuple[str, bytes]:
        presence = GatewayPresence(state=GatewayState.GONE, gateway=gateway_id, session=session)
        return topics.gateway_presence(gateway_id), encode(presence)

    return will


class Gateway:
    """WebSocket server for charging stations, bridged to the bus.

    An async context manager: ``async with Gateway(settings, bus) as gateway:`` listens and
    consumes the bus; leaving the block closes every socket (1001) after publishing each
    connection's outcomes. ``bus`` must already be open and be used by nobody else for
    receiving.

    ``registry`` is where admission looks stations up, a
    :class:`~gateway.admission.StationLookup` (default: none is known, so only
    ``unknown_stations`` or first-try mode let stations in). ``first_try`` admits
    stations without credentials; it is ignored unless every listener is on loopback.
    """

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        *,
        gateway_id: str | None = None,
        registry: StationLookup | None = None,
        first_try: bool = False,
    ) -> None:
        self._settings = settings
        self._bus = bus
        self._id = gateway_id or settings.gateway_id or default_gateway_id()
        self._topics = Topics(prefix=settings.topic_prefix, group=settings.shared_group)
        self._limits = Limits.from_settings(settings)
        self._control_head = f"{settings.topic_prefix}/ctl/"
        self._control_filter = self._control_head + "+"
        self._stations: dict[str, Connection] = {}
        self._consumer: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None
        self._unannounced: dict[str, Connection] = {}
        """Connections whose connected notice the bus did not take, by connection id."""
        self._proven_passwords: dict[str, str] = {}
        """Connection id → rotated password hash its station logged in with, until announced."""
        self._presence: asyncio.Task[None] | None = None
        self._lost_events: dict[str, tuple[Connection, ConnectionEvent]] = {}
        """Disconnect events the bus did not take, by connection id, oldest first."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = log.bind(gateway=self._id)
        self._registry: StationLookup = registry if registry is not None else NoStations()
        configured = station_listeners(settings)
        if first_try and not all(is_loopback(item.host) for item in configured):
            self._log.warning("first-try mode refused: a listener is not on a loopback address")
            first_try = False
        self._first_try = first_try
        self._listeners = [
            StationListener(index, item, first_try=first_try)
            for index, item in enumerate(configured)
        ]
        self._admitted: weakref.WeakKeyDictionary[ServerConnection, _Admitted] = (
            weakref.WeakKeyDictionary()
        )
        """Admission of each connection between its handshake and its handler."""
        self._reloaders: list[asyncio.Task[None]] = []
        self._password_checks = PasswordChecks(
            settings.password_check_threads, settings.max_waiting_password_checks
        )
        self._refusal_log = LogThrottle(LOG_INTERVAL, max_keys=4096)
        self._guard = Guard(settings, self._log)
        """Connection limits (gateway/guard.py); its counts are released on socket close."""

    # -- public surface ------------------------------------------------------------------

    @property
    def id(self) -> str:
        """This gateway instance's id (in envelopes and connection events)."""
        return self._id

    @property
    def port(self) -> int:
        """The TCP port of the first listener (useful with ``listen_port = 0``)."""
        return self._listeners[0].port

    def url_for(self, station_id: str, listener: int = 0) -> str:
        """The URL a station with ``station_id`` connects to (on listener number
        ``listener``, in the order configured)."""
        return self._listeners[listener].url_for(station_id, self._settings.path_prefix)

    @property
    def listeners(self) -> Sequence[StationListener]:
        """The listeners in the order configured (``.port``, ``.url_for``, ``.reloader``)."""
        return tuple(self._listeners)

    @property
    def first_try(self) -> bool:
        """True when stations without credentials are admitted (loopback listeners only)."""
        return self._first_try

    @property
    def registry(self) -> StationLookup:
        """The station registry admission reads."""
        return self._registry

    @property
    def password_checks(self) -> PasswordChecks:
        """The pool that verifies Basic-auth passwords, and its occupancy."""
        return self._password_checks

    @property
    def guard(self) -> Guard:
        """Open-socket and per-address counts and the limits on them."""
        return self._guard

    @property
    def connections(self) -> Mapping[str, Connection]:
        """Station id → the connection holding it here (read-only view)."""
        return MappingProxyType(self._stations)

    async def authenticate(
        self,
        ws: ServerConnection,
        request: Request,
        station_id: str,
        listener: StationListener | None = None,
    ) -> Response | None:
        """Security-profile admission (see :mod:`gateway.admission`): None to accept, else
        the refusal response.

        Called during the handshake once path and subprotocol are valid. Reads the station's
        record, checks its Basic password off the event loop (scrypt) or its verified client
        certificate, and picks the subprotocol among the versions the record allows. Every
        refusal is logged with the station id and the reason, never the password.
        """
        listener = listener or self._listeners[0]
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
            return self._refuse(ws, http.HTTPStatus.FORBIDDEN, reason, fields)
        try:
            record = await self._registry.get(station_id)
        except Exception as exc:
            self._log.error("station registry unavailable", error=str(exc), **fields)
            response = self._refuse(
                ws, http.HTTPStatus.SERVICE_UNAVAILABLE, "station registry unavailable", fields
            )
            response.headers["Retry-After"] = "10"
            return response
        offered = _offered_subprotocols(request)
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
            unknown=self._settings.unknown_stations,
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
                response = self._refuse(
                    ws, http.HTTPStatus.SERVICE_UNAVAILABLE, "too many logins at once", fields
                )
                response.headers["Retry-After"] = str(BUSY_RETRY_AFTER)
                return response
        else:
            admission = decide()
        fields["profile"] = admission.profile
        if not admission.accepted:
            response = self._refuse(ws, admission.http_status, admission.reason, fields)
            for name, value in admission.headers:
                response.headers[name] = value
            return response
        if version is None:  # admit() refuses this; kept so no path accepts without one
            reason = "no OCPP version offered is allowed for this station"
            return self._refuse(ws, http.HTTPStatus.FORBIDDEN, reason, fields)
        self._admitted[ws] = _Admitted(version, admission)
        self._log.info(
            "station admitted",
            reason=admission.reason,
            version=version,
            known=admission.known,
            **fields,
        )
        return None

    def _refuse(
        self,
        ws: ServerConnection,
        status: http.HTTPStatus,
        reason: str,
        fields: dict[str, Any],
    ) -> Response:
        # One line per source, station, listener and reason every LOG_INTERVAL, with a count
        # of the repeats: a password-guessing flood must not flood the logs too.
        host = peer_host(ws.remote_address)
        key = (host, fields.get("station"), fields.get("listener"), int(status), reason)
        repeated = self._refusal_log.allow(key, time.monotonic())
        if repeated is not None:
            extra = {"repeated": repeated} if repeated else {}
            self._log.warning(
                "connection refused", status=int(status), reason=reason, **fields, **extra
            )
        return ws.respond(status, reason + "\n")

    def _select_subprotocol(
        self, ws: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """The version admission chose (it honours the record's ``allowed_versions``)."""
        admitted = self._admitted.get(ws)
        if admitted is None or admitted.version not in offered:
            raise NegotiationError("no subprotocol was admitted")
        return Subprotocol(admitted.version)

    def reload_certificates(self) -> None:
        """Load renewed TLS certificate files now (also polled every
        ``tls_reload_interval``); connected stations keep their sessions."""
        for listener in self._listeners:
            if listener.reloader is not None:
                listener.reloader.reload_if_changed()

    async def __aenter__(self) -> Self:
        await self._bus.subscribe(self._control_filter)
        self._consumer = asyncio.create_task(self._consume(), name=f"gateway:{self._id}:bus")
        self._announcer = asyncio.create_task(
            self._announce_after_outages(), name=f"gateway:{self._id}:announce"
        )
        self._presence = asyncio.create_task(
            self._keep_presence(), name=f"gateway:{self._id}:presence"
        )
        try:
            for listener in self._listeners:
                await self._listen(listener)
        except BaseException:
            await self._close_listeners()
            await self._stop_consumer()
            raise
        return self

    async def _listen(self, listener: StationListener) -> None:
        settings = self._settings
        # One server per listener, all with the same handler, limits and stations table.
        listener.server = await serve(
            self._handle,
            listener.settings.host,
            listener.settings.port,
            ssl=listener.ssl_context,
            subprotocols=[Subprotocol(version) for version in supported()],
            select_subprotocol=self._select_subprotocol,
            compression=None,
            process_request=functools.partial(self._process_request, listener=listener),
            max_size=settings.max_frame_bytes * HARD_LIMIT_FACTOR,
            max_queue=RECEIVE_QUEUE,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            close_timeout=CLOSE_TIMEOUT,
            open_timeout=settings.handshake_timeout,
            create_connection=self._guard.connection_class,
        )
        if listener.reloader is not None:
            task = asyncio.create_task(
                listener.reloader.run(settings.tls_reload_interval),
                name=f"gateway:{self._id}:tls-reload:{listener.index}",
            )
            self._reloaders.append(task)
        self._log.info(
            "gateway listening",
            host=listener.settings.host,
            port=listener.port,
            path=settings.path_prefix,
            tls=listener.ssl_context is not None,
            offload=listener.offload is not None,
            profiles=list(listener.profiles),
            first_try=self._first_try,
        )

    async def _close_listeners(self) -> None:
        for task in self._reloaders:
            task.cancel()
        for task in self._reloaders:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._reloaders.clear()
        servers = [item.server for item in self._listeners if item.server is not None]
        # Closes every socket with 1001; handlers publish their outcomes and events.
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
        for item in self._listeners:
            item.server = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close_listeners()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT)
        await self._stop_consumer()
        await self._say_gone()
        self._password_checks.close()
        self._log.info("gateway stopped")

    async def serve_forever(self) -> None:
        """Wait until the gateway is closed; cancel it to stop (then leave the ``async with``)."""
        servers = [item.server for item in self._listeners if item.server is not None]
        if not servers:
            raise RuntimeError("gateway is not started")
        await asyncio.gather(*(server.wait_closed() for server in servers))

    # -- handshake -----------------------------------------------------------------------

    async def _process_request(
        self, ws: ServerConnection, request: Request, listener: StationListener | None = None
    ) -> Response | None:
        forwarded_for = None
        if listener is not None and listener.offload is not None:
            peer = peer_host(ws.remote_address)
            forwarded_for = listener.offload.client_address(peer, request.headers)
        if (too_many := self._guard.admit(ws, request, address=forwarded_for)) is not None:
            return too_many  # per-address limit (429); counts are released on socket close
        try:
            station = parse_station_path(request.path, self._settings.path_prefix)
        except HandshakeRefused as refused:
            self._log.info(
                "connection refused",
                path=request.path,
                status=int(refused.status),
                reason=refused.reason.strip(),
            )
            return ws.respond(refused.status, refused.reason)
        offered = _offered_subprotocols(request)
        if not any(version in offered for version in supported()):
            reason = (
                f"unsupported or missing subprotocol (offered: {', '.join(offered) or 'none'}); "
                f"this server speaks {', '.join(supported())}\n"
            )
            self._log.info("connection refused", station=station, status=400, reason=reason.strip())
            return ws.respond(http.HTTPStatus.BAD_REQUEST, reason)
        return await self.authenticate(ws, request, station, listener)

    # -- connection lifetime -------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None and ws.subprotocol is not None
        station = parse_station_path(ws.request.path, self._settings.path_prefix)
        version = str(ws.subprotocol)
        connection_id = uuid.uuid4().hex[:16]
        admitted = self._admitted.pop(ws, None)
        profile = admitted.admission.profile if admitted is not None else None
        if admitted is not None and admitted.admission.proven_password_hash is not None:
            self._proven_passwords[connection_id] = admitted.admission.proven_password_hash
        conn_log = self._log.bind(
            station=station, version=version, connection=connection_id, profile=profile
        )
        pipe = Pipe(
            station,
            version,
            connection=connection_id,
            gateway=self._id,
            limits=self._limits,
            meta=admitted.meta() if admitted is not None else None,
        )
        conn = Connection(
            ws,
            pipe,
            bus=self._bus,
            topics=self._topics,
            publish_timeout=self._settings.publish_timeout,
            log=conn_log,
        )
        remote = format_peer(ws.remote_address)
        try:
            await self._attach(conn, remote)
            async for data in ws:
                try:
                    conn.feed_frame(data)
                except Exception:
                    conn.log_exception("frame handling failed")
                await conn.throttle()
        except ConnectionClosed:
            pass
        except Exception:
            conn.log.exception("connection failed")
        finally:
            await self._detach(conn, remote)

    async def _attach(self, conn: Connection, remote: str | None) -> None:
        station = conn.station
        older = self._stations.get(station)
        self._stations[station] = conn
        conn.log.info("station connected", remote=remote)
        if older is not None:
            older.retire(REPLACED)
        await self._subscribe(station)
        await self._announce(conn)

    async def _announce(self, conn: Connection) -> None:
        """Tell other gateways (takeover) and the managers (registry) that ``conn`` holds its
        station. Safe to repeat: receivers order notices by connection time. A notice the bus
        would not take is retried once the bus is back (:meth:`_announce_after_outages`)."""
        notice = ConnectionEvent(
            kind=ConnectionEventKind.CONNECTED,
            station=conn.station,
            version=conn.version,
            gateway=self._id,
            connection=conn.id,
            remote=conn.remote,
            session=self._bus.session_id,
            lease=self._settings.gateway_heartbeat_interval * LEASE_FACTOR,
            at=conn.connected_at,
        )
        sent = await self._publish_quietly(conn, self._topics.control(conn.station), notice)
        if sent:
            proven = self._proven_passwords.get(conn.id)
            if proven is not None:
                notice = msgspec.structs.replace(notice, password_hash=proven)
            sent = await self._publish_quietly(
                conn, self._topics.event(conn.version, conn.station), notice
            )
        if sent:
            self._unannounced.pop(conn.id, None)
            self._proven_passwords.pop(conn.id, None)
        else:
            self._unannounced[conn.id] = conn

    async def _announce_after_outages(self) -> None:
        """Publish again the connection events lost while the bus was down.

        Without this, a station that connected here during a broker outage would stay held by
        its stale socket on another gateway, and the registry would not know it is online (or,
        for a lost disconnect event, that it has gone).
        """
        while True:
            await asyncio.sleep(BUS_WATCH_INTERVAL)
            if not (self._unannounced or self._lost_events) or not self._bus.connected:
                continue
            lost = list(self._lost_events.values())
            self._lost_events.clear()
            for conn, event in lost:
                topic = self._topics.event(event.version, event.station)
                if not await self._publish_quietly(conn, topic, event):
                    self._lost_events[conn.id] = (conn, event)
            pending = list(self._unannounced.values())
            self._unannounced.clear()
            held = [c for c in pending if self._stations.get(c.station) is c and not c.retired]
            if held:
                self._log.info("bus back: announcing stations", stations=len(held))
            for conn in held:
                await self._announce(conn)

    async def _keep_presence(self) -> None:
        """Renew this gateway's lease on its stations every ``gateway_heartbeat_interval``.

        Every held station is announced again (by the path that retries notices lost in a
        broker outage) when the managers may have taken them offline: the bus session
        changed (the broker lost this gateway and published its last will), or the lease
        ran out before it could be renewed (this process was frozen, or the broker
        unreachable without noticing).
        """
        interval = self._settings.gateway_heartbeat_interval
        lease = interval * LEASE_FACTOR
        topic = self._topics.gateway_presence(self._id)
        session = self._bus.session_id
        renewed = time.monotonic()  # nothing announced yet can have lapsed
        while True:
            if self._bus.connected:
                lapsed = time.monotonic() - renewed > lease
                if self._bus.session_id != session or lapsed:
                    session = self._bus.session_id
                    self._announce_all_again()
                presence = GatewayPresence(
                    state=GatewayState.ALIVE,
                    gateway=self._id,
                    lease=lease,
                    stations=len(self._stations),
                    session=session,
                )
                try:
                    async with asyncio.timeout(self._settings.publish_timeout):
                        await self._bus.publish(topic, encode(presence))
                    renewed = time.monotonic()
                except BusUnavailable as exc:
                    # NoSubscribers: no manager yet; the lease is renewed next time.
                    self._log.debug("presence not published", error=str(exc))
                except TimeoutError:
                    self._log.debug("presence not published", error="timeout")
            await asyncio.sleep(interval)

    def _announce_all_again(self) -> None:
        held = [conn for conn in self._stations.values() if not conn.retired]
        for conn in held:
            self._unannounced[conn.id] = conn
        if held:
            self._log.info("announcing stations again after losing the lease", stations=len(held))

    async def _say_gone(self) -> None:
        """A clean stop: the stations' disconnect events are out; release the lease."""
        presence = GatewayPresence(
            state=GatewayState.GONE, gateway=self._id, session=self._bus.session_id
        )
        try:
            async with asyncio.timeout(self._settings.publish_timeout):
                await self._bus.publish(self._topics.gateway_presence(self._id), encode(presence))
        except (BusUnavailable, TimeoutError) as exc:
            self._log.debug("gone notice not published", error=str(exc) or "timeout")

    async def _detach(self, conn: Connection, remote: str | None) -> None:
        station = conn.station
        owner = self._stations.get(station) is conn
        if owner:
            del self._stations[station]
        code, why = conn.ws.close_code, conn.ws.close_reason
        reason = conn.retired or (
            f"{STATION_DISCONNECTED} (close code {code}{': ' + why if why else ''})"
            if code
            else STATION_DISCONNECTED
        )
        try:
            await conn.finish(conn.retired or STATION_DISCONNECTED)
            if owner:
                await self._unsubscribe(station)
        except Exception:
            conn.log.exception("connection cleanup failed")
        conn.log.info("station disconnected", code=code, reason=why or conn.retired)
        event = ConnectionEvent(
            kind=ConnectionEventKind.DISCONNECTED,
            station=station,
            version=conn.version,
            gateway=self._id,
            connection=conn.id,
            remote=remote,
            reason=reason,
            session=self._bus.session_id,
        )
        self._proven_passwords.pop(conn.id, None)
        if self._unannounced.pop(conn.id, None) is not None:
            return  # nobody learned it was connected: nothing to take back
        topic = self._topics.event(conn.version, station)
        if not await self._publish_quietly(conn, topic, event):
            self._lost_events[conn.id] = (conn, event)
            while len(self._lost_events) > MAX_LOST_EVENTS:
                dropped = next(iter(self._lost_events))
                del self._lost_events[dropped]
                self._log.warning("disconnect event dropped: too many waiting", connection=dropped)

    async def _subscribe(self, station: str) -> None:
        topic_filter = self._topics.outbound_any_version(station)
        try:
            await self._bus.subscribe(topic_filter)
        except Exception as exc:
            self._log.warning("subscribe failed", station=station, error=str(exc))

    async def _unsubscribe(self, station: str) -> None:
        """Unsubscribe from a station's out topic unless a connection holds it again."""
        topic_filter = self._topics.outbound_any_version(station)
        try:
            await self._bus.unsubscribe(topic_filter)
            if station in self._stations:
                # A new connection subscribed while the unsubscribe was under way.
                await self._bus.subscribe(topic_filter)
        except Exception as exc:
            self._log.warning("unsubscribe failed", station=station, error=str(exc))

    async def _publish_quietly(self, conn: Connection, topic: str, event: ConnectionEvent) -> bool:
        try:
            async with asyncio.timeout(self._settings.publish_timeout):
                await self._bus.publish(
                    topic,
                    encode(event),
                    properties={"station": event.station, "event": str(event.kind)},
                )
            return True
        except (BusUnavailable, TimeoutError) as exc:
            conn.log.warning(
                "connection event not published",
                event_kind=str(event.kind),
                error=str(exc) or "timeout",
            )
            return False
        except Exception:
            conn.log.exception("connection event not published", event_kind=str(event.kind))
            return False

    # -- bus -----------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            try:
                async for message in self._bus.messages():
                    try:
                        self._route(message)
                    except Exception:
                        self._log.exception("bus message handling failed", topic=message.topic)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.exception("bus consumer failed; restarting")
                await asyncio.sleep(1.0)

    def _route(self, message: Message) -> None:
        if message.topic.startswith(self._control_head):
            self._on_control(message)
            return
        try:
            direction, _version, station = self._topics.parse(message.topic)
        except ValueError:
            self._log.warning("message on unexpected topic dropped", topic=message.topic)
            return
        if direction != "out":
            self._log.warning("message on unexpected topic dropped", topic=message.topic)
            return
        conn = self._stations.get(station)
        if conn is None:
            # Only possible right after the station left or moved: the broker stops sending
            # once the unsubscribe lands, and a newer holder (if any) got the same message.
            self._log.info("message for a station not connected here dropped", station=station)
            return
        try:
            envelope = decode_envelope(message.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            conn.log.warning("undecodable envelope dropped", error=str(exc))
            return
        if envelope.version != conn.version:
            conn.log.warning(
                "envelope for another OCPP version dropped",
                envelope_version=envelope.version,
                message_id=envelope.message_id,
            )
            return
        conn.feed_envelope(envelope)

    def _on_control(self, message: Message) -> None:
        try:
            notice = decode_event(message.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._log.warning("undecodable control message dropped", error=str(exc))
            return
        conn = self._stations.get(notice.station)
        if conn is None or conn.id == notice.connection:
            return
        if (conn.connected_at, conn.id) >= (notice.at, notice.connection):
            conn.log.info(
                "takeover notice of an older connection ignored",
                other_gateway=notice.gateway,
                other_connection=notice.connection,
            )
            return
        del self._stations[notice.station]
        conn.retire(f"{REPLACED} on gateway {notice.gateway}")
        self._spawn(self._unsubscribe(notice.station))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_consumer(self) -> None:
        if self._presence is not None:
            self._presence.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._presence
            self._presence = None
        if self._announcer is not None:
            self._announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcer
            self._announcer = None
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
            self._consumer = None
        with contextlib.suppress(Exception):
            await self._bus.unsubscribe(self._control_filter)


@dataclasses.dataclass(frozen=True, slots=True)
class _Admitted:
    """What the handshake decided for a connection, handed to its handler."""

    version: str
    admission: Admission

    def meta(self) -> dict[str, str] | None:
        """Envelope metadata telling the manager how an unknown station was admitted."""
        if self.admission.known:
            return None
        registration = "Pending" if self.admission.pending else "Accepted"
        return {ADMITTED_AS: registration}
