"""In-memory specifics the shared contract (test_services_contract.py) cannot express."""

from __future__ import annotations

import datetime as dt

from services import rules
from services.memory import MemoryIdempotencyStore, MemoryStationRegistry, MemoryTransactionStore
from services.models import (
    AuthorizationStatus,
    RegistrationStatus,
    StationRecord,
    TokenRecord,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_idempotency_ttl_expires_claims_and_answers() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(clock=clock)
    assert await store.claim("k", "a|w", 5) is True
    clock.now += 4.9
    assert await store.claim("k", "a|w", 5) is False
    clock.now += 0.2
    # The claim expired (a worker died mid-way): the next one may take it.
    assert await store.claim("k", "a|w", 5) is True
    await store.complete("k", b"answer", 10)
    clock.now += 9.9
    assert await store.claim("k", "a|w", 5) == b"answer"
    clock.now += 0.2
    assert await store.claim("k", "a|w", 5) is True


async def test_idempotency_sweeps_expired_entries() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(clock=clock, sweep_every=10)
    for index in range(9):
        await store.claim(f"k{index}", "a|w", 1)
    clock.now += 2
    await store.claim("last", "a|w", 1)  # the 10th claim sweeps
    assert list(store._entries) == ["last"]


async def test_transaction_ids_wrap_within_int32() -> None:
    store = MemoryTransactionStore(first_id=rules.INT32_MAX - 1)
    assert await store.next_transaction_id() == rules.INT32_MAX - 1
    assert await store.next_transaction_id() == rules.INT32_MAX
    assert await store.next_transaction_id() == 1


async def test_provision_keeps_live_facts() -> None:
    registry = MemoryStationRegistry()
    await registry.mark_connected("CS1", "ocpp1.6", "gw", "c1", "2026-01-15T12:00:00Z")
    await registry.provision("CS1", RegistrationStatus.ACCEPTED)
    record = await registry.get("CS1")
    assert record is not None
    assert (record.known, record.registration, record.online) == (
        True,
        RegistrationStatus.ACCEPTED,
        True,
    )
    await registry.provision("CS2", RegistrationStatus.REJECTED)
    assert await registry.get("CS2") == StationRecord(
        station_id="CS2", registration=RegistrationStatus.REJECTED, known=True
    )


def test_decide_token_boundary_and_naive_expiry() -> None:
    now = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
    at_now = TokenRecord(id_token="t", expiry="2026-01-15T12:00:00Z")
    assert rules.decide_token(at_now, now).status is AuthorizationStatus.EXPIRED
    naive_future = TokenRecord(id_token="t", expiry="2026-01-15T12:00:01")
    assert rules.decide_token(naive_future, now).status is AuthorizationStatus.ACCEPTED
    offset = TokenRecord(id_token="t", expiry="2026-01-15T13:30:00+02:00")  # 11:30 UTC
    assert rules.decide_token(offset, now).status is AuthorizationStatus.EXPIRED


def test_next_after_wraps() -> None:
    assert rules.next_after(0) == 1
    assert rules.next_after(41) == 42
    assert rules.next_after(rules.INT32_MAX) == 1
    assert rules.next_after(-5) == 1
