"""The Redis transaction store keeps energy and cost as running aggregates too: the same
property as tests/unit/test_transactions_incremental.py on a real, private redis-server; the
bounded record and its keys; a message that costs the same Redis commands at the 1,000th
reading as at the 1st; records written in the old shape (readings and seqNos inside) still
load, answer and price, and move to the new keys on their first update.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings

from csms.config import TariffSettings
from services.models import EnergyReading, Transaction, TransactionChange, TransactionState
from services.redis_store import RedisTransactionStore
from services.tariff import ConfiguredTariff
from tests.unit import energy_reference as reference
from tests.unit import test_transactions_incremental as incremental
from tests.unit.energy_reference import Session

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


async def _on_redis(url: str, ops: list[tuple[Any, ...]]) -> None:
    client = aioredis.from_url(url)
    try:
        await incremental.check_session(
            RedisTransactionStore(client, f"p{uuid.uuid4().hex[:8]}:"), ops
        )
    finally:
        await client.aclose()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(incremental.sessions)
def test_redis_aggregates_equal_a_recomputation_from_scratch(
    redis_url: str, ops: list[tuple[Any, ...]]
) -> None:
    asyncio.run(_on_redis(redis_url, ops))


async def _commands(client: aioredis.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): row["calls"] for name, row in stats.items()}


async def test_the_1000th_meter_value_costs_the_same_commands_as_the_1st(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """Through the 2.0.1 handler: the same Redis commands for the 1st and the 1,000th
    reading, none reading the readings or seqNos back, and a record that does not grow."""
    h = await incremental._harness(incremental.V201)
    store = RedisTransactionStore(redis_client, prefix)
    h.services.transactions = store
    await h.call(
        "TransactionEvent",
        {
            "eventType": "Started",
            "timestamp": "2025-01-15T10:00:00Z",
            "triggerReason": "Authorized",
            "seqNo": 0,
            "transactionInfo": {"transactionId": "LONG"},
            "idToken": {"idToken": "TAG1", "type": "ISO14443"},
        },
    )
    record = f"{prefix}tx:CS-1:LONG"
    found: dict[int, tuple[dict[str, int], int]] = {}
    for seq_no in range(1, 1001):
        if seq_no in (1, 1000):
            await redis_client.config_resetstat()
        await h.call("TransactionEvent", incremental.periodic(seq_no))
        if seq_no in (1, 1000):
            found[seq_no] = (await _commands(redis_client), await redis_client.strlen(record))
    (first, first_size), (last, last_size) = found[1], found[1000]
    first.pop("config|resetstat", None)
    last.pop("config|resetstat", None)
    assert first == last
    assert not {"lrange", "sismember", "smembers"} & set(last), last
    assert {"rpush", "sadd", "set"} <= set(last)
    assert last_size < min(first_size + 48, 1024)
    assert await redis_client.llen(f"{prefix}tx-readings:CS-1:LONG") == 1000
    assert await redis_client.scard(f"{prefix}tx-seqnos:CS-1:LONG") == 1001
    tx = await store.get("CS-1", "LONG")
    assert tx is not None and tx.energy_wh == 2997.0 and tx.last_seq_no == 1000


async def test_a_retried_event_reads_one_set_member(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    store = RedisTransactionStore(redis_client, prefix)
    base = Transaction(station_id="CS1", transaction_id="r", version="ocpp2.0.1")
    for seq_no in (0, 1, 2):
        update = await store.update_event("CS1", "r", seq_no, lambda old: old or base)
        assert update.applied
    await redis_client.config_resetstat()
    update = await store.update_event("CS1", "r", 1, lambda old: old or base)
    assert not update.applied and update.before == update.after
    called = await _commands(redis_client)
    assert called.get("sismember") == 1 and "exec" not in called, called


# --- records written in the old shape -------------------------------------------------------

OLD_READINGS = [
    EnergyReading(at="2025-01-15T10:00:00Z", wh=1000.0, context="Transaction.Begin"),
    EnergyReading(at="2025-01-15T10:10:00Z", wh=2500.0),
    EnergyReading(at="2025-01-15T10:20:00Z", wh=200.0),  # the register was reset
    EnergyReading(at="2025-01-15T10:30:00Z", wh=900.0),
]


async def _old_record(client: aioredis.Redis, prefix: str, station: str, tx_id: str) -> bytes:
    """Store a 2.0.1 transaction the way earlier versions did: readings and seqNos inside the
    record, its energy computed over them (and its active-set entry)."""
    facts = Transaction(
        station_id=station,
        transaction_id=tx_id,
        version="ocpp2.0.1",
        evse_id=1,
        id_token="TAG1",
        id_token_type="ISO14443",
        started_at="2025-01-15T10:00:00Z",
        meter_start_wh=1000.0,
        charging_state="Charging",
    )
    fields = msgspec.to_builtins(facts)
    fields["energy_wh"] = reference.energy_wh(Session.of(facts, OLD_READINGS))
    fields["readings"] = msgspec.to_builtins(OLD_READINGS)
    fields["seq_nos"] = [0, 1, 2]
    raw = msgspec.json.encode(fields)
    await client.set(f"{prefix}tx:{station}:{tx_id}", raw)
    await client.sadd(f"{prefix}tx-active:{station}", tx_id)
    return raw


async def test_old_records_load_and_move_to_their_own_keys_on_update(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    store = RedisTransactionStore(redis_client, prefix)
    raw = await _old_record(redis_client, prefix, "CS1", "old")
    loaded = await store.get("CS1", "old")
    assert loaded is not None
    assert loaded.energy_wh == 2200.0  # 1500 before the reset, 700 after
    assert [tx.transaction_id for tx in await store.active("CS1")] == ["old"]
    assert await store.readings("CS1", "old") == OLD_READINGS
    assert await store.seq_nos("CS1", "old") == [0, 1, 2]
    # A retried event is recognised from the seqNos inside, and writes nothing.
    update = await store.update_event("CS1", "old", 2, lambda old: old or loaded)
    assert not update.applied
    assert await redis_client.get(f"{prefix}tx:CS1:old") == raw

    late = EnergyReading(at="2025-01-15T10:05:00Z", wh=1800.0)  # older than the latest
    new = EnergyReading(at="2025-01-15T10:40:00Z", wh=1500.0)

    def event(old: Transaction | None) -> TransactionChange:
        assert old is not None and old.last_seq_no == 2 and old.meter is not None
        return TransactionChange(old, (late, new, OLD_READINGS[1]))

    update = await store.update_event("CS1", "old", 3, event)
    assert update.applied
    moved = await redis_client.get(f"{prefix}tx:CS1:old")
    assert isinstance(moved, bytes)
    assert b'"readings":' not in moved and b'"seq_nos":' not in moved
    everything = reference.merge_readings(OLD_READINGS, [late, new, OLD_READINGS[1]])
    assert await store.readings("CS1", "old") == list(everything)
    assert await redis_client.llen(f"{prefix}tx-readings:CS1:old") == 6
    assert await store.seq_nos("CS1", "old") == [0, 1, 2, 3]
    tx = update.after
    assert tx.energy_wh == reference.energy_wh(Session.of(tx, everything))
    assert tx.last_seq_no == 3 and tx.meter is not None and tx.meter.count == 6
    assert await store.get("CS1", "old") == tx


async def test_an_old_record_ends_and_is_priced_through_the_handler(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    h = await incremental._harness(incremental.V201)
    tariff = TariffSettings(energy_price_per_kwh=Decimal("0.40"), session_fee=Decimal("0.50"))
    h.services.tariff = ConfiguredTariff(tariff)
    store = RedisTransactionStore(redis_client, prefix)
    h.services.transactions = store
    await _old_record(redis_client, prefix, "CS-1", "TX-OLD")
    ended = {
        "eventType": "Ended",
        "timestamp": "2025-01-15T11:00:00Z",
        "triggerReason": "EVDeparted",
        "seqNo": 3,
        "transactionInfo": {"transactionId": "TX-OLD", "stoppedReason": "EVDisconnected"},
        "meterValue": [
            {
                "timestamp": "2025-01-15T11:00:00Z",
                "sampledValue": [
                    {"value": 1900, "context": "Transaction.End", "unitOfMeasure": {"unit": "Wh"}}
                ],
            }
        ],
    }
    answer = await h.call("TransactionEvent", ended)
    tx = await store.get("CS-1", "TX-OLD")
    assert tx is not None and tx.state is TransactionState.ENDED
    readings = await store.readings("CS-1", "TX-OLD")
    session = Session.of(tx, readings)
    assert tx.energy_wh == reference.energy_wh(session) == 3200.0
    assert tx.cost == reference.quote(session, tariff)
    assert answer == {"totalCost": 1.78}  # 0.50 + 3.2 kWh x 0.40
    # Its retry: recognised by the seqNo now in the seqNo set, same answer.
    assert await h.call("TransactionEvent", ended) == answer
    assert await store.active("CS-1") == []
