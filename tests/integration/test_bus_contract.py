"""Behaviour every :class:`csms.bus.Bus` must have, run against every adapter.

Each test runs three times through the ``bus_pair`` fixture: on the in-process bus
(:class:`~csms.bus.memory.MemoryBus`) and on both MQTT adapters connected to the private
Mosquitto (marked ``integration``): :class:`~csms.bus.mqtt.MqttBus` (paho) and
:class:`~csms.bus.mqtt5_bus.Mqtt5Bus` (the ``mqtt5`` codec). What the gateway and the
managers rely on, the in-process bus must mimic: QoS 1 delivery, ``+``/``#`` filters,
shared subscriptions, ``NoSubscribers`` (MQTT v5 reason code 16), user properties, outages.

No test sleeps to show that something did not arrive: a subscriber that must not get a
message gets a later marker message first (delivery keeps publish order per subscriber).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest

from csms.bus import Bus, BusUnavailable, Message, NoSubscribers, property_text
from csms.bus.memory import MemoryBroker
from csms.bus.mqtt import MqttBus
from csms.bus.mqtt5_bus import Mqtt5Bus
from tests.servers import ServerProcess
from tests.timing import timeout

CONNECT_TIMEOUT = 10.0
RECEIVE_TIMEOUT = 5.0
RECONNECT_TIMEOUT = 20.0

MQTT_ADAPTERS: dict[str, type[MqttBus | Mqtt5Bus]] = {"mqtt": MqttBus, "mqtt5": Mqtt5Bus}
"""``bus_client`` setting -> adapter class (``mqtt`` is the paho one)."""


async def receive(bus: Bus, seconds: float = RECEIVE_TIMEOUT) -> Message:
    """The next message ``bus`` delivers."""
    return await asyncio.wait_for(anext(aiter(bus.messages())), timeout(seconds))


async def receive_many(bus: Bus, count: int) -> list[Message]:
    return [await receive(bus) for _ in range(count)]


async def until(condition: Callable[[], bool], seconds: float) -> None:
    """Poll ``condition`` (a connection state, which has no event to wait on)."""
    deadline = time.monotonic() + timeout(seconds)
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout(seconds)}s")
        await asyncio.sleep(0.02)


@dataclass
class BusPair:
    """A connected publisher and a factory of connected subscribers on one broker, plus the
    means to take that broker away and bring it back."""

    kind: str
    publisher: Bus
    open_bus: Callable[..., Awaitable[Bus]]
    """A new connected client (``MqttBus`` options such as ``manual_ack`` pass through)."""
    stop_broker: Callable[[], Awaitable[None]]
    """Take the broker away; returns once the publisher knows it is disconnected."""
    start_broker: Callable[[], Awaitable[None]]
    """Bring the broker back; returns once the publisher is connected again."""
    loses_session: bool
    """True when an outage ends the clients' broker sessions (MQTT with clean sessions)."""
    prefix: str = field(default_factory=lambda: f"contract/{uuid.uuid4().hex[:8]}")
    """A topic prefix no other test uses (the private broker is shared by the session)."""

    async def subscriber(self, *filters: str, **options: Any) -> Bus:
        bus = await self.open_bus(**options)
        for topic_filter in filters:
            await bus.subscribe(topic_filter)
        return bus

    def topic(self, *levels: str) -> str:
        return "/".join((self.prefix, *levels))


@pytest.fixture(
    params=[
        "memory",
        pytest.param("mqtt", marks=pytest.mark.integration),
        pytest.param("mqtt5", marks=pytest.mark.integration),
    ],
)
async def bus_pair(request: pytest.FixtureRequest) -> AsyncIterator[BusPair]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "memory":
            broker = MemoryBroker()

            async def open_memory(**options: Any) -> Bus:
                return await stack.enter_async_context(broker.client())

            async def stop_memory() -> None:
                broker.available = False

            async def start_memory() -> None:
                broker.available = True

            publisher = await open_memory()
            yield BusPair("memory", publisher, open_memory, stop_memory, start_memory, False)
            return

        mosquitto: ServerProcess = request.getfixturevalue("mosquitto")
        url: str = request.getfixturevalue("mqtt_url")
        stack.callback(lambda: None if mosquitto.running else mosquitto.start())
        adapter = MQTT_ADAPTERS[request.param]
        clients: list[MqttBus | Mqtt5Bus] = []

        async def open_mqtt(**options: Any) -> Bus:
            # A short backoff cap keeps reconnects after a broker restart quick.
            options.setdefault("max_backoff", 0.5)
            bus: MqttBus | Mqtt5Bus = await stack.enter_async_context(adapter(url, **options))
            clients.append(bus)
            assert await bus.wait_connected(timeout(CONNECT_TIMEOUT)), "broker unreachable"
            return bus

        async def stop_mqtt() -> None:
            mosquitto.stop()
            await until(lambda: not any(c.connected for c in clients), CONNECT_TIMEOUT)

        async def start_mqtt() -> None:
            mosquitto.start()
            for client in clients:
                assert await client.wait_connected(timeout(RECONNECT_TIMEOUT)), "no reconnect"

        publisher = await open_mqtt()
        yield BusPair(request.param, publisher, open_mqtt, stop_mqtt, start_mqtt, True)


async def test_qos1_delivery_keeps_payload_bytes_and_publish_order(bus_pair: BusPair) -> None:
    topic = bus_pair.topic("in", "CP1")
    subscriber = await bus_pair.subscriber(topic)
    payloads = [b"", b"\x00\xff binary \x80", "ünïcödé".encode(), *(b"%d" % i for i in range(20))]
    for payload in payloads:
        await bus_pair.publisher.publish(topic, payload)
    received = await receive_many(subscriber, len(payloads))
    assert [m.payload for m in received] == payloads
    assert {m.topic for m in received} == {topic}


async def test_single_and_multi_level_wildcards(bus_pair: BusPair) -> None:
    plus = await bus_pair.subscriber(bus_pair.topic("out", "+", "CP1"))
    hash_ = await bus_pair.subscriber(bus_pair.topic("out", "#"))
    matching = [bus_pair.topic("out", "ocpp1.6", "CP1"), bus_pair.topic("out", "ocpp2.0.1", "CP1")]
    only_hash = [bus_pair.topic("out", "ocpp1.6", "CP2"), bus_pair.topic("out", "a", "b", "CP1")]
    for topic in [*matching, *only_hash]:
        await bus_pair.publisher.publish(topic, b"x")
    assert [m.topic for m in await receive_many(hash_, 4)] == [*matching, *only_hash]
    # `+` is one level: a marker published last arrives right after the two matches.
    await bus_pair.publisher.publish(bus_pair.topic("out", "marker", "CP1"), b"end")
    received = await receive_many(plus, 3)
    assert [m.topic for m in received] == [*matching, bus_pair.topic("out", "marker", "CP1")]
    # Neither filter matches a sibling branch: nobody receives it.
    with pytest.raises(NoSubscribers):
        await bus_pair.publisher.publish(bus_pair.topic("in", "ocpp1.6", "CP1"), b"x")


async def test_shared_subscription_delivers_each_message_to_one_member(
    bus_pair: BusPair,
) -> None:
    group = f"g{uuid.uuid4().hex[:6]}"
    shared = f"$share/{group}/{bus_pair.topic('in', '#')}"
    members = [await bus_pair.subscriber(shared), await bus_pair.subscriber(shared)]
    plain = [await bus_pair.subscriber(bus_pair.topic("in", "#")) for _ in range(2)]
    topics = [bus_pair.topic("in", "ocpp1.6", f"CP{i}") for i in range(20)]
    for topic in topics:
        await bus_pair.publisher.publish(topic, b"x")

    # Every plain subscriber gets its own copy of everything, in order...
    for subscriber in plain:
        assert [m.topic for m in await receive_many(subscriber, 20)] == topics
    # ...while the group shares the 20 between its members: each message to exactly one.
    got: list[list[str]] = [[], []]

    async def drain(index: int) -> None:
        async for message in members[index].messages():
            got[index].append(message.topic)

    drains = [asyncio.create_task(drain(i)) for i in range(2)]
    try:
        await until(lambda: len(got[0]) + len(got[1]) >= 20, RECEIVE_TIMEOUT)
        # Stragglers would show as a 21st message: publish a marker to the group and wait
        # for it, so anything delivered twice has arrived before the counts are read.
        await bus_pair.publisher.publish(bus_pair.topic("in", "marker"), b"end")
        await until(lambda: len(got[0]) + len(got[1]) >= 21, RECEIVE_TIMEOUT)
    finally:
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
    delivered = [t for t in got[0] + got[1] if not t.endswith("/marker")]
    assert sorted(delivered) == sorted(topics)
    assert got[0] and got[1], f"one member got everything: {len(got[0])} / {len(got[1])}"


async def test_unsubscribe_stops_delivery(bus_pair: BusPair) -> None:
    stopped, marker = bus_pair.topic("stopped"), bus_pair.topic("marker")
    staying = await bus_pair.subscriber(stopped)
    leaving = await bus_pair.subscriber(stopped, marker)
    await leaving.unsubscribe(stopped)
    await bus_pair.publisher.publish(stopped, b"after")
    await bus_pair.publisher.publish(marker, b"marker")
    assert (await receive(staying)).payload == b"after"
    assert (await receive(leaving)).topic == marker  # "after" never came before it
    await staying.unsubscribe(stopped)
    with pytest.raises(NoSubscribers):
        await bus_pair.publisher.publish(stopped, b"nobody")


async def test_publish_without_subscriber_raises_no_subscribers(bus_pair: BusPair) -> None:
    with pytest.raises(NoSubscribers) as raised:
        await bus_pair.publisher.publish(bus_pair.topic("nobody", "CP1"), b"x")
    assert isinstance(raised.value, BusUnavailable)  # callers catching the outage get it too
    assert bus_pair.publisher.connected  # the broker took it: nothing is wrong with the bus


async def test_user_properties_round_trip(bus_pair: BusPair) -> None:
    topic = bus_pair.topic("props")
    subscriber = await bus_pair.subscriber(topic)
    text = "Zählerstand 100% \x00\x1f\ufffe \ud800 ✓"
    properties = {"traceparent": "00-abc-def-01", "station": property_text(text), "empty": ""}
    await bus_pair.publisher.publish(topic, b"x", properties=properties)
    await bus_pair.publisher.publish(topic, b"y")
    first, second = await receive_many(subscriber, 2)
    assert dict(first.properties) == properties
    assert unquote(first.properties["station"], errors="surrogatepass") == text
    assert dict(second.properties) == {}


async def test_manual_ack(bus_pair: BusPair) -> None:
    topic = bus_pair.topic("ack")
    subscriber = await bus_pair.subscriber(topic, manual_ack=True)
    for i in range(3):
        await bus_pair.publisher.publish(topic, b"%d" % i)
    for i, message in enumerate(await receive_many(subscriber, 3)):
        assert message.payload == b"%d" % i
        message.ack()
        message.ack()  # a second ack changes nothing
    await bus_pair.publisher.publish(topic, b"still served")
    assert (await receive(subscriber)).payload == b"still served"


async def test_publish_during_outage_raises_bus_unavailable_promptly(bus_pair: BusPair) -> None:
    topic = bus_pair.topic("outage")
    subscriber = await bus_pair.subscriber(topic)
    await bus_pair.stop_broker()
    assert not bus_pair.publisher.connected and not subscriber.connected
    for _ in range(3):
        with pytest.raises(BusUnavailable) as raised:
            await asyncio.wait_for(bus_pair.publisher.publish(topic, b"x"), timeout(1))
        assert not isinstance(raised.value, NoSubscribers)
    await bus_pair.start_broker()
    await bus_pair.publisher.publish(topic, b"back")
    assert (await receive(subscriber)).payload == b"back"


async def test_reconnect_restores_subscriptions_and_reports_a_new_session(
    bus_pair: BusPair,
) -> None:
    group = f"g{uuid.uuid4().hex[:6]}"
    topic = bus_pair.topic("in", "ocpp1.6", "CP1")
    plain = await bus_pair.subscriber(bus_pair.topic("in", "+", "CP1"))
    shared = await bus_pair.subscriber(f"$share/{group}/{bus_pair.topic('in', '#')}")
    sessions = {bus: bus.session_id for bus in (bus_pair.publisher, plain, shared)}
    await bus_pair.stop_broker()
    await bus_pair.start_broker()
    for bus, before in sessions.items():
        # A gateway announces its stations again when the session changed (its will was
        # published); a broker that kept the session must not make it do so.
        assert (bus.session_id != before) is bus_pair.loses_session, bus_pair.kind
    await bus_pair.publisher.publish(topic, b"after restart")
    assert (await receive(plain)).payload == b"after restart"
    assert (await receive(shared)).payload == b"after restart"


@pytest.mark.integration
@pytest.mark.parametrize("adapter", MQTT_ADAPTERS.values(), ids=MQTT_ADAPTERS.keys())
async def test_mqtt_persistent_session_redelivers_only_unacked_messages(
    mqtt_url: str, adapter: type[MqttBus | Mqtt5Bus]
) -> None:
    """What only a broker with sessions shows: a message acknowledged after handling is not
    delivered again when the same client comes back; one left unacknowledged is."""
    topic = f"contract/{uuid.uuid4().hex[:8]}/work"
    client_id = f"contract-{uuid.uuid4().hex[:8]}"
    options: dict[str, Any] = {"manual_ack": True, "session_expiry": 60, "client_id": client_id}
    async with adapter(mqtt_url) as publisher:
        assert await publisher.wait_connected(timeout(CONNECT_TIMEOUT))
        async with adapter(mqtt_url, **options) as worker:
            assert await worker.wait_connected(timeout(CONNECT_TIMEOUT))
            await worker.subscribe(topic)
            await publisher.publish(topic, b"handled")
            await publisher.publish(topic, b"interrupted")
            handled, interrupted = await receive_many(worker, 2)
            assert (handled.payload, interrupted.payload) == (b"handled", b"interrupted")
            handled.ack()
            # The broker reads a connection's packets in order: once it has answered a
            # publish the worker sends after its PUBACK, it has read that PUBACK too.
            with pytest.raises(NoSubscribers):
                await worker.publish(f"{topic}/sync", b"")
        # The worker is gone (its session kept by the broker); it comes back.
        async with adapter(mqtt_url, **options) as worker:
            assert await worker.wait_connected(timeout(CONNECT_TIMEOUT))
            again = await receive(worker)
            assert again.payload == b"interrupted"
            again.ack()
            await publisher.publish(topic, b"marker")
            assert (await receive(worker)).payload == b"marker"  # nothing else came back
        # Leave no session behind on the shared broker.
        async with adapter(mqtt_url, client_id=client_id):
            pass
