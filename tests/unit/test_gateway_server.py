"""The gateway end to end on the in-process bus, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from csms.bus import Message, NoSubscribers
from csms.bus.memory import MemoryBroker, MemoryBus
from csms.config import Settings
from csms.envelope import (
    ConnectionEvent,
    ConnectionEventKind,
    Envelope,
    Kind,
    decode_envelope,
    decode_event,
    encode,
)
from csms.topics import Topics
from csms.versions import OcppVersion
from gateway import Action, Gateway, HandshakeRefused, Pipe, parse_station_path

TOPICS = Topics()
V16 = Subprotocol(OcppVersion.OCPP16)
V201 = Subprotocol(OcppVersion.OCPP201)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "listen_port": 0,
        "call_timeout": 0.4,
        "answer_timeout": 0.4,
        "call_queue_size": 2,
        "max_frame_bytes": 1024,
        "publish_timeout": 0.5,
        "ping_interval": None,
        "ping_timeout": None,
        # These tests are about framing and routing: stations connect without credentials.
        "unknown_stations": "accept",
    }
    values.update(overrides)
    return Settings(**values)


class Manager:
    """The other side of the bus: records what the gateway publishes, sends CSMS traffic."""

    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus
        self.received: list[Message] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.bus.subscribe("cs/in/#")
        await self.bus.subscribe("cs/events/#")
        await self.bus.subscribe("replies/#")
        self._task = asyncio.create_task(self._pump())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _pump(self) -> None:
        async for message in self.bus.messages():
            self.received.append(message)
            self._arrived.set()

    async def expect(self, predicate: Callable[[Message], bool], within: float = 2.0) -> Message:
        """The first recorded message matching ``predicate`` (removed from the record)."""
        async with asyncio.timeout(within):
            while True:
                for message in self.received:
                    if predicate(message):
                        self.received.remove(message)
                        return message
                self._arrived.clear()
                await self._arrived.wait()

    async def envelope(
        self, kind: Kind, station: str = "CP-1", within: float = 2.0
    ) -> tuple[Message, Envelope]:
        def match(message: Message) -> bool:
            if "/events/" in message.topic:
                return False
            env = decode_envelope(message.payload)
            return env.kind is kind and env.station == station

        message = await self.expect(match, within)
        return message, decode_envelope(message.payload)

    async def event(
        self, kind: ConnectionEventKind, station: str = "CP-1", connection: str | None = None
    ) -> ConnectionEvent:
        def match(message: Message) -> bool:
            if "/events/" not in message.topic:
                return False
            event = decode_event(message.payload)
            return (
                event.kind is kind
                and event.station == station
                and (connection is None or event.connection == connection)
            )

        return decode_event((await self.expect(match)).payload)

    def nothing(self, kind: Kind) -> bool:
        return not any(
            "/events/" not in m.topic and decode_envelope(m.payload).kind is kind
            for m in self.received
        )

    async def send(self, envelope: Envelope) -> None:
        await self.bus.publish(
            TOPICS.outbound(envelope.version, envelope.station), encode(envelope)
        )

    async def call(
        self,
        message_id: str,
        action: str = "Reset",
        payload: dict[str, Any] | None = None,
        *,
        station: str = "CP-1",
        version: str = OcppVersion.OCPP201,
        reply_to: str | None = None,
    ) -> None:
        await self.send(
            Envelope(
                kind=Kind.CALL,
                station=station,
                version=version,
                message_id=message_id,
                action=action,
                payload={"type": "Immediate"} if payload is None else payload,
                meta={"origin": "test"},
                reply_to=reply_to,
            )
        )

    async def answer(
        self,
        message_id: str,
        payload: dict[str, Any],
        *,
        station: str = "CP-1",
        version: str = OcppVersion.OCPP201,
    ) -> None:
        await self.send(
            Envelope(
                kind=Kind.RESULT,
                station=station,
                version=version,
                message_id=message_id,
                payload=payload,
            )
        )


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def manager(broker: MemoryBroker) -> AsyncIterator[Manager]:
    async with broker.client() as bus:
        peer = Manager(bus)
        await peer.start()
        yield peer
        await peer.stop()


@pytest.fixture
async def gateway(broker: MemoryBroker, settings: Settings) -> AsyncIterator[Gateway]:
    async with broker.client() as bus, Gateway(settings, bus, gateway_id="gw-1") as gw:
        yield gw


@contextlib.asynccontextmanager
async def station(
    gw: Gateway,
    manager: Manager,
    station_id: str = "CP-1",
    subprotocol: Subprotocol = V201,
) -> AsyncIterator[ClientConnection]:
    """A connected station, once the gateway has announced it (so it is subscribed)."""
    async with connect(gw.url_for(station_id), subprotocols=[subprotocol]) as ws:
        await manager.event(ConnectionEventKind.CONNECTED, station_id)
        yield ws


async def recv_json(ws: ClientConnection, within: float = 2.0) -> Any:
    async with asyncio.timeout(within):
        return json.loads(await ws.recv())


# -- handshake -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [([V16], V16), ([V201], V201), ([V16, V201], V201), ([Subprotocol("ocpp1.5"), V16], V16)],
)
async def test_subprotocol_negotiation(
    gateway: Gateway, manager: Manager, offered: list[Subprotocol], chosen: str
) -> None:
    async with connect(gateway.url_for("CP-1"), subprotocols=offered) as ws:
        assert ws.subprotocol == chosen
        event = await manager.event(ConnectionEventKind.CONNECTED)
        assert (event.version, event.gateway) == (chosen, "gw-1")


@pytest.mark.parametrize("offered", [None, [Subprotocol("ocpp1.5")]])
async def test_unsupported_subprotocol_is_refused_at_handshake(
    gateway: Gateway, manager: Manager, offered: list[Subprotocol] | None
) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(gateway.url_for("CP-1"), subprotocols=offered):
            pass
    response = caught.value.response
    assert response.status_code == 400
    assert b"ocpp2.0.1, ocpp1.6" in response.body
    assert gateway.connections == {}
    assert manager.received == []


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/other/CP-1", 404),
        ("/ocpp/", 404),
        ("/ocpp", 404),
        ("/ocpp/a/b", 404),
        ("/ocpp/a%00b", 400),
        ("/ocpp/" + "x" * 49, 400),
        ("/ocpp/%ff", 400),
    ],
)
async def test_bad_paths_are_refused(gateway: Gateway, path: str, status: int) -> None:
    url = f"ws://127.0.0.1:{gateway.port}{path}"
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, subprotocols=[V201]):
            pass
    assert caught.value.response.status_code == status


def test_parse_station_path() -> None:
    assert parse_station_path("/ocpp/CP-1", "/ocpp") == "CP-1"
    assert parse_station_path("/ocpp/CP%2F1%2B%23?token=x", "/ocpp") == "CP/1+#"
    assert parse_station_path("/CP-1", "") == "CP-1"
    with pytest.raises(HandshakeRefused):
        parse_station_path("/ocppCP-1", "/ocpp")


async def test_station_id_with_special_characters(gateway: Gateway, manager: Manager) -> None:
    async with station(gateway, manager, "CP/1+#") as ws:
        await ws.send('[2,"s1","Heartbeat",{}]')
        message, _ = await manager.envelope(Kind.CALL, "CP/1+#")
        assert message.topic == "cs/in/ocpp2.0.1/CP%2F1%2B%23"
        await manager.answer("s1", {"currentTime": "now"}, station="CP/1+#")
        assert await recv_json(ws) == [3, "s1", {"currentTime": "now"}]


# -- station → CSMS --------------------------------------------------------------------------


async def test_station_call_published_and_answer_routed_back(
    gateway: Gateway, manager: Manager
) -> None:
    async with station(gateway, manager) as ws:
        await ws.send('[2,"s1","BootNotification",{"reason":"PowerUp"}]')
        message, env = await manager.envelope(Kind.CALL)
        assert message.topic == "cs/in/ocpp2.0.1/CP-1"
        assert message.properties == {
            "action": "BootNotification",
            "message_id": "s1",
            "station": "CP-1",
            "kind": "call",
            "admitted_as": "Accepted",  # an unknown station, admitted by policy
        }
        assert (env.version, env.message_id, env.action, env.payload, env.gateway) == (
            OcppVersion.OCPP201,
            "s1",
            "BootNotification",
            {"reason": "PowerUp"},
            "gw-1",
        )
        assert env.connection == gateway.connections["CP-1"].id
        await manager.answer("s1", {"status": "Accepted"})
        assert await recv_json(ws) == [3, "s1", {"status": "Accepted"}]


async def test_csms_late_answer_becomes_internal_error(gateway: Gateway, manager: Manager) -> None:
    async with station(gateway, manager, subprotocol=V16) as ws:
        await ws.send('[2,"s1","Heartbeat",{}]')
        await manager.envelope(Kind.CALL)
        answer = await recv_json(ws)
        assert answer[:3] == [4, "s1", "InternalError"]
        assert "did not answer in time" in answer[3]
        # The CSMS's answer arriving afterwards is dropped: one answer per Call.
        await manager.answer("s1", {}, version=OcppVersion.OCPP16)
        await ws.send('[2,"s2","Heartbeat",{}]')
        await manager.envelope(Kind.CALL)
        await manager.answer("s2", {"currentTime": "t"}, version=OcppVersion.OCPP16)
        assert await recv_json(ws) == [3, "s2", {"currentTime": "t"}]


async def test_answer_of_other_version_is_not_routed(gateway: Gateway, manager: Manager) -> None:
    async with station(gateway, manager, subprotocol=V16) as ws:
        await ws.send('[2,"s1","Heartbeat",{}]')
        await manager.envelope(Kind.CALL)
        await manager.answer("s1", {"x": 1}, version=OcppVersion.OCPP201)
        await manager.answer("s1", {"x": 2}, version=OcppVersion.OCPP16)
        assert await recv_json(ws) == [3, "s1", {"x": 2}]


# -- CSMS → station --------------------------------------------------------------------------


async def test_csms_call_result_published_with_original_request(
    gateway: Gateway, manager: Manager
) -> None:
    async with station(gateway, manager) as ws:
        await manager.call("m1")
        assert await recv_json(ws) == [2, "m1", "Reset", {"type": "Immediate"}]
        await ws.send('[3,"m1",{"status":"Accepted"}]')
        message, env = await manager.envelope(Kind.RESULT)
        assert message.topic == "cs/in/ocpp2.0.1/CP-1"
        assert message.properties["action"] == "Reset"
        assert env.payload == {"status": "Accepted"}
        assert env.request is not None
        assert (env.request.message_id, env.request.action, env.request.payload) == (
            "m1",
            "Reset",
            {"type": "Immediate"},
        )
        assert env.request.meta == {"origin": "test"}
        assert env.request.sent_at is not None


async def test_csms_call_error_goes_to_reply_to(gateway: Gateway, manager: Manager) -> None:
    async with station(gateway, manager) as ws:
        await manager.call("m1", reply_to="replies/api-1")
        await recv_json(ws)
        await ws.send('[4,"m1","NotSupported","nope",{}]')
        message, env = await manager.envelope(Kind.ERROR)
        assert message.topic == "replies/api-1"
        assert (env.error_code, env.error_description) == ("NotSupported", "nope")
        assert env.request is not None and env.request.action == "Reset"
        # The managers get the outcome too, so result handlers run whoever waits for it.
        shared, copy = await manager.envelope(Kind.ERROR)
        assert shared.topic == TOPICS.inbound("ocpp2.0.1", "CP-1")
        assert copy.message_id == "m1"


async def test_calls_queue_one_in_flight_and_full_queue_is_undelivered(
    gateway: Gateway, manager: Manager
) -> None:
    async with station(gateway, manager) as ws:
        for n in range(1, 5):  # one in flight, two queued, the fourth overflows
            await manager.call(f"m{n}", reply_to="replies/q" if n == 4 else None)
        assert (await recv_json(ws))[1] == "m1"
        message, env = await manager.envelope(Kind.UNDELIVERED)
        assert message.topic == "replies/q"
        assert (env.message_id, env.error_description) == ("m4", "call queue full")
        assert env.request is not None and env.request.action == "Reset"
        with pytest.raises(TimeoutError):
            await recv_json(ws, within=0.1)  # m2 waits for m1's answer
        await ws.send('[3,"m1",{}]')
        assert (await recv_json(ws))[1] == "m2"
        await ws.send('[3,"m2",{}]')
        assert (await recv_json(ws))[1] == "m3"


async def test_unanswered_csms_call_times_out(gateway: Gateway, manager: Manager) -> None:
    async with station(gateway, manager) as ws:
        await manager.call("m1")
        await manager.call("m2", "ClearCache", {})
        assert (await recv_json(ws))[1] == "m1"
        _, env = await manager.envelope(Kind.TIMEOUT)
        assert env.message_id == "m1" and env.request is not None
        assert await recv_json(ws) == [2, "m2", "ClearCache", {}]


async def test_directions_do_not_block_each_other(gateway: Gateway, manager: Manager) -> None:
    async with station(gateway, manager) as ws:
        await manager.call("m1")
        assert (await recv_json(ws))[1] == "m1"
        # CSMS call in flight; the station's own Call goes through and is answered.
        await ws.send('[2,"s1","TransactionEvent",{}]')
        await manager.envelope(Kind.CALL)
        await manager.answer("s1", {})
        assert await recv_json(ws) == [3, "s1", {}]
        await ws.send('[3,"m1",{"status":"Accepted"}]')
        await manager.envelope(Kind.RESULT)


async def test_disconnect_makes_calls_undelivered_and_unsubscribes(
    gateway: Gateway, manager: Manager
) -> None:
    async with station(gateway, manager) as ws:
        connection_id = gateway.connections["CP-1"].id
        await manager.call("m1")
        await manager.call("m2")
        await recv_json(ws)
    undelivered = {(await manager.envelope(Kind.UNDELIVERED))[1].message_id for _ in range(2)}
    assert undelivered == {"m1", "m2"}
    event = await manager.event(ConnectionEventKind.DISCONNECTED, connection=connection_id)
    assert event.reason and "disconnected" in event.reason
    assert gateway.connections == {}
    # No longer subscribed: the bus says at once that a call for the gone station reaches
    # nobody, so its originator learns it without waiting for a timeout.
    with pytest.raises(NoSubscribers):
        await manager.call("m3")
    await asyncio.sleep(0.05)
    assert manager.nothing(Kind.UNDELIVERED)


# -- framing faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subprotocol", "frame", "expected"),
    [
        (V201, "not json", ["-1", "RpcFrameworkError"]),
        (V16, "not json", ["-1", "FormationViolation"]),
        (V201, '[9,"x","Heartbeat",{}]', ["x", "MessageTypeNotSupported"]),
        (V16, '[9,"x","Heartbeat",{}]', ["x", "FormationViolation"]),
        (V201, '[2,"x",5,{}]', ["x", "FormatViolation"]),
        (V16, '[2,"x","Heartbeat",[]]', ["x", "FormationViolation"]),
        (V201, '{"not":"an array"}', ["-1", "RpcFrameworkError"]),
    ],
)
async def test_framing_faults_answered_per_version(
    gateway: Gateway, manager: Manager, subprotocol: Subprotocol, frame: str, expected: list[str]
) -> None:
    async with station(gateway, manager, subprotocol=subprotocol) as ws:
        await ws.send(frame)
        answer = await recv_json(ws)
        assert answer[0] == 4 and answer[1:3] == expected and answer[3]
        # The socket stays usable.
        await ws.send('[2,"ok","Heartbeat",{}]')
        await manager.envelope(Kind.CALL)


async def test_binary_frame_is_answered(gateway: Gateway, manager: Manager) -> None:
    async with station(gateway, manager) as ws:
        await ws.send(b'[2,"b1","Heartbeat",{}]')
        answer = await recv_json(ws)
        assert answer[:3] == [4, "b1", "RpcFrameworkError"]
        assert "text frames" in answer[3]
        assert manager.nothing(Kind.CALL)


async def test_oversized_frames(gateway: Gateway, manager: Manager) -> None:
    async with station(gateway, manager, subprotocol=V16) as ws:
        # Over max_frame_bytes (1024) but under the hard limit: answered, socket kept.
        await ws.send('[2,"big","DataTransfer",{"data":"' + "x" * 2000 + '"}]')
        answer = await recv_json(ws)
        assert answer[:3] == [4, "big", "FormationViolation"]
        await ws.send('[2,"ok","Heartbeat",{}]')
        await manager.envelope(Kind.CALL)
        # Over the hard limit: websockets closes with 1009.
        await ws.send('[2,"huge","DataTransfer",{"data":"' + "x" * 5000 + '"}]')
        with pytest.raises(ConnectionClosed) as caught:
            await recv_json(ws)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1009


# -- duplicates, outages, isolation ------------------------------------------------------------


async def test_duplicate_connection_on_same_gateway_closes_older(
    gateway: Gateway, manager: Manager
) -> None:
    async with station(gateway, manager) as old:
        old_id = gateway.connections["CP-1"].id
        await manager.call("m1")
        await recv_json(old)
        async with connect(gateway.url_for("CP-1"), subprotocols=[V201]) as new:
            new_event = await manager.event(ConnectionEventKind.CONNECTED)
            assert new_event.connection != old_id
            with pytest.raises(ConnectionClosed):
                await recv_json(old)
            _, env = await manager.envelope(Kind.UNDELIVERED)
            assert env.message_id == "m1" and "replaced" in (env.error_description or "")
            await manager.event(ConnectionEventKind.DISCONNECTED, connection=old_id)
            # The newer socket keeps the station and its subscription.
            assert gateway.connections["CP-1"].id == new_event.connection
            await manager.call("m2")
            assert (await recv_json(new))[1] == "m2"


async def test_duplicate_connection_on_another_gateway_closes_older(
    broker: MemoryBroker, gateway: Gateway, manager: Manager, settings: Settings
) -> None:
    async with (
        station(gateway, manager) as old,
        broker.client() as bus2,
        Gateway(settings, bus2, gateway_id="gw-2") as gw2,
        connect(gw2.url_for("CP-1"), subprotocols=[V201]) as new,
    ):
        event = await manager.event(ConnectionEventKind.CONNECTED)
        assert event.gateway == "gw-2"
        with pytest.raises(ConnectionClosed):
            await recv_json(old)
        await manager.event(ConnectionEventKind.DISCONNECTED)
        assert "CP-1" not in gateway.connections
        # Only the new holder is subscribed: exactly one copy of the call is sent.
        await manager.call("m1")
        assert (await recv_json(new))[1] == "m1"
        await new.send('[3,"m1",{}]')
        _, env = await manager.envelope(Kind.RESULT)
        assert env.gateway == "gw-2"
        assert manager.nothing(Kind.UNDELIVERED)


async def test_broker_unavailable_answers_promptly_and_keeps_socket(
    broker: MemoryBroker, manager: Manager
) -> None:
    settings = make_settings(answer_timeout=30)
    async with (
        broker.client() as bus,
        Gateway(settings, bus) as gateway,
        station(gateway, manager) as ws,
    ):
        broker.available = False
        await ws.send('[2,"s1","Heartbeat",{}]')
        answer = await recv_json(ws)
        # The bus refused the Call: answered at once ("did not answer in time" would mean the
        # station waited for answer_timeout, 30 s here).
        assert answer[:3] == [4, "s1", "InternalError"]
        assert "temporarily unavailable" in answer[3]
        broker.available = True
        await ws.send('[2,"s2","Heartbeat",{}]')
        await manager.envelope(Kind.CALL)
        await manager.answer("s2", {"currentTime": "t"})
        assert await recv_json(ws) == [3, "s2", {"currentTime": "t"}]


async def test_station_connecting_during_outage_is_kept_and_answered(
    broker: MemoryBroker, gateway: Gateway, manager: Manager
) -> None:
    broker.available = False
    async with connect(gateway.url_for("CP-1"), subprotocols=[V16]) as ws:
        await ws.send('[2,"s1","BootNotification",{}]')
        answer = await recv_json(ws)
        assert answer[:3] == [4, "s1", "InternalError"]
        assert manager.nothing(Kind.CALL)
        broker.available = True
        # The connected notice lost in the outage is published once the bus is back, so the
        # registry (and any gateway holding a stale socket) learns who holds the station.
        event = await manager.event(ConnectionEventKind.CONNECTED)
        assert (event.station, event.connection) == ("CP-1", gateway.connections["CP-1"].id)
        # Subscribed despite the outage: CSMS calls reach the station afterwards.
        await manager.call("m1", version=OcppVersion.OCPP16)
        assert (await recv_json(ws))[1] == "m1"


async def test_disconnect_during_outage_is_reported_when_the_bus_is_back(
    broker: MemoryBroker, gateway: Gateway, manager: Manager
) -> None:
    async with station(gateway, manager):
        connection = gateway.connections["CP-1"].id
        broker.available = False
    for _ in range(200):  # the gateway's side of the close
        if "CP-1" not in gateway.connections:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert not any("/events/" in message.topic for message in manager.received)
    broker.available = True
    event = await manager.event(ConnectionEventKind.DISCONNECTED)
    assert event.connection == connection


async def test_misbehaving_station_does_not_affect_others(
    gateway: Gateway, manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with station(gateway, manager, "BAD") as bad, station(gateway, manager, "GOOD") as good:
        conn = gateway.connections["BAD"]
        original = Pipe.receive_station_frame

        def explode(self: Pipe, data: str | bytes, now: float) -> list[Action]:
            if self.station == "BAD":
                raise RuntimeError("bug")
            return original(self, data, now)

        monkeypatch.setattr(Pipe, "receive_station_frame", explode)
        await bad.send('[2,"x","Heartbeat",{}]')
        for _ in range(200):
            await bad.send("garbage")
        await good.send('[2,"g1","Heartbeat",{}]')
        await manager.envelope(Kind.CALL, "GOOD")
        await manager.answer("g1", {}, station="GOOD")
        assert await recv_json(good) == [3, "g1", {}]
        assert gateway.connections["BAD"] is conn


async def test_url_and_port(gateway: Gateway) -> None:
    assert gateway.port > 0
    assert gateway.url_for("CP 1") == f"ws://127.0.0.1:{gateway.port}/ocpp/CP%201"
    assert gateway.id == "gw-1"


async def test_shutdown_closes_sockets_and_reports(
    broker: MemoryBroker, manager: Manager, settings: Settings
) -> None:
    async with broker.client() as bus:
        gw = Gateway(settings, bus, gateway_id="gw-x")
        async with gw:
            ws = await connect(gw.url_for("CP-1"), subprotocols=[V201])
            await manager.event(ConnectionEventKind.CONNECTED)
            await manager.call("m1")
            await recv_json(ws)
            serving = asyncio.create_task(gw.serve_forever())
            await asyncio.sleep(0)
            assert not serving.done()
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 1001
        _, env = await manager.envelope(Kind.UNDELIVERED)
        assert env.message_id == "m1"
        await manager.event(ConnectionEventKind.DISCONNECTED)
        await asyncio.wait_for(serving, 1)


# -- presence and prompt refusals ----------------------------------------------------------


async def test_station_call_is_answered_at_once_when_no_manager_subscribes(
    broker: MemoryBroker,
) -> None:
    """After a broker restart, before the managers subscribed again, the broker says nobody
    receives the Call (PUBACK reason code 16): the station gets its CallError now, not after
    answer_timeout."""
    settings = make_settings(answer_timeout=60.0)
    async with (
        broker.client() as bus,
        Gateway(settings, bus, gateway_id="gw-1") as gw,
        connect(gw.url_for("CP-1"), subprotocols=[V201]) as ws,
    ):
        await ws.send(json.dumps([2, "hb-1", "Heartbeat", {}]))
        answer = await recv_json(ws, within=5.0)
    assert answer[:4] == [4, "hb-1", "InternalError", "CSMS temporarily unavailable"]


class SessionBus(MemoryBus):
    """An in-process bus whose session id the test changes, as a broker reconnect does."""

    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__(broker, 1000)
        self.session = "s1"

    @property
    def session_id(self) -> str:
        return self.session


async def test_gateway_renews_its_lease_and_announces_again_after_a_new_session(
    broker: MemoryBroker, manager: Manager
) -> None:
    await manager.bus.subscribe("cs/gateways/#")
    settings = make_settings(gateway_heartbeat_interval=0.05)
    bus = SessionBus(broker)

    async def presence(state: str) -> dict[str, Any]:
        message = await manager.expect(
            lambda m: m.topic == "cs/gateways/gw-1" and json.loads(m.payload)["state"] == state
        )
        return dict(json.loads(message.payload))

    async with (
        bus,
        Gateway(settings, bus, gateway_id="gw-1") as gw,
        connect(gw.url_for("CP-1"), subprotocols=[V201]),
    ):
        first = await manager.event(ConnectionEventKind.CONNECTED, "CP-1")
        assert first.session == "s1"
        alive = await presence("alive")
        assert alive["lease"] == pytest.approx(0.15) and alive["session"] == "s1"
        # The broker lost the gateway (its last will took CP-1 offline) and the bus
        # reconnected: CP-1 is announced again, in the new session.
        bus.session = "s2"
        again = await manager.event(ConnectionEventKind.CONNECTED, "CP-1")
        assert again.session == "s2" and again.connection == first.connection
        assert (await presence("alive"))["stations"] == 1
    gone = await presence("gone")
    assert gone["session"] == "s2"
