"""MQTT v5 adapter of :class:`csms.bus.Bus`, over aiomqtt.

One connection per process. It reconnects with capped exponential backoff and jitter, and
re-subscribes every filter it holds after each reconnect, so a gateway keeps serving the
stations it holds across a broker restart. While disconnected, :meth:`MqttBus.publish` fails
fast with :class:`BusUnavailable` so callers can answer stations promptly instead of hanging.

Every connection sets TCP_NODELAY: without it, QoS 1 request/response traffic stalls on
delayed ACKs (measured ~5x slower on this project's machines).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

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
    "NO_MATCHING_SUBSCRIBERS",
    "BrokerAddress",
    "MqttBus",
]

log = structlog.get_logger("csms.bus.mqtt")


def _refused_credentials(exc: aiomqtt.MqttError) -> bool:
    """True when the broker refused the connection for its user name or password."""
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return False
    code = getattr(exc.rc, "value", exc.rc)
    return isinstance(code, int) and code in AUTH_REFUSALS


class _Client(aiomqtt.Client):
    """aiomqtt's client plus what this project needs from MQTT v5 and aiomqtt 2 hides: the
    PUBACK reason code of each QoS 1 publish, and acknowledgement after handling.

    It uses aiomqtt's pending-call bookkeeping (``_pending_call``, ``_pending_publishes``,
    ``_wait_for``), which is why the dependency is pinned below aiomqtt 3.
    """

    def __init__(self, *args: Any, manual_ack: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reason_codes: dict[int, int] = {}
        self._client.on_publish = self._on_publish_with_code
        if manual_ack:
            self._client.manual_ack_set(True)

    def _on_publish_with_code(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        self._reason_codes[mid] = int(getattr(reason_code, "value", reason_code) or 0)
        self._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_qos1(
        self, topic: str, payload: bytes, properties: Properties | None, wait: float
    ) -> int:
        """Publish at QoS 1 and return the broker's PUBACK reason code (waits at most
        ``wait`` seconds for it)."""
        info = self._client.publish(topic, payload, 1, False, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        try:
            if not info.is_published():
                confirmation = asyncio.Event()
                with self._pending_call(info.mid, confirmation, self._pending_publishes):
                    await self._wait_for(confirmation.wait(), timeout=wait)
        finally:
            code = self._reason_codes.pop(info.mid, 0)
        return code

    def ack(self, mid: int, qos: int) -> None:
        """Send the PUBACK of a message received with manual acknowledgement."""
        self._client.ack(mid, qos)


class MqttBus:
    """A resilient MQTT v5 connection implementing :class:`csms.bus.Bus`.

    ``manual_ack``: messages are acknowledged when the consumer calls
    :meth:`csms.bus.Message.ack` (after handling) instead of on receipt.
    ``session_expiry``: seconds the broker keeps this client's session (subscriptions,
    unacknowledged and queued messages) after a disconnect; 0 = a clean session each time.
    A kept session is only useful with a client id that survives a restart (``client_id``).
    ``will``: given the session id of a new connection, the (topic, payload) the broker
    publishes if that connection dies without a clean disconnect (a gateway's "I am gone").
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
        self._client: _Client | None = None
        self._connected = asyncio.Event()
        self._incoming: asyncio.Queue[Message] = asyncio.Queue(max_incoming_queue)
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

    async def __aenter__(self) -> MqttBus:
        self._closing = False
        self._runner = asyncio.create_task(self._run(), name=f"mqtt:{self._client_id}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        if self._runner:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._connected.clear()

    def _new_client(self) -> _Client:
        connect_properties = None
        if self._session_expiry:
            connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            connect_properties.SessionExpiryInterval = self._session_expiry
        will = None
        if self._will is not None:
            topic, payload = self._will(self._session_id)
            will = aiomqtt.Will(topic, payload, qos=1)
        client = _Client(
            self._address.host,
            self._address.port,
            username=self._address.username,
            password=self._address.password,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=not self._session_expiry,
            properties=connect_properties,
            will=will,
            manual_ack=self._manual_ack,
            keepalive=self._keepalive,
            timeout=self._publish_timeout,
            tls_context=self._tls_context,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            max_inflight_messages=self._max_inflight,
        )
        # aiomqtt warns from 10 outstanding publishes on; a gateway under load has hundreds
        # by design (bounded by ``max_inflight``), so warn only when that bound is reached.
        client.pending_calls_threshold = self._max_inflight
        return client

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            self._session_id = uuid.uuid4().hex[:12]
            client = self._new_client()
            try:
                async with client:
                    self._client = client
                    for topic_filter in sorted(self._filters):
                        await client.subscribe(topic_filter, qos=1)
                    self._connected.set()
                    if attempt:
                        log.info("broker reconnected", broker=self._address.host, attempts=attempt)
                    else:
                        log.info(
                            "broker connected", broker=self._address.host, port=self._address.port
                        )
                    attempt = 0
                    async for received in client.messages:
                        await self._incoming.put(self._to_message(client, received))
            except aiomqtt.MqttError as exc:
                self._connected.clear()
                self._client = None
                attempt += 1
                delay = backoff_delay(attempt, self._max_backoff)
                log_connect_failure(
                    log,
                    self._address,
                    str(exc),
                    refused_credentials=_refused_credentials(exc),
                    delay=delay,
                    attempt=attempt,
                )
                await asyncio.sleep(delay)
            finally:
                self._connected.clear()
                self._client = None

    def _to_message(self, client: _Client, received: aiomqtt.Message) -> Message:
        properties: dict[str, str] = {}
        user_properties = getattr(received.properties, "UserProperty", None)
        if user_properties:
            properties = dict(user_properties)
        payload = received.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        acknowledge = None
        if self._manual_ack and received.qos > 0:
            acknowledge = functools.partial(self._ack, client, received.mid, received.qos)
        return Message(received.topic.value, bytes(payload), properties, acknowledge)

    def _ack(self, client: _Client, mid: int, qos: int) -> None:
        # An ack belongs to the connection that delivered the message: after a reconnect its
        # id means nothing (a clean session dropped it, a resumed one redelivers it).
        if client is self._client and self._connected.is_set():
            with contextlib.suppress(Exception):
                client.ack(mid, qos)

    async def publish(
        self, topic: str, payload: bytes, *, properties: Mapping[str, str] | None = None
    ) -> None:
        client = self._client
        if client is None or not self._connected.is_set():
            raise BusUnavailable("MQTT broker is not connected")
        mqtt_properties = None
        if properties:
            mqtt_properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            mqtt_properties.UserProperty = list(properties.items())
        try:
            code = await client.publish_qos1(
                topic, payload, mqtt_properties, wait=self._publish_timeout
            )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise BusUnavailable(f"MQTT publish failed: {exc}") from exc
        if code == NO_MATCHING_SUBSCRIBERS:
            raise NoSubscribers(f"no subscriber for {topic}")
        if code >= 0x80:
            raise BusUnavailable(f"broker refused the publish (reason code {code})")

    async def subscribe(self, topic_filter: str) -> None:
        self._filters.add(topic_filter)
        client = self._client
        if client is not None and self._connected.is_set():
            try:
                await client.subscribe(topic_filter, qos=1)
            except aiomqtt.MqttError as exc:
                # Kept in the set: the reconnect loop subscribes it again.
                log.warning(
                    "subscribe failed; will retry on reconnect", filter=topic_filter, error=str(exc)
                )

    async def unsubscribe(self, topic_filter: str) -> None:
        self._filters.discard(topic_filter)
        client = self._client
        if client is not None and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(topic_filter)

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            yield await self._incoming.get()
