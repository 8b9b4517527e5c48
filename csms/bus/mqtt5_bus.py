"""MQTT v5 adapter of :class:`csms.bus.Bus`: a thin asyncio protocol over the ``mqtt5``
sans-I/O codec.

It keeps every behaviour of :mod:`csms.bus.mqtt` (PUBACK reason codes, manual
acknowledgement, last will, session expiry, TLS, credentials, reconnect with capped jittered
backoff and re-subscription, prompt :class:`BusUnavailable` while disconnected,
TCP_NODELAY) at a fraction of its CPU cost per message, because per connection it has:

- one read buffer, parsed with :func:`mqtt5.read` (a partial packet waits for the bytes
  its fixed header announces, several packets in one read are all handled);
- one ``transport.write`` per event-loop iteration (everything written in between is
  coalesced);
- one timer, for keepalive (PINGREQ, and a broker that stops answering is dropped) and for
  the deadlines of publishes and subscriptions;
- one dict of futures keyed by packet id, resolved by PUBACK / SUBACK / UNSUBACK, and a
  FIFO of publishes waiting for the broker's Receive Maximum to allow them.

No task and no timer per message. One task per bus runs the connect / reconnect loop.

State per connection (:class:`State`): CONNECTING (CONNECT sent, waiting for CONNACK),
OPEN, CLOSED (final; the bus makes a new connection).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeAlias

import mqtt5
import structlog

from csms.bus import BusUnavailable, Message, NoSubscribers
from csms.bus.common import (
    AUTH_REFUSALS,
    NO_MATCHING_SUBSCRIBERS,
    BrokerAddress,
    backoff_delay,
    default_client_id,
    log_connect_failure,
    tls_context,
)

__all__ = [
    "ConnectRefused",
    "Mqtt5Bus",
    "State",
]

log = structlog.get_logger("csms.bus.mqtt")

_QOS1 = mqtt5.QoS.AT_LEAST_ONCE
_PINGREQ = mqtt5.PingReqPacket().write()
_TICK = 0.5
"""Seconds between two runs of a connection's one timer (keepalive and deadlines)."""
_CONNECT_TIMEOUT = 10.0
"""Seconds for TCP + TLS + CONNACK before the attempt counts as failed."""

_Waiter: TypeAlias = "asyncio.Future[Any]"
_Queued: TypeAlias = "tuple[str, bytes, list[tuple[str, str]] | None, asyncio.Future[int], float]"
"""A publish waiting for the Receive Maximum: topic, payload, user properties, its future,
its deadline (the packet id is given when it is sent)."""


class State(enum.Enum):
    """Lifecycle of one broker connection."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


class ConnectRefused(BusUnavailable):
    """The broker answered CONNECT with an error reason code."""

    def __init__(self, code: int, reason: str | None) -> None:
        self.code = code
        name = _code_name(mqtt5.ConnAckReasonCode, code)
        super().__init__(
            f"broker refused the connection: {name}" + (f" ({reason})" if reason else "")
        )


def _code_name(kind: type[enum.IntEnum], code: int) -> str:
    try:
        return f"{kind(code).name.lower()} (0x{code:02x})"
    except ValueError:
        return f"0x{code:02x}"


class _Ack:
    """One received message's acknowledgement: sends its PUBACK once, on the connection
    that delivered it (after a reconnect its packet id means nothing)."""

    __slots__ = ("_packet_id", "_protocol")

    def __init__(self, protocol: _Protocol, packet_id: int) -> None:
        self._protocol: _Protocol | None = protocol
        self._packet_id = packet_id

    def __call__(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.state is State.OPEN:
            protocol.write(mqtt5.PubAckPacket(self._packet_id).write())


class _Protocol(asyncio.Protocol):
    """One connection to the broker: framing, flow control, keepalive, acknowledgements."""

    def __init__(
        self,
        connect: bytes,
        deliver: Callable[[Message], None],
        *,
        manual_ack: bool,
        keepalive: int,
        timeout: float,
        max_inflight: int,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._connect = connect
        self._deliver = deliver
        self._manual_ack = manual_ack
        self.keepalive = keepalive
        self._timeout = timeout
        self._max_inflight = max_inflight
        self.state = State.CONNECTING
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[mqtt5.ConnAckPacket] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        """Resolves with the reason once the connection is gone."""
        self._buffer = bytearray()
        self._need = 0
        """Bytes the buffer must hold before the next packet can be complete."""
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._waiters: dict[int, tuple[_Waiter, float]] = {}
        """Packet id -> (future, deadline) of every PUBLISH, SUBSCRIBE, UNSUBSCRIBE in flight."""
        self._inflight = 0
        """PUBLISHes sent and not acknowledged, bounded by the Receive Maximum."""
        self._queued: collections.deque[_Queued] = collections.deque()
        self._next_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._last_ping = 0.0
        self._ping_every = keepalive * 0.75
        self._ping_outstanding = False

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self._connect)
        self._last_ping = self._loop.time()
        self._timer = self._loop.call_later(_TICK, self._tick)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return
            used = self._parse(buffer)
            del buffer[:used]
        else:
            used = self._parse(data)
            if used < len(data):
                buffer += data[used:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._close(str(exc) if exc else "connection closed by the broker")

    # --- framing -----------------------------------------------------------------------

    def _parse(self, data: bytes | bytearray) -> int:
        """Handle every complete packet in ``data``; return the bytes consumed."""
        used = 0
        end = len(data)
        with memoryview(data) as view:
            while used < end and self.state is not State.CLOSED:
                try:
                    packet, size = mqtt5.read(view[used:])
                except IndexError:
                    self._need = _packet_length(view[used:])
                    break
                except ValueError as exc:
                    log.warning("broker sent a malformed packet", error=str(exc))
                    self.abort(f"malformed packet: {exc}")
                    break
                used += size
                self._handle(packet)
            else:
                self._need = 0
        return used

    def _handle(self, packet: mqtt5.Packet) -> None:
        # Most frequent first: PUBACKs and PUBLISHes are nearly all of the traffic.
        if isinstance(packet, mqtt5.PubAckPacket):
            self._inflight -= 1
            self._resolve(packet.packet_id, int(packet.reason_code))
            if self._queued:
                self._send_queued()
        elif isinstance(packet, mqtt5.PublishPacket):
            self._received(packet)
        elif isinstance(packet, mqtt5.PingRespPacket):
            self._ping_outstanding = False
        elif isinstance(packet, mqtt5.SubAckPacket | mqtt5.UnsubAckPacket):
            self._resolve(packet.packet_id, [int(code) for code in packet.reason_codes])
        elif isinstance(packet, mqtt5.ConnAckPacket):
            self._connacked(packet)
        elif isinstance(packet, mqtt5.DisconnectPacket):
            reason = _code_name(mqtt5.DisconnectReasonCode, int(packet.reason_code))
            if packet.reason_str:
                reason += f": {packet.reason_str}"
            self.abort(f"broker disconnected: {reason}")
        else:
            # QoS 2 flows, AUTH: never asked for (subscriptions are QoS 1, no enhanced auth).
            self.abort(f"unexpected {type(packet).__name__} from the broker")

    def _received(self, packet: mqtt5.PublishPacket) -> None:
        packet_id = packet.packet_id
        acknowledge = None
        if packet_id is not None and packet.qos is _QOS1:
            if self._manual_ack:
                acknowledge = _Ack(self, packet_id)
            else:
                self.write(mqtt5.PubAckPacket(packet_id).write())
        self._deliver(
            Message(packet.topic, packet.payload, dict(packet.user_properties), acknowledge)
        )

    def _connacked(self, packet: mqtt5.ConnAckPacket) -> None:
        if self.connack.done():
            self.abort("second CONNACK")
            return
        if packet.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
            self.connack.set_exception(ConnectRefused(int(packet.reason_code), packet.reason_str))
            self.abort("connection refused")
            return
        self._max_inflight = max(1, min(self._max_inflight, packet.receive_max))
        if packet.server_keep_alive is not None:
            self.keepalive = packet.server_keep_alive
        self._ping_every = self.keepalive * 0.75
        self.state = State.OPEN
        self.connack.set_result(packet)

    # --- writing -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data``; everything queued in one loop iteration goes out in one write."""
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        transport = self.transport
        if transport is None or transport.is_closing() or not out:
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _packet_id(self) -> int:
        waiters = self._waiters
        next_id = self._next_id
        while True:
            next_id = next_id % 0xFFFF + 1
            if next_id not in waiters:
                self._next_id = next_id
                return next_id

    def publish(
        self, topic: str, payload: bytes, properties: Mapping[str, str] | None
    ) -> asyncio.Future[int]:
        """Send (or queue, beyond the Receive Maximum) a QoS 1 PUBLISH; the future resolves
        with the PUBACK reason code."""
        future: asyncio.Future[int] = self._loop.create_future()
        deadline = self._loop.time() + self._timeout
        user_properties = list(properties.items()) if properties else None
        if self._inflight < self._max_inflight and not self._queued:
            packet_id = self._packet_id()
            self._inflight += 1
            self._waiters[packet_id] = (future, deadline)
            self.write(
                mqtt5.PublishPacket(
                    topic, payload, qos=_QOS1, packet_id=packet_id, user_properties=user_properties
                ).write()
            )
        else:
            self._queued.append((topic, payload, user_properties, future, deadline))
        return future

    def _send_queued(self) -> None:
        queued = self._queued
        while queued and self._inflight < self._max_inflight:
            topic, payload, user_properties, future, deadline = queued.popleft()
            if future.done():  # timed out or given up while waiting: never sent
                continue
            packet_id = self._packet_id()
            self._inflight += 1
            self._waiters[packet_id] = (future, deadline)
            self.write(
                mqtt5.PublishPacket(
                    topic, payload, qos=_QOS1, packet_id=packet_id, user_properties=user_properties
                ).write()
            )

    def subscribe(self, filters: list[str]) -> asyncio.Future[list[int]]:
        """SUBSCRIBE at QoS 1; the future resolves with the SUBACK reason codes."""
        future: asyncio.Future[list[int]] = self._loop.create_future()
        packet_id = self._packet_id()
        self._waiters[packet_id] = (future, self._loop.time() + self._timeout)
        topic_filters = [mqtt5.TopicFilter(f, max_qos=_QOS1) for f in filters]
        self.write(mqtt5.SubscribePacket(packet_id, topic_filters).write())
        return future

    def unsubscribe(self, filters: list[str]) -> asyncio.Future[list[int]]:
        future: asyncio.Future[list[int]] = self._loop.create_future()
        packet_id = self._packet_id()
        self._waiters[packet_id] = (future, self._loop.time() + self._timeout)
        self.write(mqtt5.UnsubscribePacket(packet_id, filters).write())
        return future

    def _resolve(self, packet_id: int, result: object) -> None:
        entry = self._waiters.pop(packet_id, None)
        if entry is None:
            self.abort(f"acknowledgement of unknown packet id {packet_id}")
        elif not entry[0].done():
            entry[0].set_result(result)

    # --- time --------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self._loop.time()
        if self.state is State.CLOSED:
            return
        # A PINGREQ every 3/4 keepalive keeps the broker's 1.5x window satisfied whatever
        # else is sent; one still unanswered at the next is a dead broker.
        if (
            self.state is State.OPEN
            and self.keepalive
            and now - self._last_ping >= self._ping_every
        ):
            if self._ping_outstanding:
                self.abort(f"keepalive timeout: no PINGRESP within {self._ping_every:g}s")
                return
            self._ping_outstanding = True
            self._last_ping = now
            self.write(_PINGREQ)
        # Deadlines. Entries are in send order and the broker answers in order, so the
        # oldest come first; one that has not expired ends the scan.
        for future, deadline in self._waiters.values():
            if deadline > now:
                break
            if not future.done():
                future.set_exception(BusUnavailable("no acknowledgement from the broker in time"))
        for *_, future, deadline in self._queued:
            if deadline > now:
                break
            if not future.done():
                future.set_exception(BusUnavailable("publish waited too long for the broker"))
        self._timer = self._loop.call_later(_TICK, self._tick)

    # --- closing -----------------------------------------------------------------------

    def disconnect(self) -> None:
        """Send DISCONNECT (normal: the broker does not publish the will) and close; a
        connection still in its handshake is just dropped."""
        if self.state is State.OPEN and self.transport is not None:
            self._flush()
            self.transport.write(mqtt5.DisconnectPacket().write())
            self.transport.close()
        elif self.transport is not None:
            self.transport.abort()
        self._close("disconnected by this client")

    def abort(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        if self._timer is not None:
            self._timer.cancel()
        lost = BusUnavailable(f"MQTT connection lost: {reason}")
        if not self.connack.done():
            self.connack.set_exception(lost)
        for future, _ in self._waiters.values():
            if not future.done():
                future.set_exception(lost)
        for *_, future, _ in self._queued:
            if not future.done():
                future.set_exception(lost)
        self._waiters.clear()
        self._queued.clear()
        self._out.clear()
        if not self.closed.done():
            self.closed.set_result(reason)
        if not self.connack.cancelled():
            self.connack.exception()  # retrieved: nobody awaits it once the bus is closing


def _packet_length(view: memoryview) -> int:
    """Total length of the packet starting at ``view`` from its fixed header (0 while even
    the header is incomplete)."""
    multiplier, length = 1, 0
    for index in range(1, min(len(view), 5)):
        byte = view[index]
        length += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return index + 1 + length
        multiplier *= 128
    return 0


class Mqtt5Bus:
    """A resilient MQTT v5 connection implementing :class:`csms.bus.Bus`; options as
    :class:`csms.bus.mqtt.MqttBus`.

    ``manual_ack``: messages are acknowledged when the consumer calls
    :meth:`csms.bus.Message.ack` (after handling) instead of on receipt.
    ``session_expiry``: seconds the broker keeps this client's session after a disconnect;
    0 = a clean session each time. ``will``: given the session id of a new connection, the
    (topic, payload) the broker publishes if that connection dies without a clean
    disconnect. ``max_inflight``: publishes awaiting their PUBACK at once (the broker's
    Receive Maximum lowers it); more wait in a FIFO.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id_prefix: str = "csms",
        publish_timeout: float = 5.0,
        max_backoff: float = 5.0,
        keepalive: int = 30,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        max_incoming_queue: int = 100_000,
        max_inflight: int = 1_000,
        manual_ack: bool = False,
        session_expiry: int = 0,
        client_id: str | None = None,
        will: Callable[[str], tuple[str, bytes]] | None = None,
    ) -> None:
        self._address = BrokerAddress.parse(url)
        self._client_id = client_id or default_client_id(client_id_prefix)
        self._manual_ack = manual_ack
        self._session_expiry = session_expiry
        self._will = will
        self._session_id = uuid.uuid4().hex[:12]
        self._publish_timeout = publish_timeout
        self._max_backoff = max_backoff
        self._keepalive = keepalive
        self._max_inflight = max_inflight
        self._tls_context: ssl.SSLContext | None = tls_context(
            self._address, tls_ca_file, tls_cert_file, tls_key_file
        )
        self._filters: set[str] = set()
        self._protocol: _Protocol | None = None
        self._connected = asyncio.Event()
        self._max_incoming = max_incoming_queue
        self._incoming: asyncio.Queue[Message] = asyncio.Queue()
        self._reading_paused = False
        self._connecting: _Protocol | None = None
        """The current connection, from TCP connect to its end."""
        self._runner: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def session_id(self) -> str:
        return self._session_id

    async def wait_connected(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until connected; False when ``timeout`` passes first."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def __aenter__(self) -> Mqtt5Bus:
        self._closing = False
        self._runner = asyncio.create_task(self._run(), name=f"mqtt5:{self._client_id}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        if self._runner:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._connected.clear()

    # --- connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._closing:
                self._session_id = uuid.uuid4().hex[:12]
                refused = False
                try:
                    protocol = await asyncio.wait_for(self._connect(), _CONNECT_TIMEOUT)
                    self._protocol = protocol
                    self._connected.set()
                    if attempt:
                        log.info("broker reconnected", broker=self._address.host, attempts=attempt)
                    else:
                        log.info(
                            "broker connected", broker=self._address.host, port=self._address.port
                        )
                    attempt = 0
                    error = await protocol.closed
                except (OSError, TimeoutError, BusUnavailable) as exc:
                    refused = isinstance(exc, ConnectRefused) and exc.code in AUTH_REFUSALS
                    error = str(exc) or type(exc).__name__
                finally:
                    self._connected.clear()
                    self._protocol = None
                # Not reached on cancellation: the outer finally disconnects cleanly then.
                if self._connecting is not None:
                    self._connecting.abort(error)
                    self._connecting = None
                attempt += 1
                delay = backoff_delay(attempt, self._max_backoff)
                log_connect_failure(
                    log,
                    self._address,
                    error,
                    refused_credentials=refused,
                    delay=delay,
                    attempt=attempt,
                )
                await asyncio.sleep(delay)
        finally:
            if self._connecting is not None:
                self._connecting.disconnect()
                self._connecting = None

    async def _connect(self) -> _Protocol:
        """A connection that has its CONNACK and holds every filter of this bus."""
        will = None
        if self._will is not None:
            topic, payload = self._will(self._session_id)
            will = mqtt5.Will(topic, payload=payload, qos=_QOS1)
        address = self._address
        connect = mqtt5.ConnectPacket(
            self._client_id,
            username=address.username,
            password=address.password.encode() if address.password is not None else None,
            clean_start=not self._session_expiry,
            will=will,
            keep_alive=self._keepalive,
            session_expiry_interval=self._session_expiry,
        ).write()
        loop = asyncio.get_running_loop()
        protocol = _Protocol(
            connect,
            self._deliver,
            manual_ack=self._manual_ack,
            keepalive=self._keepalive,
            timeout=self._publish_timeout,
            max_inflight=self._max_inflight,
        )
        self._connecting = protocol
        self._reading_paused = False
        await loop.create_connection(
            lambda: protocol,
            address.host,
            address.port,
            ssl=self._tls_context,
            server_hostname=address.host if self._tls_context else None,
        )
        await protocol.connack
        # Subscribe until the set holds still: subscribe() calls made meanwhile are not lost.
        held: set[str] = set()
        while todo := self._filters - held:
            codes = await protocol.subscribe(sorted(todo))
            _log_refused_filters(sorted(todo), codes)
            held |= todo
        if gone := held - self._filters:
            await protocol.unsubscribe(sorted(gone))
        return protocol

    def _deliver(self, message: Message) -> None:
        incoming = self._incoming
        incoming.put_nowait(message)
        if incoming.qsize() >= self._max_incoming and not self._reading_paused:
            protocol = self._protocol or self._connecting
            if protocol is not None and protocol.transport is not None:
                protocol.transport.pause_reading()
                self._reading_paused = True

    # --- Bus ---------------------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, *, properties: Mapping[str, str] | None = None
    ) -> None:
        protocol = self._protocol
        if protocol is None or protocol.state is not State.OPEN:
            raise BusUnavailable("MQTT broker is not connected")
        code = await protocol.publish(topic, payload, properties)
        if code == NO_MATCHING_SUBSCRIBERS:
            raise NoSubscribers(f"no subscriber for {topic}")
        if code >= 0x80:
            reason = _code_name(mqtt5.PubAckReasonCode, code)
            raise BusUnavailable(f"broker refused the publish ({reason})")

    async def subscribe(self, topic_filter: str) -> None:
        self._filters.add(topic_filter)
        protocol = self._protocol
        if protocol is not None and protocol.state is State.OPEN:
            try:
                codes = await protocol.subscribe([topic_filter])
            except BusUnavailable as exc:
                # Kept in the set: the reconnect loop subscribes it again.
                log.warning(
                    "subscribe failed; will retry on reconnect", filter=topic_filter, error=str(exc)
                )
                return
            _log_refused_filters([topic_filter], codes)

    async def unsubscribe(self, topic_filter: str) -> None:
        self._filters.discard(topic_filter)
        protocol = self._protocol
        if protocol is not None and protocol.state is State.OPEN:
            with contextlib.suppress(BusUnavailable):
                await protocol.unsubscribe([topic_filter])

    async def messages(self) -> AsyncIterator[Message]:
        incoming = self._incoming
        while True:
            message = await incoming.get()
            if self._reading_paused and incoming.qsize() <= self._max_incoming // 2:
                self._reading_paused = False
                protocol = self._protocol
                if protocol is not None and protocol.transport is not None:
                    protocol.transport.resume_reading()
            yield message


def _log_refused_filters(filters: list[str], codes: list[int]) -> None:
    for topic_filter, code in zip(filters, codes, strict=False):
        if code >= 0x80:
            log.warning(
                "broker refused a subscription",
                filter=topic_filter,
                reason=_code_name(mqtt5.SubAckReasonCode, code),
            )
