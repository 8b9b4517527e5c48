"""Transactions through the real fleet (``csms gateway`` → Mosquitto → two ``csms manager``
processes → Redis) with real station clients (the ``ocpp`` package, which validates every
answer and every CSMS call against the OCA schemas itself).

What only the fleet shows: stale transactions are found and closed through Redis's active
indexes by whichever manager handles the new start, absurd meter values travel through the
gateway's JSON parsing and are still answered, and the running cost reaches the station as
a CostUpdated call.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
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

from services.redis_store import RedisTransactionStore
from tests.integration.fleet import Fleet

pytestmark = pytest.mark.integration

ANSWER_WAIT = 15.0
"""Upper bound for a CSMS call to reach the station (a failure bound, not a measurement)."""


@pytest.fixture(scope="module")
def fleet(
    _mosquitto: tuple[str, Any], _redis: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    fleet = Fleet(_mosquitto[0], _redis[0], tmp_path_factory.mktemp("tx-fleet"), managers=2)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
async def store(fleet: Fleet) -> AsyncIterator[RedisTransactionStore]:
    client = aioredis.from_url(fleet.redis_url)
    try:
        yield RedisTransactionStore(client)
    finally:
        await client.aclose()


def _register(wh: str, at: str, unit: str = "Wh") -> dict[str, Any]:
    return {
        "timestamp": at,
        "sampled_value": [
            {"value": wh, "unit": unit, "measurand": "Energy.Active.Import.Register"}
        ],
    }


async def test_16_stale_transaction_and_unanswered_starts(
    fleet: Fleet, store: RedisTransactionStore
) -> None:
    token = f"T16{uuid.uuid4().hex[:6]}"
    assert fleet.cli("token", "add", token).returncode == 0
    station_id = f"CP16-{uuid.uuid4().hex[:6]}"
    ws = await websockets.connect(fleet.url(station_id), subprotocols=["ocpp1.6"])  # type: ignore[list-item]
    station = ChargePoint16(station_id, ws, response_timeout=10)
    task = asyncio.create_task(station.start())
    try:
        boot = await station.call(
            call16.BootNotification(charge_point_model="M1", charge_point_vendor="Acme")
        )
        assert boot.status == "Accepted"
        first = await station.call(
            call16.StartTransaction(
                connector_id=1, id_tag=token, meter_start=1000, timestamp="2026-11-23T10:00:00Z"
            )
        )
        assert first.id_tag_info["status"] == "Accepted"
        # A schema-valid but absurd register value next to a good one: answered, left out.
        answered = await station.call(
            call16.MeterValues(
                connector_id=1,
                transaction_id=first.transaction_id,
                meter_value=[
                    _register("1e400", "2026-11-23T10:10:00Z"),
                    _register("2.5", "2026-11-23T10:15:00Z", unit="kWh"),
                ],
            )
        )
        assert answered is not None
        # The charge point rebooted and lost the stop; the driver starts again.
        second = await station.call(
            call16.StartTransaction(
                connector_id=1, id_tag=token, meter_start=2600, timestamp="2026-11-23T11:00:00Z"
            )
        )
        assert second.id_tag_info["status"] == "Accepted"
        assert second.transaction_id != first.transaction_id
        # Its StartTransaction answer never reached the charge point: it stops with -1.
        unanswered = call16.StopTransaction(
            meter_stop=4600,
            timestamp="2026-11-23T11:30:00Z",
            transaction_id=-1,
            id_tag=token,
            reason="EVDisconnected",
        )
        for _ in range(2):  # the second copy is a re-send
            stop = await station.call(unanswered)
            assert stop.id_tag_info["status"] == "Accepted"
        # A later session whose start never reached the CSMS at all.
        lone = await station.call(
            call16.StopTransaction(
                meter_stop=6000,
                timestamp="2026-11-23T13:00:00Z",
                transaction_id=-1,
                id_tag=token,
                transaction_data=[_register("5000", "2026-11-23T12:30:00Z")],
            )
        )
        assert lone.id_tag_info["status"] == "Accepted"
    finally:
        task.cancel()
        await ws.close()

    old = await store.get(station_id, str(first.transaction_id))
    assert old is not None and old.state == "Ended"
    assert (old.stop_reason, old.superseded_by) == ("Other", str(second.transaction_id))
    assert old.energy_wh == pytest.approx(1500)
    assert old.cost is not None and Decimal(old.cost.total) == Decimal("1.60")  # 1.5 kWh + fee
    new = await store.get(station_id, str(second.transaction_id))
    assert new is not None and new.state == "Ended"
    assert new.stop_reason == "EVDisconnected" and new.energy_wh == pytest.approx(2000)
    assert new.cost is not None and Decimal(new.cost.total) == Decimal("1.80")
    pointer = await store.get(station_id, "-1:2026-11-23T11:30:00Z:4600")
    assert pointer is not None and pointer.merged_into == str(second.transaction_id)
    alone = await store.get(station_id, "-1:2026-11-23T13:00:00Z:6000")
    assert alone is not None and alone.energy_wh == pytest.approx(1000)
    assert alone.cost is not None and Decimal(alone.cost.total) == Decimal("1.40")
    assert await store.active(station_id) == []


class CostStation(ChargePoint201):
    """A 2.0.1 station that records the CostUpdated calls it receives."""

    costs: asyncio.Queue[tuple[float, str]]

    @on("CostUpdated")
    async def on_cost_updated(
        self, total_cost: float, transaction_id: str, **_: Any
    ) -> result201.CostUpdated:
        self.costs.put_nowait((total_cost, transaction_id))
        return result201.CostUpdated()


def _energy201(wh: float, at: str, context: str = "Sample.Periodic") -> list[dict[str, Any]]:
    return [
        {
            "timestamp": at,
            "sampled_value": [
                {
                    "value": wh,
                    "context": context,
                    "measurand": "Energy.Active.Import.Register",
                    "unit_of_measure": {"unit": "Wh"},
                }
            ],
        }
    ]


async def test_201_running_cost_supersede_and_final_cost(
    fleet: Fleet, store: RedisTransactionStore
) -> None:
    token = f"TOK{uuid.uuid4().hex[:8]}"
    assert fleet.cli("token", "add", token).returncode == 0
    id_token = {"id_token": token, "type": "ISO14443"}
    station_id = f"CP201-{uuid.uuid4().hex[:6]}"
    ws = await websockets.connect(fleet.url(station_id), subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
    station = CostStation(station_id, ws, response_timeout=10)
    station.costs = asyncio.Queue()
    task = asyncio.create_task(station.start())
    stale, tx_id = f"tx-{uuid.uuid4().hex[:8]}", f"tx-{uuid.uuid4().hex[:8]}"
    try:
        boot = await station.call(
            call201.BootNotification(
                charging_station={"model": "Wallbox X", "vendor_name": "Acme"}, reason="PowerUp"
            )
        )
        assert boot.status == "Accepted"
        await station.call(
            call201.TransactionEvent(
                event_type="Started",
                timestamp="2026-11-23T09:00:00Z",
                trigger_reason="Authorized",
                seq_no=0,
                transaction_info={"transaction_id": stale},
                id_token=id_token,
                evse={"id": 1, "connector_id": 1},
                meter_value=_energy201(500, "2026-11-23T09:00:00Z", "Transaction.Begin"),
            )
        )
        # The station rebooted without ending the session; the same driver starts again.
        started = await station.call(
            call201.TransactionEvent(
                event_type="Started",
                timestamp="2026-11-23T10:00:00Z",
                trigger_reason="Authorized",
                seq_no=0,
                transaction_info={"transaction_id": tx_id, "charging_state": "Charging"},
                id_token=id_token,
                evse={"id": 1, "connector_id": 1},
                meter_value=_energy201(1000, "2026-11-23T10:00:00Z", "Transaction.Begin"),
            )
        )
        assert started.id_token_info["status"] == "Accepted"
        updated = await station.call(
            call201.TransactionEvent(
                event_type="Updated",
                timestamp="2026-11-23T10:30:00Z",
                trigger_reason="MeterValuePeriodic",
                seq_no=1,
                transaction_info={"transaction_id": tx_id},
                meter_value=_energy201(4500, "2026-11-23T10:30:00Z"),
            )
        )
        assert updated.total_cost is None  # only once charging has ended
        total, about = await asyncio.wait_for(station.costs.get(), ANSWER_WAIT)
        assert (Decimal(str(total)), about) == (Decimal("2.40"), tx_id)  # 3.5 kWh + fee
        ended = await station.call(
            call201.TransactionEvent(
                event_type="Ended",
                timestamp="2026-11-23T11:00:00Z",
                trigger_reason="EVCommunicationLost",
                seq_no=2,
                transaction_info={"transaction_id": tx_id, "stopped_reason": "EVDisconnected"},
                meter_value=_energy201(8500, "2026-11-23T11:00:00Z", "Transaction.End"),
            )
        )
        assert Decimal(str(ended.total_cost)) == Decimal("4.00")
        # A reading after the end: answered, and the cost the driver saw stays.
        await station.call(
            call201.TransactionEvent(
                event_type="Updated",
                timestamp="2026-11-23T11:10:00Z",
                trigger_reason="MeterValuePeriodic",
                seq_no=3,
                transaction_info={"transaction_id": tx_id},
                meter_value=_energy201(9900, "2026-11-23T11:10:00Z"),
            )
        )
    finally:
        task.cancel()
        await ws.close()

    old = await store.get(station_id, stale)
    assert old is not None and old.state == "Ended"
    assert (old.stop_reason, old.superseded_by) == ("Other", tx_id)
    assert old.cost is not None and Decimal(old.cost.total) == Decimal("1.00")  # the fee
    final = await store.get(station_id, tx_id)
    assert final is not None and final.state == "Ended"
    assert final.energy_wh == pytest.approx(7500)
    assert final.cost is not None and Decimal(final.cost.total) == Decimal("4.00")
    assert station.costs.empty()
