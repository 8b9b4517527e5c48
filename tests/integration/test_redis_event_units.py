"""Events a station Call appends are written with its state, in its APPLY, on a real Redis.

The event log built as ``open_services`` builds it (``in_calls``) queues a Call's XADDs on
the Call's unit of work: the event is in the stream if and only if the Call's state change
is stored (committed: both; released or a failed check: neither), events keep their append
order, and the stream keeps its retention bound."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec
import pytest
import redis.asyncio as aioredis

from services.events import Event, EventKind, event_of
from services.interfaces import ReadAhead
from services.models import ConnectorStatus, Transaction, TransactionChange
from services.redis_events import RedisEventLog
from services.redis_store import (
    RedisCallUnit,
    RedisIdempotencyStore,
    RedisStationRegistry,
    RedisTransactionStore,
)
from services.resp import RespClient

pytestmark = pytest.mark.integration

AT = "2025-01-15T10:00:00.000Z"
STATION = "EV-1"


@dataclass
class Stores:
    client: aioredis.Redis
    prefix: str
    stations: RedisStationRegistry
    transactions: RedisTransactionStore
    idempotency: RedisIdempotencyStore
    events: RedisEventLog

    def unit(self, message_id: str, **ahead: object) -> RedisCallUnit:
        return self.idempotency.unit(
            f"{STATION}:{message_id}",
            "owner-1",
            30.0,
            ahead=ReadAhead(station_id=STATION, **ahead),  # type: ignore[arg-type]
            seen_at=AT,
        )

    async def stream(self) -> list[tuple[str, str]]:
        """(kind, key) of every event in the stream, oldest first."""
        page = await self.events.read(None, limit=1000)
        return [(event.kind, event.key or "") for event in page.events]


@pytest.fixture
async def stores(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Stores]:
    prefix = f"ev{uuid.uuid4().hex[:8]}:"
    fast = RespClient.from_url(redis_url)
    try:
        yield Stores(
            redis_client,
            prefix,
            RedisStationRegistry(redis_client, prefix, fast=fast),
            RedisTransactionStore(redis_client, prefix, fast=fast),
            RedisIdempotencyStore(redis_client, prefix, fast=fast),
            RedisEventLog(redis_client, prefix, max_events=3, fast=fast, in_calls=True),
        )
    finally:
        await fast.aclose()


def status(connector: int, value: str) -> ConnectorStatus:
    return ConnectorStatus(evse_id=1, connector_id=connector, status=value, at=AT)


def connector_event(connector: int, value: str) -> Event:
    return event_of(EventKind.CONNECTOR_STATUS, AT, STATION, {"status": value}, f"c{connector}")


def charging(state: str) -> Callable[[Transaction | None], Transaction | TransactionChange]:
    def change(old: Transaction | None) -> Transaction:
        assert old is not None
        return msgspec.structs.replace(old, charging_state=state)

    return change


async def test_a_committed_call_stores_its_events_with_its_state_in_order(
    stores: Stores,
) -> None:
    async with stores.unit("m1") as unit:
        assert await unit.claim() is True
        await stores.stations.set_connector_status(STATION, status(1, "Occupied"))
        first = await stores.events.append(connector_event(1, "Occupied"))
        await stores.events.append(connector_event(2, "Faulted"))
        assert first.id == ""  # the stream gives the id when the Call is stored
        assert await stores.stream() == []  # held with the Call's other writes
        assert await stores.stations.connector_statuses(STATION) == [status(1, "Occupied")]
        assert await unit.complete(b"answer", 60.0)
    assert await stores.stream() == [("connector.status", "c1"), ("connector.status", "c2")]
    statuses = await RedisStationRegistry(stores.client, stores.prefix).connector_statuses(STATION)
    assert statuses == [status(1, "Occupied")]


async def test_a_released_call_leaves_neither_its_state_nor_its_events(stores: Stores) -> None:
    async with stores.unit("m1") as unit:
        assert await unit.claim() is True
        await stores.stations.set_connector_status(STATION, status(1, "Occupied"))
        await stores.events.append(connector_event(1, "Occupied"))
        await unit.release()
    assert await stores.stream() == []
    assert await stores.stations.connector_statuses(STATION) == []


async def test_a_call_whose_check_fails_writes_no_event(stores: Stores, redis_url: str) -> None:
    """Another manager changes the transaction between the Call's reads and its APPLY: the
    Call's change and its event are both left out (the manager then handles it again)."""
    other_client = aioredis.from_url(redis_url)
    try:
        await _race(stores, RedisTransactionStore(other_client, stores.prefix))
    finally:
        await other_client.aclose()


async def _race(stores: Stores, other: RedisTransactionStore) -> None:
    start = Transaction(transaction_id="T1", station_id=STATION, version="ocpp2.0.1", started_at=AT)
    await other.update(STATION, "T1", lambda _: start)
    async with stores.unit("m2", transactions=("T1",)) as unit:
        assert await unit.claim() is True
        await stores.transactions.update(STATION, "T1", charging("Charging"))
        await stores.events.append(
            event_of(EventKind.TRANSACTION_UPDATED, AT, STATION, {"transaction_id": "T1"}, "u1")
        )
        await other.update(STATION, "T1", charging("SuspendedEV"))
        assert await unit.complete(b"answer", 60.0) is False
    assert await stores.stream() == []
    stored = await other.get(STATION, "T1")
    assert stored is not None and stored.charging_state == "SuspendedEV"


async def test_events_outside_a_call_are_appended_at_once_with_their_id(stores: Stores) -> None:
    appended = await stores.events.append(connector_event(3, "Available"))
    assert appended.id and await stores.stream() == [("connector.status", "c3")]
    # Without in_calls (events_to_mqtt needs the id before the answer) a Call's event is
    # appended at once too, and outlives a release.
    direct = RedisEventLog(stores.client, stores.prefix, max_events=3)
    async with stores.unit("m3") as unit:
        assert await unit.claim() is True
        assert (await direct.append(connector_event(4, "Available"))).id
        await unit.release()
    assert [key for _, key in await stores.stream()] == ["c3", "c4"]


async def test_events_held_in_calls_keep_the_retention_bound(stores: Stores) -> None:
    for number in range(5):
        async with stores.unit(f"r{number}") as unit:
            assert await unit.claim() is True
            await stores.events.append(connector_event(number, "Available"))
            assert await unit.complete(b"answer", 60.0)
    assert [key for _, key in await stores.stream()] == ["c2", "c3", "c4"]  # max_events=3
