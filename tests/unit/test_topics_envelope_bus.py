"""Topic scheme, envelope serialisation and the in-process bus."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csms.bus import BusUnavailable, NoSubscribers
from csms.bus.memory import MemoryBroker
from csms.envelope import (
    ConnectionEvent,
    ConnectionEventKind,
    Envelope,
    Kind,
    OriginalCall,
    decode_envelope,
    decode_event,
    encode,
)
from csms.topics import Topics, decode_station, encode_station, matches
from tests.timing import timeout


@given(st.text(min_size=1, max_size=48))
def test_station_ids_encode_into_one_reversible_level(station: str) -> None:
    level = encode_station(station)
    assert "/" not in level and "+" not in level and "#" not in level and "\x00" not in level
    assert decode_station(level) == station


def test_topics_parse_back() -> None:
    topics = Topics(prefix="fleet/a", group="g")
    topic = topics.inbound("ocpp2.0.1", "CP/1+#")
    assert topic == "fleet/a/in/ocpp2.0.1/CP%2F1%2B%23"
    assert topics.parse(topic) == ("in", "ocpp2.0.1", "CP/1+#")
    assert topics.shared_inbound() == "$share/g/fleet/a/in/#"
    with pytest.raises(ValueError):
        topics.parse("other/in/x/y")


def test_filter_matching() -> None:
    assert matches("cs/out/+/CP1", "cs/out/ocpp1.6/CP1")
    assert not matches("cs/out/+/CP1", "cs/out/ocpp1.6/CP2")
    assert matches("$share/g/cs/in/#", "cs/in/ocpp1.6/CP1")
    assert not matches("cs/in/+", "cs/in/a/b")


def test_envelope_round_trip_keeps_original_call() -> None:
    envelope = Envelope(
        kind=Kind.RESULT,
        station="CP1",
        version="ocpp2.0.1",
        message_id="m1",
        payload={"status": "Accepted"},
        request=OriginalCall(message_id="m1", action="Reset", payload={"type": "Immediate"}),
        meta={"origin": "api"},
    )
    decoded = decode_envelope(encode(envelope))
    assert decoded == envelope
    assert decoded.request is not None and decoded.request.action == "Reset"
    event = ConnectionEvent(
        kind=ConnectionEventKind.CONNECTED,
        station="CP1",
        version="ocpp1.6",
        gateway="g",
        connection="c",
    )
    assert decode_event(encode(event)) == event


async def test_memory_bus_shared_group_delivers_each_message_once() -> None:
    broker = MemoryBroker()
    async with broker.client() as a, broker.client() as b, broker.client() as sender:
        await a.subscribe("$share/m/cs/in/#")
        await b.subscribe("$share/m/cs/in/#")
        for i in range(10):
            await sender.publish(f"cs/in/ocpp1.6/CP{i}", b"x")
        got_a = [await asyncio.wait_for(anext(aiter(a.messages())), timeout(1)) for _ in range(5)]
        got_b = [await asyncio.wait_for(anext(aiter(b.messages())), timeout(1)) for _ in range(5)]
        assert {m.topic for m in got_a}.isdisjoint({m.topic for m in got_b})
        assert len({m.topic for m in got_a + got_b}) == 10


async def test_memory_bus_outage_raises() -> None:
    broker = MemoryBroker()
    async with broker.client() as client:
        broker.available = False
        assert not client.connected
        with pytest.raises(BusUnavailable):
            await client.publish("t", b"x")


async def test_memory_bus_delivers_once_per_client_by_mqtt_filter_rules() -> None:
    broker = MemoryBroker()
    async with broker.client() as gateway, broker.client() as sender:
        # A gateway's per-station filters (wildcard version level, literal station level)
        # next to open-ended ones; overlapping filters still deliver one copy.
        for station in ("CP1", "CP2"):
            await gateway.subscribe(f"cs/out/+/{station}")
        await gateway.subscribe("cs/ctl/+")
        await gateway.subscribe("cs/out/#")
        await gateway.unsubscribe("cs/out/#")
        await gateway.unsubscribe("cs/out/+/CP2")
        for topic in ("cs/out/ocpp1.6/CP1", "cs/ctl/CP2"):
            await sender.publish(topic, b"x")
        for topic in ("cs/out/ocpp2.0.1/CP2", "cs/x/y/CP1"):
            with pytest.raises(NoSubscribers):  # MQTT v5 PUBACK reason code 16
                await sender.publish(topic, b"x")
        # A marker published last is the next message: nothing else was delivered.
        await sender.publish("cs/ctl/marker", b"end")
        messages = aiter(gateway.messages())
        received = [(await asyncio.wait_for(anext(messages), timeout(1))).topic for _ in range(3)]
        assert received == ["cs/out/ocpp1.6/CP1", "cs/ctl/CP2", "cs/ctl/marker"]
