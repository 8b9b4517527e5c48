"""A gateway Connection's lanes and its one timer, on the in-process bus with a recording socket.

The timer moves only when a deadline comes earlier; each deadline is still applied exactly
once, when it is reached. Work on an idle lane runs at once; work behind a waiting step keeps
its order. Waits are bounded by ``tests.timing.timeout``: they keep a broken run from hanging.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from csms.bus import Message
from csms.bus.memory import MemoryBroker, MemoryBus
from csms.config import Settings
from csms.envelope import Envelope, Kind, decode_envelope
from csms.topics import Topics
from csms.versions import OcppVersion
from gateway.connection import Connection
from gateway.guard import Guard
from gateway.metrics import GatewayMetrics
from gateway.pipe import CSMS_LATE, Limits, Pipe
from tests.timing import timeout

TOPICS = Topics()
STATION = "CP1"
VERSION = OcppVersion.OCPP201
WAIT = 5.0


class Socket:
    """Stands in for the station's WebSocket: records each frame with the loop time it was
    written at; ``hold`` makes writes wait until it is set."""

    remote_address = ("127.0.0.1", 40000)
    ping_interval = None
    ping_timeout = None

    def __init__(self) -> None:
        self.sent: list[tuple[float, list[Any]]] = []
        self.hold: asyncio.Event | None = None
        self.arrived = asyncio.Event()
        self.protocol = SimpleNamespace(close_sent=None)

    async def send(self, text: str) -> None:
        if self.hold is not None:
            await self.hold.wait()
        self.sent.append((asyncio.get_running_loop().time(), json.loads(text)))
        self.arrived.set()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        return None

    async def frames(self, count: int) -> list[list[Any]]:
        """Wait until ``count`` frames were written; all frames written so far."""
        async with asyncio.timeout(timeout(WAIT)):
            while len(self.sent) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return [frame for _, frame in self.sent]


class Setup:
    def __init__(self, connection: Connection, socket: Socket, managers: MemoryBus) -> None:
        self.connection = connection
        self.socket = socket
        self.managers = managers

    def published(self) -> list[Envelope]:
        """What reached the managers' side of the bus so far (without waiting)."""
        found: list[Message] = []
        while not self.managers._queue.empty():
            found.append(self.managers._queue.get_nowait())
        return [decode_envelope(message.payload) for message in found]

    def call(self, message_id: str) -> None:
        self.connection.feed_frame(json.dumps([2, message_id, "Heartbeat", {}]))

    def answer(self, message_id: str) -> None:
        self.connection.feed_envelope(
            Envelope(
                kind=Kind.RESULT,
                station=STATION,
                version=VERSION,
                message_id=message_id,
                action="Heartbeat",
                payload={"currentTime": "2026-01-01T00:00:00.000Z"},
            )
        )


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    broker = MemoryBroker()
    async with broker.client() as gateway_bus, broker.client() as managers:
        await managers.subscribe(f"{TOPICS.prefix}/in/#")
        log = structlog.get_logger("test")
        metrics = GatewayMetrics(stations={}, bus=gateway_bus, guard=Guard(Settings(), log))
        socket = Socket()
        pipe = Pipe(
            STATION,
            VERSION,
            connection="conn-1",
            gateway="gw-1",
            limits=Limits(answer_timeout=0.3, call_timeout=0.1, message_rate=None),
        )
        connection = Connection(
            socket,  # type: ignore[arg-type]
            pipe,
            bus=gateway_bus,
            topics=TOPICS,
            publish_timeout=1.0,
            counters=metrics.counters(VERSION),
            log=log,
        )
        yield Setup(connection, socket, managers)
        await connection.finish()


async def test_a_call_on_an_idle_lane_is_published_at_once(setup: Setup) -> None:
    setup.call("m1")
    # No loop turn since: the publish lane ran in this very call.
    assert [(e.kind, e.message_id) for e in setup.published()] == [(Kind.CALL, "m1")]
    setup.answer("m1")
    assert [frame[:2] for _, frame in setup.socket.sent] == [[3, "m1"]]


async def test_frames_behind_a_waiting_write_keep_their_order(setup: Setup) -> None:
    setup.socket.hold = asyncio.Event()
    for message_id in ("m1", "m2", "m3"):
        setup.call(message_id)
        setup.answer(message_id)
    await asyncio.sleep(0)
    assert setup.socket.sent == []
    setup.socket.hold.set()
    frames = await setup.socket.frames(3)
    assert [frame[1] for frame in frames] == ["m1", "m2", "m3"]


async def test_the_timer_moves_only_for_an_earlier_deadline_and_fires_once(
    setup: Setup,
) -> None:
    loop = asyncio.get_running_loop()
    connection = setup.connection
    setup.call("m1")
    armed = connection._timer
    assert armed is not None
    await asyncio.sleep(0.05)
    later = loop.time()
    setup.call("m2")  # a later deadline: the timer stays where it is
    assert connection._timer is armed
    setup.answer("m1")  # no deadline of m1 any more: still the same timer
    assert connection._timer is armed
    frames = await setup.socket.frames(2)
    assert frames[0][:2] == [3, "m1"]
    assert frames[1][:3] == [4, "m2", "InternalError"]
    assert CSMS_LATE in frames[1][3]
    sent_at = setup.socket.sent[1][0]
    assert sent_at >= later + 0.3  # m2's own deadline, not m1's
    assert connection._timer is None  # nothing left to wait for
    await asyncio.sleep(0.05)
    assert len(setup.socket.sent) == 2  # applied once


async def test_an_earlier_deadline_moves_the_timer(setup: Setup) -> None:
    connection = setup.connection
    setup.call("m1")  # answer deadline 0.3 s from now
    armed = connection._timer
    connection.feed_envelope(
        Envelope(
            kind=Kind.CALL,
            station=STATION,
            version=VERSION,
            message_id="csms-1",
            action="Reset",
            payload={"type": "Immediate"},
        )
    )  # call deadline 0.1 s from now: earlier
    assert connection._timer is not armed
    frames = await setup.socket.frames(2)
    assert [frame[:2] for frame in frames] == [[2, "csms-1"], [4, "m1"]]
    kinds = [(e.kind, e.message_id) for e in setup.published()]
    # The CSMS call timed out first, then the station's Call got its InternalError.
    assert kinds == [(Kind.CALL, "m1"), (Kind.TIMEOUT, "csms-1")]
