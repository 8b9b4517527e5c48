"""The gateway's limits against hostile clients, with real sockets on the in-process bus.

Message-rate refusals and the 1008 flood close, connections per address (429) and per
process, the handshake timeout on silent or slow TCP clients, the ping timeout on a client
that stops answering pings; and that no refusal path leaks a connection count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

import gateway.server
from csms.bus.memory import MemoryBroker
from csms.config import Settings
from csms.envelope import ConnectionEventKind, Envelope, Kind, decode_envelope
from csms.versions import OcppVersion
from gateway import Gateway
from gateway.guard import RETRY_AFTER
from gateway.pipe import FLOODING, RATE_LIMITED, Pipe
from tests.unit.test_gateway_server import V16, V201, Manager, make_settings, recv_json, station


@pytest.fixture
async def manager(broker: MemoryBroker) -> AsyncIterator[Manager]:
    async with broker.client() as bus:
        peer = Manager(bus)
        await peer.start()
        yield peer
        await peer.stop()


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@contextlib.asynccontextmanager
async def running(broker: MemoryBroker, **overrides: Any) -> AsyncIterator[Gateway]:
    """A gateway with the unit tests' settings and ``overrides``; checks for leaks on exit.

    First-try admission (loopback only): these tests are about limits, not credentials.
    """
    settings = make_settings(**overrides)
    async with broker.client() as bus, Gateway(settings, bus, first_try=True) as gw:
        yield gw
        # Sockets close first, then each connection's handler cleans up.
        await until(lambda: gw.guard.open_sockets == 0 and not gw.connections)
        assert gw.guard.addresses.total == 0


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for ``condition``; ``within`` only keeps a broken test from hanging."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 (polls counters; there is no event to await)
            await asyncio.sleep(0.01)


async def drain(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


def logged(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


# -- message rate -------------------------------------------------------------------------------


async def test_rate_limit_answers_generic_error_then_flood_closes_1008(
    broker: MemoryBroker, manager: Manager
) -> None:
    limits = {
        "message_rate": 20,
        "message_burst": 5,
        "flood_close_after": 0.5,
        "answer_timeout": 30,
    }
    with capture_logs() as logs:
        async with running(broker, **limits) as gw, station(gw, manager, "FLOOD", V16) as ws:
            answers: list[list[Any]] = []

            async def read() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for frame in ws:
                        answers.append(json.loads(frame))

            reader = asyncio.create_task(read())
            loop = asyncio.get_running_loop()
            started, sent = loop.time(), 0
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(10):
                    while True:
                        await ws.send(f'[2,"f{sent}","Heartbeat",{{}}]')
                        sent += 1
                        await asyncio.sleep(0.002)
            elapsed = loop.time() - started
            await reader
            assert ws.close_code == 1008
            assert ws.close_reason == FLOODING
            event = await manager.event(ConnectionEventKind.DISCONNECTED, "FLOOD")
            assert event.reason is not None and "1008" in event.reason

    refused = [a for a in answers if a[:4] == [4, a[1], "GenericError", RATE_LIMITED]]
    assert refused and refused[0][4]["ratePerSecond"] == 20
    published = [m for m in manager.received if m.topic == "cs/in/ocpp1.6/FLOOD"]
    # Only the burst and the refill reached the bus, far fewer than were sent.
    assert len(published) <= 5 + 20 * elapsed + 1 < sent
    warnings = [e for e in logs if e["log_level"] == "warning" and e.get("station") == "FLOOD"]
    assert [e["event"] for e in warnings] == [
        "station over the message rate limit",
        "station flooding: disconnecting",
    ]
    assert all(e["remote"].startswith("127.0.0.1:") for e in warnings)


async def test_station_answer_is_not_lost_while_over_the_rate(
    broker: MemoryBroker, manager: Manager
) -> None:
    async with (
        running(broker, message_rate=1, message_burst=2, flood_close_after=None) as gw,
        station(gw, manager) as ws,
    ):
        await manager.call("m1")
        assert (await recv_json(ws))[1] == "m1"
        for n in range(3):
            await ws.send(f'[2,"s{n}","Heartbeat",{{}}]')
        assert (await recv_json(ws))[:3] == [4, "s2", "GenericError"]
        await ws.send('[3,"m1",{"status":"Accepted"}]')
        _, env = await manager.envelope(Kind.RESULT)
        assert env.message_id == "m1" and env.payload == {"status": "Accepted"}


async def test_flooding_station_does_not_slow_down_others(
    broker: MemoryBroker, manager: Manager
) -> None:
    async with (
        running(broker, message_rate=5, message_burst=5, flood_close_after=None) as gw,
        station(gw, manager, "BAD") as bad,
        station(gw, manager, "GOOD") as good,
    ):
        # BAD reads its answers: one that does not is held back by TCP flow control alone.
        draining = asyncio.create_task(drain(bad))
        for n in range(300):
            await bad.send(f'[2,"b{n}","Heartbeat",{{}}]')
        for n in range(3):
            await good.send(f'[2,"g{n}","Heartbeat",{{}}]')
            await manager.envelope(Kind.CALL, "GOOD")
            await manager.answer(f"g{n}", {"currentTime": "t"}, station="GOOD")
            assert await recv_json(good) == [3, f"g{n}", {"currentTime": "t"}]
        assert "BAD" in gw.connections  # no flood close configured
        draining.cancel()


# -- hostile frames -----------------------------------------------------------------------------


def inbound(manager: Manager, station_id: str = "CP-1") -> list[Any]:
    """Envelopes the gateway published for the station so far (left in the record)."""
    return [
        decode_envelope(m.payload)
        for m in manager.received
        if "/events/" not in m.topic and decode_envelope(m.payload).station == station_id
    ]


def deep_call(message_id: str, depth: int) -> str:
    return f'[2,"{message_id}","DataTransfer",{{"data":' + "[" * depth + "]" * depth + "}]"


async def test_deeply_nested_frames_are_answered_and_the_socket_keeps_working(
    broker: MemoryBroker, manager: Manager
) -> None:
    with capture_logs() as logs:
        async with (
            running(broker, max_frame_bytes=256 * 1024, message_rate=None) as gw,
            station(gw, manager) as ws,
        ):
            for message_id, depth in (("d990", 990), ("d100k", 100_000)):
                await ws.send(deep_call(message_id, depth))
                answer = await recv_json(ws)
                assert answer[:3] == [4, message_id, "FormatViolation"]
                assert "nest" in answer[3]
            for n in range(200):
                await ws.send(deep_call(f"d{n}", 990))
            for n in range(200):
                assert (await recv_json(ws))[:3] == [4, f"d{n}", "FormatViolation"]
            await ws.send('[2,"ok","Heartbeat",{}]')
            _, env = await manager.envelope(Kind.CALL)
            assert env.message_id == "ok"
            assert [e.message_id for e in inbound(manager)] == []  # no deep frame published
    assert not logged(logs, "frame handling failed")
    # 202 refusals, a handful of lines.
    assert 1 <= len(logged(logs, "malformed frame rejected")) <= 3


async def test_unexpected_frame_handling_errors_are_logged_throttled(
    broker: MemoryBroker, manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = Pipe.receive_station_frame

    def fragile(self: Pipe, data: str | bytes, now: float) -> list[Any]:
        if "boom" in str(data):
            raise RuntimeError("pipe bug")
        return handle(self, data, now)

    monkeypatch.setattr(Pipe, "receive_station_frame", fragile)
    with capture_logs() as logs:
        async with running(broker, message_rate=None) as gw, station(gw, manager) as ws:
            for n in range(50):
                await ws.send(f'[2,"boom{n}","Heartbeat",{{}}]')
            await ws.send('[2,"ok","Heartbeat",{}]')
            _, env = await manager.envelope(Kind.CALL)
            assert env.message_id == "ok"  # the socket still works
    failures = logged(logs, "frame handling failed")
    assert 1 <= len(failures) <= 2
    assert failures[0]["exc_info"] and failures[0]["error"] == "RuntimeError"
    [summary] = logged(logs, "similar log lines suppressed")
    assert summary["count"] + len(failures) >= 50


async def test_resends_of_a_pending_call_are_published_once(
    broker: MemoryBroker, manager: Manager
) -> None:
    with capture_logs() as logs:
        async with (
            running(broker, message_rate=None, answer_timeout=60) as gw,
            station(gw, manager) as ws,
        ):
            for _ in range(10_000):
                await ws.send('[2,"s1","Heartbeat",{}]')
            await ws.send('[2,"probe","Heartbeat",{}]')
            await manager.expect(lambda m: decode_envelope(m.payload).message_id == "probe", 10)
            assert [e.message_id for e in inbound(manager)] == ["s1"]
            # Exactly one answer for s1: the next frame after it is the probe's.
            await manager.answer("s1", {"currentTime": "t1"})
            await manager.answer("probe", {"currentTime": "t2"})
            assert await recv_json(ws) == [3, "s1", {"currentTime": "t1"}]
            assert await recv_json(ws) == [3, "probe", {"currentTime": "t2"}]
            # Answered: the id is free again, and a new Call with it reaches the CSMS.
            await ws.send('[2,"s1","Heartbeat",{}]')
            await manager.expect(lambda m: decode_envelope(m.payload).message_id == "s1")
    assert 1 <= len(logged(logs, "station repeated a pending call")) <= 3


async def test_published_properties_hold_only_text_mqtt_accepts(
    broker: MemoryBroker, manager: Manager
) -> None:
    async with running(broker) as gw, station(gw, manager, "CP %é/1") as ws:
        await ws.send('[2,"id \u00e9%","Heartbeat",{}]')
        message, env = await manager.envelope(Kind.CALL, "CP %é/1")
        assert env.message_id == "id é%"  # the envelope carries the exact text
        assert message.properties["message_id"] == "id%20%C3%A9%25"
        assert message.properties["station"] == "CP%20%25%C3%A9/1"
        # An originator's meta is text the gateway did not check either.
        await manager.send(
            Envelope(
                kind=Kind.CALL,
                station="CP %é/1",
                version=OcppVersion.OCPP201,
                message_id="m1",
                action="Reset",
                payload={"type": "Immediate"},
                meta={"origin": "api", "note\x00": "a\x01b\uffff"},
            )
        )
        assert (await recv_json(ws))[1] == "m1"
        await ws.send('[3,"m1",{"status":"Accepted"}]')
        message, env = await manager.envelope(Kind.RESULT, "CP %é/1")
        assert env.meta == {"origin": "api", "note\x00": "a\x01b\uffff"}
        assert message.properties["origin"] == "api"
        assert message.properties["note%00"] == "a%01b%EF%BF%BF"
        for key, value in message.properties.items():
            assert key.isascii() and key.isprintable()
            assert value.isascii() and value.isprintable()


# -- connections per address and per process ----------------------------------------------------


async def test_too_many_connections_from_one_address_get_429(
    broker: MemoryBroker, manager: Manager
) -> None:
    with capture_logs() as logs:
        async with running(broker, max_connections_per_address=2) as gw:
            async with station(gw, manager, "CP-1"), station(gw, manager, "CP-2"):
                assert gw.guard.addresses.count("127.0.0.1") == 2
                with pytest.raises(InvalidStatus) as caught:
                    async with connect(gw.url_for("CP-3"), subprotocols=[V201]):
                        pass
                response = caught.value.response
                assert response.status_code == 429
                assert response.headers["Retry-After"] == str(RETRY_AFTER)
                assert "CP-3" not in gw.connections
            # Counts go back down when sockets close, so the address may connect again.
            await until(lambda: gw.guard.addresses.total == 0)
            async with station(gw, manager, "CP-3"):
                pass
    [refusal] = logged(logs, "connection refused: too many connections from one address")
    assert refusal["log_level"] == "warning"
    assert (refusal["station"], refusal["address"], refusal["limit"]) == ("CP-3", "127.0.0.1", 2)


async def test_refused_and_abandoned_handshakes_release_their_counts(
    broker: MemoryBroker, manager: Manager
) -> None:
    async with running(broker, max_connections_per_address=1, handshake_timeout=0.3) as gw:
        for _ in range(3):
            with pytest.raises(InvalidStatus):  # refused after the address was counted
                async with connect(f"ws://127.0.0.1:{gw.port}/elsewhere", subprotocols=[V201]):
                    pass
            with pytest.raises(InvalidStatus):
                async with connect(gw.url_for("CP-1"), subprotocols=None):
                    pass
            # A complete request, then gone before reading the answer.
            _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(upgrade_request("/ocpp/CP-1"))
            await writer.drain()
            writer.transport.abort()
        # A silent socket times out without having been counted.
        _, silent = await asyncio.open_connection("127.0.0.1", gw.port)
        await until(lambda: gw.guard.open_sockets == 0 and gw.guard.addresses.total == 0)
        silent.close()
        async with station(gw, manager):  # the one allowed connection is free
            pass


async def test_max_connections_drops_sockets_beyond_the_cap(
    broker: MemoryBroker, manager: Manager
) -> None:
    with capture_logs() as logs:
        async with running(broker, max_connections=2) as gw:
            idle = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(2)]
            await until(lambda: gw.guard.open_sockets == 2)
            with pytest.raises((InvalidHandshake, OSError)):
                async with connect(gw.url_for("CP-1"), subprotocols=[V201], open_timeout=2):
                    pass
            for _, writer in idle:
                writer.close()
            await until(lambda: gw.guard.open_sockets == 0)
            async with station(gw, manager):
                assert gw.guard.open_sockets == 1
    assert logged(logs, "connection dropped: gateway at max_connections")


# -- handshake and ping timeouts ----------------------------------------------------------------


def upgrade_request(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ocpp2.0.1\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("sends", ["nothing", "half a request, slowly"])
async def test_handshake_timeout_closes_silent_tcp_client(broker: MemoryBroker, sends: str) -> None:
    with capture_logs() as logs:
        async with running(broker, handshake_timeout=0.3) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            await until(lambda: gw.guard.open_sockets == 1)

            async def trickle() -> None:
                if sends == "nothing":
                    return
                writer.write(b"GET /ocpp/CP-1 HTTP/1.1\r\n")
                with contextlib.suppress(ConnectionError):
                    for n in range(100):
                        await asyncio.sleep(0.05)
                        writer.write(f"X-Slow-{n}: 1\r\n".encode())

            dripping = asyncio.create_task(trickle())
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            dripping.cancel()
            writer.close()
    [entry] = logged(logs, "handshake timed out: connection closed")
    assert entry["log_level"] == "warning"
    assert entry["remote"].startswith("127.0.0.1:")
    assert (entry["request_received"], entry["handshake_timeout"]) == (False, 0.3)


async def test_ping_timeout_closes_client_that_stops_answering(
    broker: MemoryBroker, manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The closing handshake cannot complete either; keep its wait short for the test.
    monkeypatch.setattr(gateway.server, "CLOSE_TIMEOUT", 0.3)
    with capture_logs() as logs:
        async with running(broker, ping_interval=0.2, ping_timeout=0.2) as gw:
            ws: ClientConnection
            async with station(gw, manager) as ws:
                await asyncio.sleep(0.5)  # pings answered: still connected
                assert "CP-1" in gw.connections
                ws.transport.pause_reading()  # alive at TCP level, deaf to pings
                event = await manager.event(ConnectionEventKind.DISCONNECTED)
                assert "CP-1" not in gw.connections
                ws.transport.abort()
    assert event.reason is not None and "1006" in event.reason
    [entry] = logged(logs, "station stopped answering pings: disconnected")
    assert (entry["station"], entry["ping_timeout"]) == ("CP-1", 0.2)
    assert entry["remote"].startswith("127.0.0.1:")


def test_settings_reach_websockets() -> None:
    settings = Settings(handshake_timeout=7, max_connections=5, max_connections_per_address=3)
    gw = Gateway(settings, MemoryBroker().client())
    assert (gw.guard.handshake_timeout, gw.guard.max_connections) == (7, 5)
    assert gw.guard.addresses.limit == 3
