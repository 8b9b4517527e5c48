"""Hostile frames on the real fleet: ``csms gateway`` + ``csms manager`` on the private Mosquitto.

A gateway holds one MQTT connection for all of its stations, so nothing a station sends may
make the broker drop it. Mosquitto closes the connection of a client whose packet holds text
MQTT v5 forbids (control characters, noncharacters); these tests send exactly that in message
ids and actions, then check the station got its CallError and that another station on the
same gateway is still served right after.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from tests.integration.fleet import Fleet

pytestmark = pytest.mark.integration

ANSWER_WAIT = 15.0
"""Seconds to wait for an answer: only keeps a broken run from hanging."""


@pytest.fixture(scope="module")
def fleet(
    _mosquitto: tuple[str, Any], _redis: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    fleet = Fleet(_mosquitto[0], _redis[0], tmp_path_factory.mktemp("hostile"), managers=1)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


async def exchange(ws: Any, frame: list[Any]) -> list[Any]:
    """Send ``frame`` (JSON, non-ASCII escaped) and return the next frame received."""
    await ws.send(json.dumps(frame))
    answer: list[Any] = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_WAIT))
    return answer


def broker_losses(fleet: Fleet) -> list[dict[str, object]]:
    return [
        record
        for record in fleet.gateway.log_records()
        if record.get("event") in ("broker connection lost", "broker reconnected")
    ]


@pytest.mark.parametrize(
    ("version", "id_code", "action_code"),
    [
        ("ocpp2.0.1", "RpcFrameworkError", "FormatViolation"),
        ("ocpp1.6", "FormationViolation", "FormationViolation"),
    ],
)
async def test_forbidden_text_in_a_call_is_refused_and_the_gateway_stays_on_the_broker(
    fleet: Fleet, version: str, id_code: str, action_code: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    async with (
        websockets.connect(fleet.url(f"HOSTILE-{tag}"), subprotocols=[version]) as hostile,  # type: ignore[list-item]
        websockets.connect(fleet.url(f"BYSTANDER-{tag}"), subprotocols=["ocpp2.0.1"]) as other,  # type: ignore[list-item]
    ):
        assert (await exchange(other, [2, "before", "Heartbeat", {}]))[:2] == [3, "before"]
        assert (await exchange(hostile, [2, "before", "Heartbeat", {}]))[:2] == [3, "before"]

        # A control character in the message id: the id is unusable, answered with "-1".
        answer = await exchange(hostile, [2, "bad\u0001id", "Heartbeat", {}])
        assert answer[:3] == [4, "-1", id_code]
        # The other station on this gateway is answered by the manager right after.
        assert (await exchange(other, [2, "after-1", "Heartbeat", {}]))[:2] == [3, "after-1"]

        # Noncharacters in the id, a NUL or a noncharacter in the action.
        for message_id in ("nc\uffff", "nc\U0010ffff", "nul\u0000"):
            answer = await exchange(hostile, [2, message_id, "Heartbeat", {}])
            assert answer[:3] == [4, "-1", id_code]
        for action in ("Heart\u0000beat", "Heart\ufdd0beat", "Heartbeat\u009f"):
            answer = await exchange(hostile, [2, "act", action, {}])
            assert answer[:3] == [4, "act", action_code]
        # Answers with such ids are dropped without a word; the socket stays open.
        await hostile.send(json.dumps([3, "res\u0002", {}]))
        await hostile.send(json.dumps([4, "err\ufffe", "GenericError", "", {}]))

        assert (await exchange(other, [2, "after-2", "Heartbeat", {}]))[:2] == [3, "after-2"]
        assert (await exchange(hostile, [2, "after", "Heartbeat", {}]))[:2] == [3, "after"]
    assert broker_losses(fleet) == []
