"""The gateway: WebSocket server for stations, bridged to the bus.

:class:`Gateway` is composition: it wires the listeners (:mod:`gateway.listeners`), the
handshake (:mod:`gateway.handshake`: path, subprotocol, security profiles, one HTTP answer
per refusal), presence (:mod:`gateway.presence`: connection events, takeovers, the lease)
and one bus consumer, and runs each station socket's lifetime: a
:class:`~gateway.pipe.Pipe` inside a :class:`~gateway.connection.Connection`, held in the
stations table from its handshake until its socket closes.

Choices worth knowing:

- **Several listeners.** One server per configured listener, e.g. ``ws://`` for profile 1
  and ``wss://`` for profiles 2 and 3, all feeding the same stations table and bus; TLS
  certificates are reloaded in place, so connected stations stay.
- **Oversized frames.** websockets is given a hard limit of ``4 * max_frame_bytes``; frames
  above ``max_frame_bytes`` but under the hard limit reach the pipe, which answers a Call with
  a FormatViolation (1.6: FormationViolation) CallError and keeps the socket. Frames above the
  hard limit close the socket with 1009 (message too big): reading them would cost memory a
  misbehaving station should not be able to claim.
- **Newest wins.** A new socket for a station replaces the one held here at once; one held
  on another gateway learns it from the takeover notice (:class:`~gateway.presence.Takeover`).
- **One consumer routes the bus.** CSMS traffic on ``{prefix}/out/{version}/{station}`` goes
  to the connection holding the station, takeover notices on ``{prefix}/ctl/{station}`` to
  presence. The gateway needs a bus connection of its own (the interface allows one consumer
  per bus); the caller opens and closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, Self

import msgspec
import structlog
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from csms.bus import Bus, Message
from csms.config import Settings
from csms.envelope import decode_envelope
from csms.topics import Topics
from csms.versions import supported
from gateway.admission import NoStations, StationLookup
from gateway.connection import Connection
from gateway.guard import Guard
from gateway.handshake import Handshake, parse_station_path
from gateway.limits import format_peer
from gateway.listeners import StationListener, is_loopback, station_listeners
from gateway.metrics import GatewayMetrics, close_reason
from gateway.password_checks import PasswordChecks
from gateway.pipe import STATION_DISCONNECTED, Limits, Pipe
from gateway.presence import REPLACED, Presence, Takeover

__all__ = ["CLOSE_TIMEOUT", "Gateway", "default_gateway_id"]

log = structlog.get_logger("gateway")

HARD_LIMIT_FACTOR = 4
"""websockets closes the socket (1009) above ``HARD_LIMIT_FACTOR * max_frame_bytes``."""
RECEIVE_QUEUE = 4
"""Frames websockets buffers per connection ahead of the reader (its default is 16). The
reader is throttled by the connection's lanes, so a flooding station waits in its TCP window
instead of in this process: at most ``4 * HARD_LIMIT_FACTOR * max_frame_bytes`` per socket."""
CLOSE_TIMEOUT = 5.0
"""Seconds a closing handshake may take before the TCP connection is dropped."""


def default_gateway_id() -> str:
    """``host-pid``: the gateway id unless ``gateway_id`` is set."""
    return f"{socket.gethostname()}-{os.getpid()}"


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
        self._stations: dict[str, Connection] = {}
        self._consumer: asyncio.Task[None] | None = None
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
        self._reloaders: list[asyncio.Task[None]] = []
        self._password_checks = PasswordChecks(
            settings.password_check_threads, settings.max_waiting_password_checks
        )
        self._guard = Guard(settings, self._log)
        """Connection limits (gateway/guard.py); its counts are released on socket close."""
        self._handshake = Handshake(
            path_prefix=settings.path_prefix,
            unknown_stations=settings.unknown_stations,
            registry=self._registry,
            password_checks=self._password_checks,
            guard=self._guard,
            log=self._log,
        )
        self._stopping = False
        """Set while leaving the ``async with``: sockets closing now end by shutdown."""
        self._metrics = GatewayMetrics(stations=self._stations, bus=bus, guard=self._guard)
        self._presence = Presence(
            bus,
            self._topics,
            gateway_id=self._id,
            stations=self.connections,
            heartbeat_interval=settings.gateway_heartbeat_interval,
            publish_timeout=settings.publish_timeout,
            log=self._log,
        )

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
    def metrics(self) -> GatewayMetrics:
        """This gateway's Prometheus metrics (gateway/metrics.py); ``.registry`` to serve."""
        return self._metrics

    @property
    def connections(self) -> Mapping[str, Connection]:
        """Station id → the connection holding it here (read-only view)."""
        return MappingProxyType(self._stations)

    def reload_certificates(self) -> None:
        """Load renewed TLS certificate files now (also polled every
        ``tls_reload_interval``); connected stations keep their sessions."""
        for listener in self._listeners:
            if listener.reloader is not None:
                listener.reloader.reload_if_changed()

    async def __aenter__(self) -> Self:
        await self._presence.start()
        self._consumer = asyncio.create_task(self._consume(), name=f"gateway:{self._id}:bus")
        try:
            for listener in self._listeners:
                await self._listen(listener)
        except BaseException:
            await self._close_listeners()
            await self._stop_consumer()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping = True
        await self._close_listeners()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT)
        await self._stop_consumer()
        await self._presence.say_gone()
        self._password_checks.close()
        self._log.info("gateway stopped")

    async def serve_forever(self) -> None:
        """Wait until the gateway is closed; cancel it to stop (then leave the ``async with``)."""
        servers = [item.server for item in self._listeners if item.server is not None]
        if not servers:
            raise RuntimeError("gateway is not started")
        await asyncio.gather(*(server.wait_closed() for server in servers))

    # -- listeners -----------------------------------------------------------------------

    async def _listen(self, listener: StationListener) -> None:
        settings = self._settings
        # One server per listener, all with the same handler, limits and stations table.
        listener.server = await serve(
            self._handle,
            listener.settings.host,
            listener.settings.port,
            ssl=listener.ssl_context,
            subprotocols=[Subprotocol(version) for version in supported()],
            select_subprotocol=self._handshake.select_subprotocol,
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

    async def _process_request(
        self, ws: ServerConnection, request: Request, *, listener: StationListener
    ) -> Response | None:
        """The handshake (gateway/handshake.py), its refusals counted by status."""
        response = await self._handshake.process_request(ws, request, listener)
        if response is not None:
            self._metrics.refused(response.status_code)
        return response

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

    # -- connection lifetime -------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None and ws.subprotocol is not None
        station = parse_station_path(ws.request.path, self._settings.path_prefix)
        version = str(ws.subprotocol)
        connection_id = uuid.uuid4().hex[:16]
        admitted = self._handshake.take(ws)
        profile = admitted.admission.profile if admitted is not None else None
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
            counters=self._metrics.counters(version),
            log=conn_log,
        )
        remote = format_peer(ws.remote_address)
        proven = admitted.admission.proven_password_hash if admitted is not None else None
        reached = admitted.admission.reached_security_profile if admitted is not None else 0
        try:
            await self._attach(conn, remote, proven, reached)
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

    async def _attach(
        self, conn: Connection, remote: str | None, proven: str | None, reached: int = 0
    ) -> None:
        """``conn`` holds its station: replace an older socket here, subscribe, announce."""
        station = conn.station
        older = self._stations.get(station)
        self._stations[station] = conn
        self._metrics.counters(conn.version).opened.inc()
        conn.log.info("station connected", remote=remote)
        if older is not None:
            older.retire(REPLACED)
        await self._subscribe(station)
        await self._presence.connected(conn, proven, reached)

    async def _detach(self, conn: Connection, remote: str | None) -> None:
        """``conn``'s socket closed: publish its outcomes, release the station, tell."""
        station = conn.station
        owner = self._stations.get(station) is conn
        if owner:
            del self._stations[station]
        self._metrics.connections_closed.labels(close_reason(conn, stopping=self._stopping)).inc()
        code, why = conn.ws.close_code, conn.ws.close_reason
        retired = conn.retire_reason
        reason = retired or (
            f"{STATION_DISCONNECTED} (close code {code}{': ' + why if why else ''})"
            if code
            else STATION_DISCONNECTED
        )
        try:
            await conn.finish()
            if owner:
                await self._unsubscribe(station)
        except Exception:
            conn.log.exception("connection cleanup failed")
        conn.log.info("station disconnected", code=code, reason=why or retired)
        await self._presence.disconnected(conn, reason, remote)

    def _take_over(self, takeover: Takeover) -> None:
        """A newer connection on another gateway holds the station: let this one go."""
        conn = takeover.connection
        del self._stations[conn.station]
        conn.retire(takeover.reason)
        self._spawn(self._unsubscribe(conn.station))

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
        if self._presence.is_control(message.topic):
            takeover = self._presence.on_control(message)
            if takeover is not None:
                self._take_over(takeover)
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

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_consumer(self) -> None:
        """Stop presence's tasks and the bus consumer (the lease is released separately)."""
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
            self._consumer = None
        await self._presence.stop()
