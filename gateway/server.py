"""The gateway: WebSocket server for stations, bridged to the bus.

:class:`Gateway` accepts station sockets (``ws://host:port{path_prefix}/{stationId}``,
subprotocol ``ocpp2.0.1`` or ``ocpp1.6``), gives each a :class:`~gateway.pipe.Pipe` inside a
:class:`~gateway.connection.Connection`, and runs one consumer task that routes what the bus
delivers: CSMS traffic on ``{prefix}/out/{version}/{station}`` to the connection holding the
station, takeover notices on ``{prefix}/ctl/{station}`` to the duplicate-connection rule.

Choices worth knowing:

- **Refuse before accepting.** Path, station id, subprotocol (and later authentication, see
  :meth:`Gateway.authenticate`) are checked in ``process_request``, so a bad client gets an
  HTTP 404/400 with a plain-text reason instead of a socket that is opened and then closed.
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
import http
import os
import socket
import uuid
from collections.abc import Coroutine, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Self
from urllib.parse import quote, unquote

import msgspec
import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from csms import rpc
from csms.bus import Bus, BusUnavailable, Message
from csms.config import Settings
from csms.envelope import (
    ConnectionEvent,
    ConnectionEventKind,
    decode_envelope,
    decode_event,
    encode,
)
from csms.topics import Topics
from gateway.connection import Connection
from gateway.pipe import STATION_DISCONNECTED, Limits, Pipe

__all__ = ["Gateway", "HandshakeRefused", "parse_station_path"]

log = structlog.get_logger("gateway")

MAX_STATION_ID_LENGTH = 48
HARD_LIMIT_FACTOR = 4
"""websockets closes the socket (1009) above ``HARD_LIMIT_FACTOR * max_frame_bytes``."""
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


def _default_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Gateway:
    """WebSocket server for charging stations, bridged to the bus.

    An async context manager: ``async with Gateway(settings, bus) as gateway:`` listens and
    consumes the bus; leaving the block closes every socket (1001) after publishing each
    connection's outcomes. ``bus`` must already be open and be used by nobody else for
    receiving.
    """

    def __init__(self, settings: Settings, bus: Bus, *, gateway_id: str | None = None) -> None:
        self._settings = settings
        self._bus = bus
        self._id = gateway_id or settings.gateway_id or _default_gateway_id()
        self._topics = Topics(prefix=settings.topic_prefix, group=settings.shared_group)
        self._limits = Limits.from_settings(settings)
        self._control_head = f"{settings.topic_prefix}/ctl/"
        self._control_filter = self._control_head + "+"
        self._stations: dict[str, Connection] = {}
        self._server: Server | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = log.bind(gateway=self._id)

    # -- public surface ------------------------------------------------------------------

    @property
    def id(self) -> str:
        """This gateway instance's id (in envelopes and connection events)."""
        return self._id

    @property
    def port(self) -> int:
        """The TCP port the server is bound to (useful with ``listen_port = 0``)."""
        if self._server is None:
            raise RuntimeError("gateway is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url_for(self, station_id: str) -> str:
        """The URL a station with ``station_id`` connects to."""
        host = self._settings.listen_host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}{self._settings.path_prefix}/{quote(station_id, safe='')}"

    @property
    def connections(self) -> Mapping[str, Connection]:
        """Station id → the connection holding it here (read-only view)."""
        return MappingProxyType(self._stations)

    async def authenticate(
        self, ws: ServerConnection, request: Request, station_id: str
    ) -> Response | None:
        """Hook for security profiles (HTTP Basic auth, client certificates).

        Called during the handshake once path and subprotocol are valid. Return None to
        accept, or a response (e.g. ``ws.respond(401, ...)``) to refuse. Accepts everyone.
        """
        return None

    async def __aenter__(self) -> Self:
        await self._bus.subscribe(self._control_filter)
        self._consumer = asyncio.create_task(self._consume(), name=f"gateway:{self._id}:bus")
        settings = self._settings
        try:
            self._server = await serve(
                self._handle,
                settings.listen_host,
                settings.listen_port,
                subprotocols=[Subprotocol(version) for version in rpc.SUPPORTED_VERSIONS],
                compression=None,
                process_request=self._process_request,
                max_size=settings.max_frame_bytes * HARD_LIMIT_FACTOR,
                ping_interval=settings.ping_interval,
                ping_timeout=settings.ping_timeout,
                close_timeout=CLOSE_TIMEOUT,
            )
        except BaseException:
            await self._stop_consumer()
            raise
        self._log.info(
            "gateway listening",
            host=settings.listen_host,
            port=self.port,
            path=settings.path_prefix,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            # Closes every socket with 1001; handlers publish their outcomes and events.
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT)
        await self._stop_consumer()
        self._log.info("gateway stopped")

    async def serve_forever(self) -> None:
        """Wait until the gateway is closed; cancel it to stop (then leave the ``async with``)."""
        if self._server is None:
            raise RuntimeError("gateway is not started")
        await self._server.wait_closed()

    # -- handshake -----------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
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
        if not any(version in offered for version in rpc.SUPPORTED_VERSIONS):
            reason = (
                f"unsupported or missing subprotocol (offered: {', '.join(offered) or 'none'}); "
                f"this server speaks {', '.join(rpc.SUPPORTED_VERSIONS)}\n"
            )
            self._log.info("connection refused", station=station, status=400, reason=reason.strip())
            return ws.respond(http.HTTPStatus.BAD_REQUEST, reason)
        response = await self.authenticate(ws, request, station)
        if response is not None:
            self._log.info(
                "connection refused by authentication", station=station, status=response.status_code
            )
        return response

    # -- connection lifetime -------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None and ws.subprotocol is not None
        station = parse_station_path(ws.request.path, self._settings.path_prefix)
        version = str(ws.subprotocol)
        connection_id = uuid.uuid4().hex[:16]
        conn_log = self._log.bind(station=station, version=version, connection=connection_id)
        pipe = Pipe(
            station, version, connection=connection_id, gateway=self._id, limits=self._limits
        )
        conn = Connection(
            ws,
            pipe,
            bus=self._bus,
            topics=self._topics,
            publish_timeout=self._settings.publish_timeout,
            log=conn_log,
        )
        remote = _format_address(ws.remote_address)
        try:
            await self._attach(conn, remote)
            async for data in ws:
                try:
                    conn.feed_frame(data)
                except Exception:
                    conn.log.exception("frame handling failed")
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
        notice = ConnectionEvent(
            kind=ConnectionEventKind.CONNECTED,
            station=station,
            version=conn.version,
            gateway=self._id,
            connection=conn.id,
            remote=remote,
            at=conn.connected_at,
        )
        await self._publish_quietly(conn, self._topics.control(station), notice)
        await self._publish_quietly(conn, self._topics.event(conn.version, station), notice)

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
        )
        await self._publish_quietly(conn, self._topics.event(conn.version, station), event)

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

    async def _publish_quietly(self, conn: Connection, topic: str, event: ConnectionEvent) -> None:
        try:
            async with asyncio.timeout(self._settings.publish_timeout):
                await self._bus.publish(
                    topic,
                    encode(event),
                    properties={"station": event.station, "event": str(event.kind)},
                )
        except (BusUnavailable, TimeoutError) as exc:
            conn.log.warning(
                "connection event not published",
                event_kind=str(event.kind),
                error=str(exc) or "timeout",
            )
        except Exception:
            conn.log.exception("connection event not published", event_kind=str(event.kind))

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
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
            self._consumer = None
        with contextlib.suppress(Exception):
            await self._bus.unsubscribe(self._control_filter)


def _format_address(address: object) -> str | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return None if address is None else str(address)
