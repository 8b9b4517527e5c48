"""Hostile input against a running CSMS: the gateway keeps serving and its memory stays bounded.

The embedded CSMS (:func:`cli.processes.embedded`: gateway + manager on the in-process bus) runs
on an event loop in a background thread for the whole test. Hypothesis drives rounds of
attacks at it (random text and binary frames, random JSON arrays, OCPP-shaped frames with
random contents, frames far over the size limit, floods that read their answers and floods
that do not, half-open TCP connections, upgraded sockets that go deaf, clients vanishing
mid-call) while a well-behaved station sends a Heartbeat every round and must get every
answer. Afterwards the gateway must hold no connection but the good station's, and the
memory allocated by the transport side (gateway, websockets, asyncio) must be back near
where it was after a warm-up round.

Deterministic for CI: fixed ``max_examples``, ``derandomize=True``, no example database.
Nothing here asserts on wall-clock time; timeouts only keep a broken run from hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import threading
import tracemalloc
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import Any, TypeVar

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

import gateway.server
from cli.processes import Embedded, embedded
from csms.bus.memory import MemoryBus
from csms.config import Settings
from csms.versions import OcppVersion
from gateway import Gateway

_T = TypeVar("_T")

MAX_FRAME = 4096
SETTINGS = {
    "listen_port": 0,
    "max_frame_bytes": MAX_FRAME,
    "message_rate": 50.0,
    "message_burst": 20,
    "flood_close_after": 0.3,
    "handshake_timeout": 0.5,
    "ping_interval": 0.5,
    "ping_timeout": 0.5,
    "answer_timeout": 5.0,
    "log_level": "warning",
}
EXAMPLES = 40
GOOD = "GOOD-STATION"
TRANSPORT_FILES = ("*/gateway/*", "*/websockets/*", "*/asyncio/*", "*/csms/bus/*")
EXPECTED = (ConnectionClosed, InvalidHandshake, OSError, TimeoutError, EOFError)
"""What a hostile client may run into; anything else fails the round."""

# -- strategies -------------------------------------------------------------------------------

FORBIDDEN_IN_MQTT = [
    *map(chr, range(0x20)),
    *map(chr, range(0x7F, 0xA0)),
    *map(chr, range(0xFDD0, 0xFDF0)),
    *(chr(plane << 16 | low) for plane in range(17) for low in (0xFFFE, 0xFFFF)),
]
"""Code points MQTT v5 strings must not hold (a broker drops a client sending one)."""
hostile_chars = st.characters() | st.sampled_from(FORBIDDEN_IN_MQTT)
hostile_text = st.text(hostile_chars, max_size=40)
action_names = st.sampled_from(
    [
        "Heartbeat",
        "BootNotification",
        "StatusNotification",
        "Authorize",
        "TransactionEvent",
        "MeterValues",
        "DataTransfer",
        "NoSuchAction",
        "",
    ]
)
actions = (
    action_names
    | st.text(hostile_chars, min_size=1, max_size=12)
    | st.tuples(action_names, st.sampled_from(FORBIDDEN_IN_MQTT)).map("".join)
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ocpp_shaped = st.tuples(
    st.sampled_from([2, 3, 4, 5, "2", -1, 2.0]),
    hostile_text | st.sampled_from(["", "-1", "x" * 37]),
    actions,
    json_values,
).map(lambda parts: json.dumps(list(parts)))
# Calls the gateway publishes unless their id or action is unusable.
ocpp_calls = st.tuples(
    st.just(2), hostile_text, actions, st.dictionaries(st.text(max_size=4), st.none())
).map(lambda parts: json.dumps(list(parts)))
# Answers too: one with an unusable id must be dropped, never published.
ocpp_answers = st.tuples(
    st.sampled_from([3, 4]), hostile_text, st.dictionaries(st.text(max_size=4), st.none())
).map(
    lambda parts: json.dumps(
        [parts[0], parts[1], parts[2]]
        if parts[0] == 3
        else [parts[0], parts[1], "GenericError", "", parts[2]]
    )
)
huge = st.integers(MAX_FRAME + 1, 5 * MAX_FRAME).map(
    lambda size: '[2,"huge","DataTransfer",{"data":"' + "x" * size + '"}]'
)
deep = st.tuples(st.integers(20, 2000), st.sampled_from("[{")).map(
    lambda spec: (
        '[2,"deep","DataTransfer",{"d":'
        + (spec[1] if spec[1] == "[" else '{"a":') * spec[0]
        + (("]" if spec[1] == "[" else "}") * spec[0])
        + "}]"
    )
)
frames = st.one_of(
    st.text(hostile_chars, max_size=300),
    st.binary(max_size=300),
    st.lists(json_values, max_size=6).map(json.dumps),
    ocpp_shaped,
    ocpp_calls,
    ocpp_answers,
    huge,
    deep,
)
station_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9\-_.]{1,24}", fullmatch=True),
    st.text(min_size=1, max_size=60),
).filter(lambda sid: sid != GOOD)
versions = st.sampled_from([Subprotocol(OcppVersion.OCPP201), Subprotocol(OcppVersion.OCPP16)])


@dataclass(frozen=True)
class Frames:
    station: str
    version: Subprotocol
    frames: list[str | bytes]


@dataclass(frozen=True)
class Flood:
    station: str
    version: Subprotocol
    frame: str | bytes
    reads: bool


@dataclass(frozen=True)
class HalfOpen:
    sends: str  # "nothing", "partial request", "request then silence", "upgrade then deaf"


@dataclass(frozen=True)
class Vanish:
    station: str
    version: Subprotocol


Attack = Frames | Flood | HalfOpen | Vanish

attacks = st.one_of(
    st.builds(Frames, station_ids, versions, st.lists(frames, min_size=1, max_size=12)),
    st.builds(Flood, station_ids, versions, frames, st.booleans()),
    st.builds(
        HalfOpen,
        st.sampled_from(
            ["nothing", "partial request", "request then silence", "upgrade then deaf"]
        ),
    ),
    st.builds(Vanish, station_ids, versions),
)

# -- the CSMS under attack ----------------------------------------------------------------------


class Arena:
    """The embedded CSMS on a loop in a background thread, and one well-behaved station."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self._ids = count()
        self._idle_sockets: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._deaf: list[ClientConnection] = []
        self.csms: Embedded
        self.gateway: Gateway
        self.good: ClientConnection
        self.frames_sent = 0
        self.attacks: Counter[str] = Counter()
        self.good_answers = 0
        self.properties = PublishedProperties()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float = 60) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self.run(self._open())

    def stop(self) -> None:
        try:
            self.run(self._stack.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    async def _open(self) -> None:
        self.csms = await self._stack.enter_async_context(embedded(Settings(**SETTINGS), api=False))
        self.gateway = self.csms.gateway
        self.good = await self._stack.enter_async_context(
            connect(
                self.gateway.url_for(GOOD),
                subprotocols=[Subprotocol(OcppVersion.OCPP201)],
                ping_interval=None,
            )
        )
        boot = {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}
        answer = await self._good_call("BootNotification", boot)
        assert answer["status"] == "Accepted", answer

    async def _good_call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        message_id = f"good-{next(self._ids)}"
        await self.good.send(json.dumps([2, message_id, action, payload]))
        async with asyncio.timeout(20):  # a hang guard, not a performance assertion
            while True:
                frame = json.loads(await self.good.recv())
                if frame[0] == 2:  # a CSMS call: accept it and keep waiting
                    await self.good.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
                elif frame[1] == message_id:
                    assert frame[0] == 3, f"good station got {frame}"
                    self.good_answers += 1
                    result: dict[str, Any] = frame[2]
                    return result

    async def round(self, batch: list[Attack]) -> None:
        """Run ``batch`` at once; the good station's Heartbeat must be answered meanwhile."""

        async def heartbeat() -> None:
            await asyncio.sleep(0.01)
            assert "currentTime" in await self._good_call("Heartbeat", {})

        await asyncio.gather(heartbeat(), *(self._attack(item) for item in batch))

    async def settle(self) -> None:
        """Wait until the gateway holds only the good station and the manager has caught up.

        Half-open and deaf sockets are left to the gateway's handshake and ping timeouts. A
        flood leaves messages on the in-process bus for the manager to work through; until it
        has, they are memory in use, not memory leaked.
        """
        guard = self.gateway.guard

        def only_good_left() -> bool:
            return (
                guard.open_sockets == 1
                and guard.addresses.total == 1
                and list(self.gateway.connections) == [GOOD]
            )

        async with asyncio.timeout(30):
            while not only_good_left():  # noqa: ASYNC110 (polls counters; no event to await)
                await asyncio.sleep(0.05)
        broker = self.csms.broker
        assert broker is not None
        async with asyncio.timeout(60):
            while broker.backlog or self.csms.manager.pending:  # noqa: ASYNC110 (counters)
                await asyncio.sleep(0.05)
            await self.csms.manager.idle()
        for reader, writer in self._idle_sockets:
            with contextlib.suppress(ConnectionError):
                assert await reader.read() == b"", "the gateway closed the half-open socket"
            writer.close()
        for ws in self._deaf:
            ws.transport.abort()
        self._idle_sockets.clear()
        self._deaf.clear()

    # -- attacks ------------------------------------------------------------------------------

    async def _attack(self, attack: Attack) -> None:
        self.attacks[getattr(attack, "sends", type(attack).__name__)] += 1
        with contextlib.suppress(*EXPECTED):
            async with asyncio.timeout(5):
                if isinstance(attack, Frames):
                    await self._frames(attack)
                elif isinstance(attack, Flood):
                    await self._flood(attack)
                elif isinstance(attack, HalfOpen):
                    await self._half_open(attack)
                else:
                    await self._vanish(attack)

    def _connect(self, station: str, version: Subprotocol) -> Any:
        return connect(
            self.gateway.url_for(station),
            subprotocols=[version],
            ping_interval=None,
            close_timeout=0.5,
            max_size=None,
        )

    async def _frames(self, attack: Frames) -> None:
        async with self._connect(attack.station, attack.version) as ws:
            for frame in attack.frames:
                await ws.send(frame)
                self.frames_sent += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    async for _ in ws:
                        pass

    async def _flood(self, attack: Flood) -> None:
        ws = await self._connect(attack.station, attack.version)
        if not attack.reads:
            # Never reads its answers: TCP flow control stalls it, and since it cannot answer
            # pings either, the gateway's ping timeout has to close it.
            ws.transport.pause_reading()
            self._deaf.append(ws)
        draining = asyncio.create_task(_drain(ws)) if attack.reads else None
        try:
            async with asyncio.timeout(1.0 if attack.reads else 0.5):
                while True:  # until the gateway closes the socket (1008) or time is up
                    await ws.send(attack.frame)
                    self.frames_sent += 1
                    await asyncio.sleep(0)
        finally:
            if draining is not None:
                draining.cancel()
                ws.transport.abort()

    async def _half_open(self, attack: HalfOpen) -> None:
        if attack.sends == "upgrade then deaf":
            ws = await self._connect(f"deaf-{next(self._ids)}", Subprotocol(OcppVersion.OCPP201))
            ws.transport.pause_reading()
            self._deaf.append(ws)
            return
        reader, writer = await asyncio.open_connection("127.0.0.1", self.gateway.port)
        self._idle_sockets.append((reader, writer))
        request = (
            f"GET /ocpp/half-{next(self._ids)} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ocpp2.0.1\r\n"
        )
        if attack.sends == "partial request":
            writer.write(request.encode()[:40])
        elif attack.sends == "request then silence":
            writer.write(request.encode())  # headers never end: no blank line
        await writer.drain()

    async def _vanish(self, attack: Vanish) -> None:
        ws = await self._connect(attack.station, attack.version)
        await ws.send('[2,"v1","Heartbeat",{}]')
        self.frames_sent += 1
        ws.transport.abort()


async def _drain(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class LogCounts:
    per_connection: Counter[int]
    """Lines per connection (keyed by the hash of its id, so the counter holds none of the
    gateway's strings alive and the memory measurement stays fair); key 0: the process."""
    events: Counter[str]


@contextlib.contextmanager
def counted_logs() -> Iterator[LogCounts]:
    """Count log lines per connection (or "process") and per event instead of writing them."""
    counts = LogCounts(Counter(), Counter())

    def count_line(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        connection = event.get("connection")
        counts.per_connection[hash(connection) if connection else 0] += 1
        counts.events[str(event.get("event"))] += 1
        raise structlog.DropEvent

    processors = structlog.get_config()["processors"]
    previous = list(processors)
    processors.clear()
    processors.append(count_line)
    try:
        yield counts
    finally:
        processors.clear()
        processors.extend(previous)


def transport_bytes() -> tuple[int, int]:
    """Traced bytes held by the transport side, and by the whole process."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    transport = snapshot.filter_traces(
        [tracemalloc.Filter(True, pattern) for pattern in TRANSPORT_FILES]
    )
    return (
        sum(stat.size for stat in transport.statistics("filename")),
        sum(stat.size for stat in snapshot.statistics("filename")),
    )


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


BREACHES = (
    "station over the message rate limit",
    "station flooding: disconnecting",
    "handshake timed out: connection closed",
    "station stopped answering pings: disconnected",
)

# -- the test -----------------------------------------------------------------------------------


def mqtt_refuses(text: str) -> bool:
    """Whether an MQTT v5 broker refuses ``text`` as a UTF-8 string (as Mosquitto checks)."""
    for char in text:
        point = ord(char)
        if (
            point < 0x20
            or 0x7F <= point < 0xA0
            or 0xD800 <= point < 0xE000
            or 0xFDD0 <= point < 0xFDF0
            or point & 0xFFFE == 0xFFFE
        ):
            return True
    return False


@dataclass
class PublishedProperties:
    checked: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    """Properties a real broker would have dropped the connection for."""


def check_properties(monkeypatch: pytest.MonkeyPatch) -> PublishedProperties:
    """Check the MQTT user properties of every publish on the in-process bus."""
    seen = PublishedProperties()
    publish = MemoryBus.publish

    async def checked(
        self: MemoryBus, topic: str, payload: bytes, *, properties: Any = None
    ) -> None:
        for key, value in (properties or {}).items():
            seen.checked += 1
            if mqtt_refuses(key) or mqtt_refuses(value):
                seen.refused.append((key, value))
        if mqtt_refuses(topic):
            seen.refused.append(("topic", topic))
        await publish(self, topic, payload, properties=properties)

    monkeypatch.setattr(MemoryBus, "publish", checked)
    return seen


@pytest.fixture
def arena(monkeypatch: pytest.MonkeyPatch) -> Iterator[Arena]:
    # Sockets that stop reading cannot complete a closing handshake; do not wait 5 s for it.
    monkeypatch.setattr(gateway.server, "CLOSE_TIMEOUT", 0.5)
    arena = Arena()
    arena.properties = check_properties(monkeypatch)
    arena.start()
    try:
        yield arena
    finally:
        arena.stop()


WARM_UP: list[Attack] = [
    Frames(
        "warm-1",
        Subprotocol(OcppVersion.OCPP201),
        ["garbage", b"\x00", "[]", '[2,"a","Heartbeat",{}]'],
    ),
    Frames(
        "warm-2",
        Subprotocol(OcppVersion.OCPP16),
        ['[2,"h","DataTransfer",{"d":"' + "x" * 9000 + '"}]'],
    ),
    Frames(
        "warm-6",
        Subprotocol(OcppVersion.OCPP201),
        [
            '[2,"w\\u0001","Heartbeat",{}]',
            '[2,"w6","Heart\\u0000beat",{}]',
            '[2,"w\\uffff","Heartbeat",{}]',
            '[3,"w\\u0002",{}]',
            '[2,"w7","DataTransfer",{"d":' + "[" * 990 + "]" * 990 + "}]",
        ],
    ),
    Flood("warm-3", Subprotocol(OcppVersion.OCPP201), '[2,"f","Heartbeat",{}]', True),
    Flood("warm-4", Subprotocol(OcppVersion.OCPP16), "junk", False),
    HalfOpen("nothing"),
    HalfOpen("upgrade then deaf"),
    Vanish("warm-5", Subprotocol(OcppVersion.OCPP201)),
]


# websockets draws keepalive ping payloads from ``random`` on the background loop while
# Hypothesis generates examples; that does not make the examples any less deterministic.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_gateway_survives_hostile_clients_with_bounded_memory(arena: Arena) -> None:
    rounds = 0

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(attacks, min_size=1, max_size=3))
    def one_round(batch: list[Attack]) -> None:
        nonlocal rounds
        rounds += 1
        arena.run(arena.round(batch))

    tracemalloc.start()
    try:
        with counted_logs() as logs:
            arena.run(arena.round(WARM_UP))
            arena.run(arena.settle())
            transport_before, total_before = transport_bytes()
            rss_before = rss_bytes()
            one_round()
            arena.run(arena.settle())
            transport_after, total_after = transport_bytes()
            rss_after = rss_bytes()
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    # Every Heartbeat of the good station was answered (a missing one fails its round).
    assert arena.good_answers == 1 + 1 + rounds  # boot, warm-up, one per round
    assert rounds == EXAMPLES
    # No connection leaked: settle() waited for exactly the good station to be left.
    assert list(arena.gateway.connections) == [GOOD]
    # Bounded memory: what the transport side holds is back to its warmed-up level.
    growth = transport_after - transport_before
    print(
        f"\nfuzz: {rounds} rounds, attacks {dict(arena.attacks)}, {arena.frames_sent} hostile "
        f"frames; transport heap "
        f"{transport_before / 1024:.0f} KiB -> {transport_after / 1024:.0f} KiB; traced total "
        f"{total_before / 2**20:.1f} -> {total_after / 2**20:.1f} MiB (peak "
        f"{peak / 2**20:.1f} MiB); RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB; "
        f"log lines {sum(logs.events.values())}, most for one connection "
        f"{max((n for k, n in logs.per_connection.items() if k), default=0)}; "
        f"limit breaches {[(e, logs.events[e]) for e in BREACHES]}"
    )
    assert growth < 128 * 1024, f"transport heap grew by {growth} bytes"
    assert total_after - total_before < 64 * 2**20
    # The attackers run in this process: at their peak their own buffers (a flooder that
    # never reads holds what it could not send) are traced too, and the allocator may keep
    # those pages. Beyond that peak nothing untraced (C-level buffers) may grow.
    assert rss_after - rss_before < peak + 128 * 2**20
    # Each kind of breach happened (at least in the warm-up) and was logged ...
    assert all(logs.events[event] for event in BREACHES), logs.events
    # ... but a flood of bad frames on one connection makes a handful of lines, not one each.
    per_connection = [n for key, n in logs.per_connection.items() if key]
    assert max(per_connection) <= 25, logs.per_connection.most_common(3)
    # Nothing was published that would have made a real broker drop the gateway.
    assert arena.properties.checked
    assert arena.properties.refused == [], arena.properties.refused[:5]
    # No frame made the gateway fail unexpectedly.
    assert not logs.events["frame handling failed"]
