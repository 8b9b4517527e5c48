"""End to end: real stations (the ``ocpp`` package from PyPI) through ``csms gateway`` →
private Mosquitto → two ``csms manager`` processes → private Redis, and back.

The station library validates every answer against the OCA schemas itself, so these tests
also check the CSMS's responses with an independent implementation.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

from csms.bus.mqtt import MqttBus
from csms.envelope import Kind, decode_envelope
from csms.topics import Topics
from operations.call_maker import CallMaker
from services.redis_store import RedisTransactionStore
from tests.integration.fleet import Fleet

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(
    _mosquitto: tuple[str, Any], _redis: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    fleet = Fleet(_mosquitto[0], _redis[0], tmp_path_factory.mktemp("fleet"), managers=2)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


class Station201(ChargePoint201):
    """A 2.0.1 station that accepts Reset requests."""

    resets: list[str]

    @on("Reset")
    async def on_reset(self, type: str, **_: Any) -> result201.Reset:
        self.resets.append(type)
        return result201.Reset(status="Accepted")


@pytest.fixture
async def redis(fleet: Fleet) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(fleet.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def _station201(fleet: Fleet, station_id: str) -> tuple[Station201, Any, asyncio.Task[None]]:
    ws = await websockets.connect(fleet.url(station_id), subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
    assert ws.subprotocol == "ocpp2.0.1"
    station = Station201(station_id, ws, response_timeout=10)
    station.resets = []
    task = asyncio.create_task(station.start())
    return station, ws, task


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _energy(wh: float, timestamp: str, context: str = "Sample.Periodic") -> list[dict[str, Any]]:
    return [
        {
            "timestamp": timestamp,
            "sampled_value": [
                {
                    "value": wh / 1000,
                    "context": context,
                    "measurand": "Energy.Active.Import.Register",
                    "unit_of_measure": {"unit": "kWh"},
                }
            ],
        }
    ]


async def test_full_201_session_energy_and_cost_in_redis(
    fleet: Fleet, redis: aioredis.Redis
) -> None:
    token = f"TOK{uuid.uuid4().hex[:8]}"
    added = fleet.cli("token", "add", token, "--group", "FLEET-A")
    assert added.returncode == 0, added.stderr
    station_id = f"CP201-{uuid.uuid4().hex[:6]}"
    station, ws, task = await _station201(fleet, station_id)
    try:
        boot = await station.call(
            call201.BootNotification(
                charging_station={"model": "Wallbox X", "vendor_name": "Acme"}, reason="PowerUp"
            )
        )
        assert boot.status == "Accepted"
        assert boot.interval == 42
        await station.call(
            call201.StatusNotification(
                timestamp=_now(), connector_status="Occupied", evse_id=1, connector_id=1
            )
        )
        auth = await station.call(
            call201.Authorize(id_token={"id_token": token, "type": "ISO14443"})
        )
        assert auth.id_token_info["status"] == "Accepted"
        unknown = await station.call(
            call201.Authorize(id_token={"id_token": "NOT-PROVISIONED", "type": "ISO14443"})
        )
        assert unknown.id_token_info["status"] in ("Unknown", "Invalid")

        tx_id = f"tx-{uuid.uuid4().hex[:8]}"
        started = await station.call(
            call201.TransactionEvent(
                event_type="Started",
                timestamp="2026-11-23T10:00:00Z",
                trigger_reason="Authorized",
                seq_no=0,
                transaction_info={"transaction_id": tx_id, "charging_state": "Charging"},
                id_token={"id_token": token, "type": "ISO14443"},
                evse={"id": 1, "connector_id": 1},
                meter_value=_energy(1000, "2026-11-23T10:00:00Z", "Transaction.Begin"),
            )
        )
        assert started.id_token_info["status"] == "Accepted"
        await station.call(
            call201.TransactionEvent(
                event_type="Updated",
                timestamp="2026-11-23T10:30:00Z",
                trigger_reason="MeterValuePeriodic",
                seq_no=1,
                transaction_info={"transaction_id": tx_id},
                meter_value=_energy(4500, "2026-11-23T10:30:00Z"),
            )
        )
        ended = await station.call(
            call201.TransactionEvent(
                event_type="Ended",
                timestamp="2026-11-23T11:00:00Z",
                trigger_reason="EVCommunicationLost",
                seq_no=2,
                transaction_info={"transaction_id": tx_id, "stopped_reason": "EVDisconnected"},
                meter_value=_energy(8500, "2026-11-23T11:00:00Z", "Transaction.End"),
            )
        )
        # 7.5 kWh x 0.40 + 1.00 session fee
        assert Decimal(str(ended.total_cost)) == Decimal("4.00")
    finally:
        task.cancel()
        await ws.close()

    stored = await RedisTransactionStore(redis).get(station_id, tx_id)
    assert stored is not None
    assert stored.state == "Ended"
    assert stored.energy_wh == pytest.approx(7500)
    assert stored.cost is not None and Decimal(stored.cost.total) == Decimal("4.00")
    assert stored.stop_reason == "EVDisconnected"


async def test_full_16_session_with_fleet_unique_transaction_ids(
    fleet: Fleet, redis: aioredis.Redis
) -> None:
    token = f"T16{uuid.uuid4().hex[:6]}"
    assert fleet.cli("token", "add", token).returncode == 0
    station_id = f"CP16-{uuid.uuid4().hex[:6]}"
    ws = await websockets.connect(fleet.url(station_id), subprotocols=["ocpp1.6"])  # type: ignore[list-item]
    assert ws.subprotocol == "ocpp1.6"
    station = ChargePoint16(station_id, ws, response_timeout=10)
    task = asyncio.create_task(station.start())
    try:
        boot = await station.call(
            call16.BootNotification(charge_point_model="M1", charge_point_vendor="Acme")
        )
        assert boot.status == "Accepted" and boot.interval == 42
        beat = await station.call(call16.Heartbeat())
        assert beat.current_time
        await station.call(
            call16.StatusNotification(connector_id=1, error_code="NoError", status="Preparing")
        )
        auth = await station.call(call16.Authorize(id_tag=token))
        assert auth.id_tag_info["status"] == "Accepted"
        start = await station.call(
            call16.StartTransaction(
                connector_id=1, id_tag=token, meter_start=1000, timestamp="2026-11-23T10:00:00Z"
            )
        )
        assert start.id_tag_info["status"] == "Accepted"
        assert isinstance(start.transaction_id, int) and start.transaction_id > 0
        await station.call(
            call16.MeterValues(
                connector_id=1,
                transaction_id=start.transaction_id,
                meter_value=[
                    {
                        "timestamp": "2026-11-23T10:30:00Z",
                        "sampled_value": [
                            {
                                "value": "4.5",
                                "unit": "kWh",
                                "measurand": "Energy.Active.Import.Register",
                            }
                        ],
                    }
                ],
            )
        )
        stop = await station.call(
            call16.StopTransaction(
                meter_stop=8500,
                timestamp="2026-11-23T11:00:00Z",
                transaction_id=start.transaction_id,
                reason="EVDisconnected",
                id_tag=token,
            )
        )
        assert stop.id_tag_info["status"] == "Accepted"
        second = await station.call(
            call16.StartTransaction(
                connector_id=2, id_tag=token, meter_start=0, timestamp="2026-11-23T12:00:00Z"
            )
        )
        assert second.transaction_id != start.transaction_id
    finally:
        task.cancel()
        await ws.close()

    stored = await RedisTransactionStore(redis).get(station_id, str(start.transaction_id))
    assert stored is not None and stored.state == "Ended"
    assert stored.energy_wh == pytest.approx(7500)
    assert stored.cost is not None and Decimal(stored.cost.total) == Decimal("4.00")


async def test_both_managers_receive_work(fleet: Fleet) -> None:
    stations = []
    for index in range(12):
        ws = await websockets.connect(fleet.url(f"SPREAD-{index}"), subprotocols=["ocpp1.6"])  # type: ignore[list-item]
        stations.append(ws)
    try:
        for round_ in range(3):
            for index, ws in enumerate(stations):
                await ws.send(json.dumps([2, f"hb-{round_}-{index}", "Heartbeat", {}]))
            for ws in stations:
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert reply[0] == 3 and "currentTime" in reply[2]
    finally:
        for ws in stations:
            await ws.close()

    def handled_per_manager() -> list[int]:
        return [
            sum(
                1
                for r in m.log_records()
                if r.get("action") == "Heartbeat"
                and r.get("event") == "call handled"
                and str(r.get("message_id", "")).startswith("hb-")  # not other tests' beats
            )
            for m in fleet.manager_processes
        ]

    # A manager logs "call handled" just after publishing the answer: allow it to land.
    for _ in range(50):
        handled = handled_per_manager()
        if sum(handled) >= 36:
            break
        await asyncio.sleep(0.1)
    assert sum(handled) == 36
    assert all(count > 0 for count in handled), handled


async def test_repeated_call_gets_same_answer_and_work_is_done_once(fleet: Fleet) -> None:
    token = f"R{uuid.uuid4().hex[:6]}"
    assert fleet.cli("token", "add", token).returncode == 0
    async with websockets.connect(fleet.url(f"RETRY-{token}"), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        frame = json.dumps(
            [
                2,
                "start-1",
                "StartTransaction",
                {"connectorId": 1, "idTag": token, "meterStart": 0, "timestamp": _now()},
            ]
        )
        await ws.send(frame)
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.send(frame)
        second = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert first[0] == 3
    assert second == first


async def test_csms_call_result_comes_back_with_original_request(fleet: Fleet) -> None:
    station, ws, task = await _station201(fleet, f"CALLED-{uuid.uuid4().hex[:6]}")
    topics = Topics(prefix=fleet.prefix)
    reply_topic = f"{fleet.prefix}/replies/{uuid.uuid4().hex}"
    try:
        await station.call(
            call201.BootNotification(
                charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp"
            )
        )
        async with MqttBus(fleet.mqtt_url) as bus:
            assert await bus.wait_connected(5)
            await bus.subscribe(reply_topic)  # returns once the broker confirmed it
            maker = CallMaker(bus, topics, origin="test")
            message_id = await maker.call(
                station.id,
                "ocpp2.0.1",
                "Reset",
                {"type": "OnIdle"},
                meta={"ticket": "42"},
                reply_to=reply_topic,
            )
            message = await asyncio.wait_for(anext(aiter(bus.messages())), 10)
        envelope = decode_envelope(message.payload)
        assert envelope.kind is Kind.RESULT
        assert envelope.payload == {"status": "Accepted"}
        assert envelope.request is not None
        assert envelope.request.message_id == message_id
        assert envelope.request.action == "Reset"
        assert envelope.request.payload == {"type": "OnIdle"}
        assert envelope.request.meta["ticket"] == "42"
        assert station.resets == ["OnIdle"]
    finally:
        task.cancel()
        await ws.close()


@pytest.mark.parametrize(
    ("version", "frame", "code", "field"),
    [
        (
            "ocpp2.0.1",
            [2, "v1", "Authorize", {"idToken": {"idToken": "A"}}],
            "OccurrenceConstraintViolation",
            "idToken.type",
        ),
        ("ocpp1.6", [2, "v2", "Authorize", {}], "OccurenceConstraintViolation", "idTag"),
        ("ocpp1.6", [2, "v3", "Authorize", {"idTag": 7}], "TypeConstraintViolation", "idTag"),
        ("ocpp2.0.1", [2, "v4", "Heartbeat", {"extra": 1}], "FormatViolation", ""),
        ("ocpp2.0.1", [2, "v5", "NoSuchAction", {}], "NotImplemented", None),
    ],
)
async def test_bad_payloads_get_the_right_call_error(
    fleet: Fleet, version: str, frame: list[Any], code: str, field: str | None
) -> None:
    async with websockets.connect(
        fleet.url(f"BAD-{uuid.uuid4().hex[:6]}"),
        subprotocols=[version],  # type: ignore[list-item]
    ) as ws:
        await ws.send(json.dumps(frame))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply[:3] == [4, frame[1], code]
        if field is not None:
            assert reply[4]["field"] == field
        # the connection keeps working after the error
        await ws.send(json.dumps([2, "ok", "Heartbeat", {}]))
        ok = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ok[0] == 3


async def test_framing_faults_through_the_fleet(fleet: Fleet, tmp_path: Path) -> None:
    async with websockets.connect(fleet.url("FRAMES"), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        await ws.send("not json")
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply[0] == 4 and reply[1] == "-1" and reply[2] == "RpcFrameworkError"
        await ws.send(json.dumps([9, "m1", "Heartbeat", {}]))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply[:3] == [4, "m1", "MessageTypeNotSupported"]
        await ws.send(json.dumps([2, "m2", "Heartbeat", {}]))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply[0] == 3 and reply[1] == "m2"
