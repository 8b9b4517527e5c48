"""What only :class:`csms.bus.mqtt5_bus.Mqtt5Bus` has to get right, being its own MQTT
client: framing (packets split across reads, several in one read), the broker's Receive
Maximum, PUBACK reason codes, keepalive, last will, TLS and credentials.

The behaviour shared with every bus is in test_bus_contract.py. Here the brokers are
private Mosquitto instances configured for the case, and a small TCP proxy between client
and broker re-chunks the bytes, counts the packets in flight or cuts the connection. The
framing cases are also fed straight into the protocol, split at every byte, so every split
point is covered whatever the kernel does with segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import mqtt5
import pytest
from structlog.testing import capture_logs

from csms.bus import BusUnavailable, Message, NoSubscribers
from csms.bus.mqtt5_bus import Mqtt5Bus, State, _Protocol
from tests.certs import make_pki
from tests.servers import ServerProcess, free_port, mosquitto_with_password
from tests.timing import timeout

pytestmark = pytest.mark.integration

WAIT = 10.0


async def receive(bus: Mqtt5Bus, seconds: float = 5.0) -> Message:
    return await asyncio.wait_for(anext(aiter(bus.messages())), timeout(seconds))


async def until(condition: Callable[[], bool], seconds: float = WAIT) -> None:
    deadline = time.monotonic() + timeout(seconds)
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout(seconds)}s")
        await asyncio.sleep(0.02)


@contextlib.contextmanager
def mosquitto(*lines: str) -> Iterator[tuple[str, ServerProcess]]:
    """A private broker with extra configuration ``lines``; yields its URL and process."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory(prefix="csms-mosquitto-mqtt5-") as tmp:
        port = free_port()
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {port} 127.0.0.1",
                    "allow_anonymous true",
                    "persistence false",
                    "set_tcp_nodelay true",
                    f"user {getpass.getuser()}",
                    *lines,
                ]
            )
            + "\n"
        )
        server = ServerProcess("mosquitto", [binary, "-c", str(conf)], port, Path(tmp))
        server.start()
        try:
            yield f"mqtt://127.0.0.1:{port}", server
        finally:
            assert server.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.process.pid, signal.SIGCONT)
            server.stop()


@contextlib.asynccontextmanager
async def connected(url: str, **options: Any) -> AsyncIterator[Mqtt5Bus]:
    options.setdefault("max_backoff", 0.3)
    async with Mqtt5Bus(url, **options) as bus:
        assert await bus.wait_connected(timeout(WAIT)), "broker unreachable"
        yield bus


def count_packets(data: bytes) -> list[mqtt5.Packet]:
    """The complete packets at the start of ``data``."""
    packets, used = [], 0
    with memoryview(data) as view:
        while used < len(data):
            try:
                packet, size = mqtt5.read(view[used:])
            except IndexError:
                break
            packets.append(packet)
            used += size
    return packets


class Proxy:
    """A TCP proxy between one client and the broker that can re-chunk what the broker
    sends (``mode``: ``"bytes"`` one write per byte, ``"hold"`` keep everything until
    :meth:`release`), watch the client's PUBLISHes against the broker's PUBACKs, and cut
    every connection without a DISCONNECT."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.mode = "pass"
        self.held = bytearray()
        self.in_flight = 0
        self.max_in_flight = 0
        self._up = bytearray()
        self._down = bytearray()
        self._writers: list[asyncio.StreamWriter] = []
        self._client_writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Drop every connection at once, as a dead network would."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def release(self) -> None:
        """Send everything held to the client in one write."""
        if self._client_writer is not None and self.held:
            self._client_writer.write(bytes(self.held))
        self.held.clear()

    def _track(self, buffer: bytearray, data: bytes, upstream: bool) -> None:
        buffer += data
        while True:
            try:
                packet, size = mqtt5.read(memoryview(bytes(buffer)))
            except IndexError:
                return
            del buffer[:size]
            if upstream and isinstance(packet, mqtt5.PublishPacket):
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            elif not upstream and isinstance(packet, mqtt5.PubAckPacket):
                self.in_flight -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        self._writers += [writer, broker_writer]
        self._client_writer = writer

        async def up() -> None:
            while data := await reader.read(65536):
                self._track(self._up, data, upstream=True)
                broker_writer.write(data)

        async def down() -> None:
            while data := await broker_reader.read(65536):
                self._track(self._down, data, upstream=False)
                if self.mode == "hold":
                    self.held += data
                elif self.mode == "bytes":
                    for index in range(len(data)):
                        writer.write(data[index : index + 1])
                        await writer.drain()
                        await asyncio.sleep(0)
                else:
                    writer.write(data)

        # Cancelled when the test's loop ends: nothing to report then.
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await asyncio.gather(up(), down())
        writer.transport.abort()
        broker_writer.transport.abort()


@pytest.fixture
def broker() -> Iterator[tuple[str, ServerProcess]]:
    # No limit on messages sent and not acknowledged, so a held stream holds them all.
    with mosquitto("max_inflight_messages 0") as server:
        yield server


# --- framing ---------------------------------------------------------------------------


class _Transport(asyncio.Transport):
    """Records what the protocol writes; nothing goes anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _stream() -> bytes:
    """CONNACK then PUBLISHes of several sizes (a payload past 128 and 16,384 bytes makes
    the remaining length two and three bytes long), a PINGRESP in between."""
    packets = [mqtt5.ConnAckPacket(receive_max=10).write()]
    for index, size in enumerate([0, 5, 127, 300, 20_000]):
        packets.append(
            mqtt5.PublishPacket(
                f"t/{index}",
                bytes(range(256)) * (size // 256) + b"x" * (size % 256),
                qos=mqtt5.QoS.AT_LEAST_ONCE,
                packet_id=index + 1,
                user_properties=[("n", str(index))],
            ).write()
        )
        if index == 2:
            packets.append(mqtt5.PingRespPacket().write())
    return b"".join(packets)


async def _feed(chunks: list[bytes]) -> tuple[_Protocol, list[Message], _Transport]:
    delivered: list[Message] = []
    protocol = _Protocol(
        b"CONNECT", delivered.append, manual_ack=False, keepalive=0, timeout=5, max_inflight=100
    )
    transport = _Transport()
    protocol.connection_made(transport)
    for chunk in chunks:
        protocol.data_received(chunk)
    await asyncio.sleep(0)  # the coalesced write of the PUBACKs
    protocol.abort("test over")
    return protocol, delivered, transport


def _expected() -> list[tuple[str, bytes, dict[str, str]]]:
    return [
        (p.topic, p.payload, dict(p.user_properties))
        for p in count_packets(_stream())
        if isinstance(p, mqtt5.PublishPacket)
    ]


async def test_a_stream_split_at_any_byte_is_parsed_the_same() -> None:
    stream = _stream()
    expected = _expected()
    # Every split point of the small packets, and a stream read one byte at a time.
    small = len(stream) - len(count_packets(stream)[-1].write())
    for cut in [*range(1, small + 3), len(stream) - 1]:
        _, delivered, _ = await _feed([stream[:cut], stream[cut:]])
        assert [(m.topic, m.payload, dict(m.properties)) for m in delivered] == expected, cut
    _, delivered, transport = await _feed([stream[i : i + 1] for i in range(len(stream))])
    assert [(m.topic, m.payload, dict(m.properties)) for m in delivered] == expected
    # One write carries the five PUBACKs (after the CONNECT), in order.
    assert transport.written[0] == b"CONNECT"
    assert len(transport.written) == 2
    acks = count_packets(transport.written[1])
    assert [a.packet_id for a in acks if isinstance(a, mqtt5.PubAckPacket)] == [1, 2, 3, 4, 5]


async def test_several_packets_in_one_read_are_all_handled() -> None:
    protocol, delivered, _ = await _feed([_stream()])
    assert [(m.topic, m.payload, dict(m.properties)) for m in delivered] == _expected()
    assert protocol.state is State.CLOSED  # only because the test aborted it


async def test_a_malformed_packet_drops_the_connection() -> None:
    # 0xF0 with flags set is no MQTT packet type a broker may send.
    protocol, delivered, transport = await _feed([mqtt5.ConnAckPacket().write() + b"\xff\x00"])
    assert protocol.state is State.CLOSED and transport.closing
    assert protocol.closed.result().startswith("malformed packet")
    assert delivered == []


async def test_bytes_from_a_real_broker_one_at_a_time_and_all_at_once(
    broker: tuple[str, ServerProcess],
) -> None:
    url, server = broker
    topic = f"framing/{uuid.uuid4().hex[:6]}"
    payloads = [b"", b"a" * 200, b"b" * 20_000, *(b"%d" % i for i in range(30))]
    async with Proxy(server.port) as proxy, connected(url) as publisher:
        proxy.mode = "bytes"
        async with connected(proxy.url) as subscriber:
            await subscriber.subscribe(topic)
            for payload in payloads[:3]:
                await publisher.publish(topic, payload, properties={"k": "v"})
            for payload in payloads[:3]:
                message = await receive(subscriber)
                assert (message.payload, dict(message.properties)) == (payload, {"k": "v"})

            proxy.mode = "hold"
            await asyncio.gather(*(publisher.publish(topic, p) for p in payloads))
            await until(lambda: len(count_packets(bytes(proxy.held))) == len(payloads))
            proxy.release()  # every PUBLISH in one segment
            assert [(await receive(subscriber)).payload for _ in payloads] == payloads
            assert subscriber.connected


# --- flow control and reason codes ------------------------------------------------------


async def test_publishes_beyond_the_receive_maximum_wait_their_turn() -> None:
    with mosquitto("max_inflight_messages 2") as (url, server):
        topic = f"flow/{uuid.uuid4().hex[:6]}"
        async with (
            connected(url) as subscriber,
            Proxy(server.port) as proxy,
            connected(proxy.url) as publisher,
        ):
            await subscriber.subscribe(topic)
            payloads = [b"%d" % i for i in range(40)]
            # All 40 are published in the same loop iteration: without the Receive Maximum
            # they would all be in flight at once.
            await asyncio.gather(*(publisher.publish(topic, p) for p in payloads))
            assert proxy.max_in_flight == 2
            assert [(await receive(subscriber)).payload for _ in payloads] == payloads
            assert publisher.connected  # the broker never saw its maximum exceeded


async def test_puback_reason_codes(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite allowed/#\n")
    with mosquitto(f"acl_file {acl}") as (url, _):
        async with connected(url) as bus:
            await bus.subscribe("allowed/here")
            await bus.publish("allowed/here", b"ok")
            assert (await receive(bus)).payload == b"ok"
            # 0x10: taken, nobody receives it.
            with pytest.raises(NoSubscribers):
                await bus.publish("allowed/nobody", b"x")
            # 0x87: refused; an outage for the caller, not "nobody listens".
            with pytest.raises(BusUnavailable, match="not_authorized") as refused:
                await bus.publish("denied/x", b"x")
            assert not isinstance(refused.value, NoSubscribers)
            assert bus.connected  # a refused publish does not cost the connection
            await bus.publish("allowed/here", b"still")
            assert (await receive(bus)).payload == b"still"


# --- keepalive, will, reconnect ---------------------------------------------------------


async def test_a_broker_that_stops_answering_is_dropped_by_keepalive_and_reconnected(
    broker: tuple[str, ServerProcess],
) -> None:
    url, server = broker
    assert server.process is not None
    topic = f"keepalive/{uuid.uuid4().hex[:6]}"
    with capture_logs() as logs:
        async with connected(url, keepalive=1) as bus:
            await bus.subscribe(topic)
            session = bus.session_id
            # Frozen, the broker keeps the socket open: only keepalive can tell it is gone.
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                await until(lambda: not bus.connected)
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert await bus.wait_connected(timeout(30))
            assert bus.session_id != session
            await bus.publish(topic, b"after")  # the subscription came back with it
            assert (await receive(bus)).payload == b"after"
    lost = [entry for entry in logs if entry["event"] == "broker connection lost"]
    assert lost and "keepalive timeout" in lost[0]["error"], logs


async def test_the_will_names_the_session_and_only_a_dead_connection_sends_it(
    broker: tuple[str, ServerProcess],
) -> None:
    url, server = broker
    topic = f"will/{uuid.uuid4().hex[:6]}"

    def will(session: str) -> tuple[str, bytes]:
        return topic, session.encode()

    async with connected(url) as watcher, Proxy(server.port) as proxy:
        await watcher.subscribe(topic)
        async with connected(proxy.url, will=will) as gateway:
            session = gateway.session_id
            proxy.cut()  # no DISCONNECT: the broker publishes the will
            message = await receive(watcher)
            assert message.payload == session.encode()
            assert await gateway.wait_connected(timeout(WAIT))
            session = gateway.session_id
        # A clean exit sends DISCONNECT: no will. The marker comes first if none was sent.
        await watcher.publish(topic, b"marker")
        assert (await receive(watcher)).payload == b"marker"


async def test_publish_in_flight_when_the_connection_dies_fails_promptly(
    broker: tuple[str, ServerProcess],
) -> None:
    _, server = broker
    async with Proxy(server.port) as proxy, connected(proxy.url, publish_timeout=60) as bus:
        proxy.mode = "hold"  # the PUBACK never reaches the client
        publishing = asyncio.ensure_future(bus.publish("lost/x", b"x"))
        await until(lambda: bool(proxy.held))
        assert not publishing.done()
        proxy.cut()
        with pytest.raises(BusUnavailable, match="connection lost"):
            await asyncio.wait_for(publishing, timeout(WAIT))


# --- TLS and credentials ----------------------------------------------------------------


async def test_mqtts_verifies_the_broker_and_can_present_a_client_certificate(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    client = pki.client("csms-gateway")
    port = free_port()
    tls = [
        f"listener {port} 127.0.0.1",
        f"cafile {pki.ca.cert}",
        f"certfile {pki.server.cert}",
        f"keyfile {pki.server.key}",
        "require_certificate true",
    ]
    with mosquitto(*tls) as (_, _server):
        url = f"mqtts://localhost:{port}"
        async with connected(
            url,
            tls_ca_file=str(pki.ca.cert),
            tls_cert_file=str(client.cert),
            tls_key_file=str(client.key),
        ) as bus:
            await bus.subscribe("tls/x")
            await bus.publish("tls/x", b"secret")
            assert (await receive(bus)).payload == b"secret"
        with capture_logs() as logs:
            async with Mqtt5Bus(url, tls_ca_file=str(pki.foreign_ca.cert), max_backoff=0.2) as bad:
                assert not await bad.wait_connected(timeout(1.5))
        assert any("CERTIFICATE_VERIFY_FAILED" in str(e.get("error")) for e in logs), logs


@pytest.mark.slow
async def test_credentials_and_a_clear_error_when_the_broker_refuses_them() -> None:
    with mosquitto_with_password("csms", "broker-pass-1") as (url, _):
        async with connected(url.replace("mqtt://", "mqtt://csms:broker-pass-1@")) as bus:
            await bus.subscribe("auth/1")
            await bus.publish("auth/1", b"hello")
            assert (await receive(bus)).payload == b"hello"
        for credentials, user in (("", None), ("csms:wrong@", "csms")):
            with capture_logs() as logs:
                async with Mqtt5Bus(
                    url.replace("mqtt://", f"mqtt://{credentials}"), max_backoff=0.2
                ) as refused:
                    assert not await refused.wait_connected(timeout(1.5))
            entries = [e for e in logs if e["event"] == "broker refused the credentials"]
            assert entries and entries[0]["user"] == user, logs
            assert "not_authorized" in entries[0]["error"] or "bad_user" in entries[0]["error"]
            assert all("wrong" not in str(entry) for entry in logs)
