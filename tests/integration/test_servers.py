"""The private servers the integration tests rely on are real and reachable."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from csms.bus.mqtt import MqttBus


async def test_private_redis_answers(redis_client: aioredis.Redis) -> None:
    await redis_client.set("probe", "1")
    assert await redis_client.get("probe") == b"1"


async def test_private_broker_delivers_shared_subscription(mqtt_url: str) -> None:
    async with MqttBus(mqtt_url) as sender, MqttBus(mqtt_url) as receiver:
        assert await sender.wait_connected(5)
        assert await receiver.wait_connected(5)
        await receiver.subscribe("$share/g/probe/#")  # returns once the broker confirmed it
        await sender.publish("probe/x", b"hello", properties={"trace": "t1"})
        message = await asyncio.wait_for(anext(aiter(receiver.messages())), 5)
        assert message.topic == "probe/x"
        assert message.payload == b"hello"
        assert message.properties == {"trace": "t1"}
