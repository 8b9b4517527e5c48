"""Behaviour every store implementation must have, run here against the in-memory stores.

tests/integration/test_redis_services.py imports these tests and runs them again against
Redis by overriding the fixtures below, so both implementations answer the same contract.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest

from csms.credentials import hash_password
from services.interfaces import (
    IdempotencyStore,
    StationRegistry,
    TokenDirectory,
    TokenStore,
    TransactionStore,
)
from services.memory import (
    MemoryIdempotencyStore,
    MemoryStationRegistry,
    MemoryTokenStore,
    MemoryTransactionStore,
)
from services.models import (
    MAX_PAGE_SIZE,
    MAX_UNSETTLED_PASSWORDS,
    AuthorizationStatus,
    BootInfo,
    ConnectorStatus,
    EnergyReading,
    Page,
    RegistrationStatus,
    StationCounts,
    StationCredentials,
    StationRecord,
    TokenRecord,
    Transaction,
    TransactionChange,
    TransactionState,
)
from services.rules import parse_time, transaction_key

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
T1 = "2026-01-15T12:00:00Z"
T2 = "2026-01-15T12:00:05Z"
TokenStoreFactory = Callable[..., TokenStore]


@pytest.fixture
def registry() -> StationRegistry:
    return MemoryStationRegistry()


@pytest.fixture
def make_tokens() -> TokenStoreFactory:
    def make(*, accept_unknown: bool = False) -> TokenStore:
        return MemoryTokenStore(accept_unknown=accept_unknown, clock=lambda: NOW)

    return make


@pytest.fixture
def transactions() -> TransactionStore:
    return MemoryTransactionStore()


@pytest.fixture
def idempotency() -> IdempotencyStore:
    return MemoryIdempotencyStore()


BOOT = BootInfo(vendor="ACME", model="Wallbox", serial_number="S-1")


# --- station registry ----------------------------------------------------------------------


async def test_registry_satisfies_protocol(registry: StationRegistry) -> None:
    assert isinstance(registry, StationRegistry)


async def test_record_boot_creates_unknown_station(registry: StationRegistry) -> None:
    record = await registry.record_boot(
        "CS:1/a", "ocpp2.0.1", BOOT, RegistrationStatus.ACCEPTED, "2026-01-15T12:00:00Z"
    )
    assert record.known is False
    assert record.registration is RegistrationStatus.ACCEPTED
    assert record.boot == BOOT
    assert record.ocpp_version == "ocpp2.0.1"
    assert record.last_boot_at == "2026-01-15T12:00:00Z"
    assert await registry.get("CS:1/a") == record
    assert await registry.get("CS:1") is None


async def test_record_boot_keeps_provisioned_facts(registry: StationRegistry) -> None:
    await registry.put(
        StationRecord(
            station_id="CS1",
            registration=RegistrationStatus.PENDING,
            security_profile=2,
            password_hash="h",
            allowed_versions=["ocpp1.6"],
        )
    )
    record = await registry.record_boot(
        "CS1", "ocpp1.6", BOOT, RegistrationStatus.PENDING, "2026-01-15T12:00:00Z"
    )
    assert record.known is True
    assert record.security_profile == 2
    assert record.password_hash == "h"
    assert record.allowed_versions == ["ocpp1.6"]
    assert record.boot == BOOT


async def test_set_registration_creates_or_changes(registry: StationRegistry) -> None:
    await registry.set_registration("new", RegistrationStatus.REJECTED)
    created = await registry.get("new")
    assert created is not None
    assert created.known is False
    assert created.registration is RegistrationStatus.REJECTED
    await registry.put(StationRecord(station_id="p", registration=RegistrationStatus.ACCEPTED))
    await registry.set_registration("p", RegistrationStatus.PENDING)
    changed = await registry.get("p")
    assert changed is not None
    assert changed.known is True
    assert changed.registration is RegistrationStatus.PENDING


async def test_newest_connection_owns_the_station(registry: StationRegistry) -> None:
    await registry.mark_connected("CS1", "ocpp1.6", "gw-a", "conn-1", "2026-01-15T12:00:00Z")
    await registry.mark_connected("CS1", "ocpp1.6", "gw-b", "conn-2", "2026-01-15T12:00:05Z")
    # The old socket's close arrives after the new one connected: the station stays online.
    assert await registry.mark_disconnected("CS1", "conn-1", "2026-01-15T12:00:06Z") is False
    record = await registry.get("CS1")
    assert record is not None
    assert (record.online, record.connection, record.gateway) == (True, "conn-2", "gw-b")
    assert record.known is False
    assert await registry.mark_disconnected("CS1", "conn-2", "2026-01-15T12:01:00Z") is True
    record = await registry.get("CS1")
    assert record is not None
    assert (record.online, record.connection) == (False, None)
    assert record.disconnected_at == "2026-01-15T12:01:00Z"
    # A repeated disconnect changes nothing.
    assert await registry.mark_disconnected("CS1", "conn-2", "2026-01-15T12:02:00Z") is False


async def test_late_connect_event_of_older_socket_is_ignored(registry: StationRegistry) -> None:
    await registry.mark_connected("CS1", "ocpp2.0.1", "gw-b", "new", "2026-01-15T12:00:05Z")
    await registry.mark_connected("CS1", "ocpp2.0.1", "gw-a", "old", "2026-01-15T12:00:00Z")
    record = await registry.get("CS1")
    assert record is not None
    assert record.connection == "new"


async def test_disconnect_of_unknown_station(registry: StationRegistry) -> None:
    assert await registry.mark_disconnected("ghost", "c", "2026-01-15T12:00:00Z") is False
    assert await registry.get("ghost") is None


async def test_touch_moves_last_seen_forward_only(registry: StationRegistry) -> None:
    await registry.touch("absent", "2026-01-15T12:00:00Z")
    assert await registry.get("absent") is None
    await registry.put(StationRecord(station_id="CS1"))
    await registry.touch("CS1", "2026-01-15T12:00:10Z")
    await registry.touch("CS1", "2026-01-15T12:00:05Z")
    record = await registry.get("CS1")
    assert record is not None
    assert parse_time(record.last_seen) == parse_time("2026-01-15T12:00:10Z")


async def test_connector_statuses_latest_per_connector(registry: StationRegistry) -> None:
    at = "2026-01-15T12:00:00Z"
    await registry.set_connector_status(
        "CS1", ConnectorStatus(evse_id=2, connector_id=1, status="Available", at=at)
    )
    await registry.set_connector_status(
        "CS1", ConnectorStatus(evse_id=1, connector_id=1, status="Available", at=at)
    )
    await registry.set_connector_status(
        "CS1",
        ConnectorStatus(evse_id=1, connector_id=1, status="Faulted", at=at, error_code="X"),
    )
    statuses = await registry.connector_statuses("CS1")
    assert [(s.evse_id, s.status) for s in statuses] == [(1, "Faulted"), (2, "Available")]
    assert await registry.connector_statuses("other") == []


async def test_faulted_counts_stations_with_a_faulted_connector(registry: StationRegistry) -> None:
    def status(evse_id: int, value: str) -> ConnectorStatus:
        return ConnectorStatus(evse_id=evse_id, connector_id=1, status=value, at=T1)

    await registry.provision("CS1", RegistrationStatus.ACCEPTED)
    await registry.provision("CS2", RegistrationStatus.ACCEPTED)
    await registry.set_connector_status("CS1", status(1, "Faulted"))
    await registry.set_connector_status("CS1", status(2, "Faulted"))
    await registry.set_connector_status("CS2", status(1, "Faulted"))
    assert (await registry.station_counts()).faulted == 2
    # One of CS1's two faulted connectors recovers: CS1 is still faulted.
    await registry.set_connector_status("CS1", status(1, "Available"))
    assert (await registry.station_counts()).faulted == 2
    await registry.set_connector_status("CS1", status(2, "Available"))
    assert (await registry.station_counts()).faulted == 1
    # Reported again while faulted: counted once.
    await registry.set_connector_status("CS2", status(1, "Faulted"))
    assert (await registry.station_counts()).faulted == 1
    assert await registry.delete("CS2") is True
    assert await registry.station_counts() == StationCounts(total=1, offline=1, accepted=1)


async def test_returned_records_are_copies(registry: StationRegistry) -> None:
    await registry.put(StationRecord(station_id="CS1", allowed_versions=["ocpp1.6"]))
    record = await registry.get("CS1")
    assert record is not None
    record.allowed_versions.append("ocpp2.0.1")
    again = await registry.get("CS1")
    assert again is not None
    assert again.allowed_versions == ["ocpp1.6"]


# --- station credentials ---------------------------------------------------------------------

HASH_A = hash_password("first-password-123")
HASH_B = hash_password("second-password-45")


async def _live_station(registry: StationRegistry, station_id: str = "CS1") -> None:
    """A station that booted and is connected: live state credentials must not wipe."""
    await registry.provision(station_id, RegistrationStatus.ACCEPTED)
    await registry.record_boot(
        station_id, "ocpp2.0.1", BOOT, RegistrationStatus.ACCEPTED, "2026-01-15T12:00:00Z"
    )
    await registry.mark_connected(station_id, "ocpp2.0.1", "gw1", "c1", "2026-01-15T12:00:01Z")


async def test_set_credentials_keeps_live_state(registry: StationRegistry) -> None:
    await _live_station(registry)
    record = await registry.set_credentials(
        "CS1",
        StationCredentials(
            security_profile=2,
            password_hash=HASH_A,
            certificate_identity="cs1.example",
            allowed_versions=("ocpp2.0.1",),
        ),
    )
    stored = await registry.get("CS1")
    assert stored == record
    assert (stored.security_profile, stored.password_hash) == (2, HASH_A)
    assert stored.certificate_identity == "cs1.example"
    assert stored.allowed_versions == ["ocpp2.0.1"]
    assert stored.online and stored.connection == "c1" and stored.boot == BOOT
    assert stored.registration is RegistrationStatus.ACCEPTED and stored.known


async def test_set_credentials_changes_only_the_fields_given(registry: StationRegistry) -> None:
    await registry.set_credentials(
        "CS1", StationCredentials(security_profile=1, password_hash=HASH_A)
    )
    await registry.set_credentials("CS1", StationCredentials(allowed_versions=("ocpp1.6",)))
    stored = await registry.get("CS1")
    assert stored is not None
    assert (stored.security_profile, stored.password_hash) == (1, HASH_A)
    assert stored.allowed_versions == ["ocpp1.6"]
    await registry.set_credentials(
        "CS1", StationCredentials(password_hash=None, allowed_versions=())
    )
    cleared = await registry.get("CS1")
    assert cleared is not None
    assert cleared.password_hash is None and cleared.allowed_versions == []
    assert cleared.security_profile == 1


async def test_set_credentials_provisions_an_unknown_station_as_pending(
    registry: StationRegistry,
) -> None:
    record = await registry.set_credentials("CS:new/1", StationCredentials(security_profile=3))
    assert record.known is True
    assert record.registration is RegistrationStatus.PENDING
    assert record.security_profile == 3
    assert await registry.get("CS:new/1") == record


async def test_set_password_hash_replaces_only_the_hash(registry: StationRegistry) -> None:
    await _live_station(registry)
    await registry.set_credentials(
        "CS1", StationCredentials(security_profile=2, password_hash=HASH_A)
    )
    before = await registry.get("CS1")
    assert await registry.set_password_hash("CS1", HASH_B) is True
    after = await registry.get("CS1")
    assert before is not None and after is not None
    assert after.password_hash == HASH_B
    assert msgspec.structs.replace(after, password_hash=HASH_A) == before


async def test_set_password_hash_never_creates_a_station(registry: StationRegistry) -> None:
    assert await registry.set_password_hash("ghost", HASH_A) is False
    assert await registry.get("ghost") is None


async def test_pending_password_hash_is_set_and_cleared_alone(registry: StationRegistry) -> None:
    await _live_station(registry)
    await registry.set_credentials(
        "CS1", StationCredentials(security_profile=1, password_hash=HASH_A)
    )
    before = await registry.get("CS1")
    assert await registry.set_pending_password_hash("CS1", HASH_B) is True
    pending = await registry.get("CS1")
    assert pending is not None and before is not None
    assert pending.pending_password_hash == HASH_B and pending.password_hash == HASH_A
    assert msgspec.structs.replace(pending, pending_password_hash=None) == before
    assert await registry.set_pending_password_hash("CS1", None, replacing=HASH_B) is True
    assert await registry.get("CS1") == before


async def test_clearing_a_pending_hash_spares_a_newer_one(registry: StationRegistry) -> None:
    await registry.provision("CS1", RegistrationStatus.ACCEPTED)
    assert await registry.set_pending_password_hash("CS1", HASH_A) is True
    assert await registry.set_pending_password_hash("CS1", HASH_B) is True  # newer rotation
    # A's refusal arrives late: A stops being admissible, B stays pending.
    assert await registry.set_pending_password_hash("CS1", None, replacing=HASH_A) is True
    stored = await registry.get("CS1")
    assert stored is not None and stored.pending_password_hash == HASH_B
    assert stored.unsettled_password_hashes == []
    assert await registry.set_pending_password_hash("CS1", None, replacing=HASH_A) is False


async def test_a_new_rotation_keeps_the_unsettled_one_admissible(
    registry: StationRegistry,
) -> None:
    """The answer to rotation A was lost (the station may use A); rotation B must not make A
    inadmissible, or the station is locked out when it rejects B."""
    await registry.provision("CS1", RegistrationStatus.ACCEPTED)
    await registry.set_pending_password_hash("CS1", HASH_A)
    await registry.set_pending_password_hash("CS1", HASH_B)
    stored = await registry.get("CS1")
    assert stored is not None
    assert stored.pending_password_hash == HASH_B
    assert stored.unsettled_password_hashes == [HASH_A]
    # B refused: A is still accepted until the station proves what it uses.
    await registry.set_pending_password_hash("CS1", None, replacing=HASH_B)
    stored = await registry.get("CS1")
    assert stored is not None and stored.pending_password_hash is None
    assert stored.unsettled_password_hashes == [HASH_A]
    # The station logs in with A: A becomes current, nothing stays unsettled.
    assert await registry.promote_password_hash("CS1", HASH_A) is True
    stored = await registry.get("CS1")
    assert stored is not None and stored.password_hash == HASH_A
    assert stored.unsettled_password_hashes == [] and stored.pending_password_hash is None
    # A stale promotion of a hash that is neither pending nor unsettled changes nothing.
    assert await registry.promote_password_hash("CS1", HASH_B) is False
    stored = await registry.get("CS1")
    assert stored is not None and stored.password_hash == HASH_A


async def test_unsettled_hashes_are_bounded(registry: StationRegistry) -> None:
    await registry.provision("CS1", RegistrationStatus.ACCEPTED)
    hashes = [hash_password(f"password-{index:04d}-xyz") for index in range(7)]
    for value in hashes:
        await registry.set_pending_password_hash("CS1", value)
    stored = await registry.get("CS1")
    assert stored is not None and stored.pending_password_hash == hashes[-1]
    assert stored.unsettled_password_hashes == hashes[-1 - MAX_UNSETTLED_PASSWORDS : -1]


async def test_gateway_gone_takes_its_stations_offline(registry: StationRegistry) -> None:
    await registry.mark_connected("CS1", "ocpp2.0.1", "gw-a", "c1", T1, session="s1")
    await registry.mark_connected("CS2", "ocpp2.0.1", "gw-a", "c2", T1, session="s1")
    await registry.mark_connected("CS3", "ocpp2.0.1", "gw-b", "c3", T1, session="s9")
    # CS2 moved to another gateway since.
    await registry.mark_connected("CS2", "ocpp2.0.1", "gw-b", "c4", T2, session="s9")
    assert await registry.gateway_gone("gw-a", T2, session="s1") == ["CS1"]
    cs1, cs2, cs3 = [await registry.get(name) for name in ("CS1", "CS2", "CS3")]
    assert cs1 is not None and not cs1.online and cs1.gateway is None
    assert cs2 is not None and cs2.online and cs2.gateway == "gw-b"
    assert cs3 is not None and cs3.online
    assert await registry.gateway_gone("gw-a", T2) == []


async def test_a_late_last_will_spares_stations_announced_again(
    registry: StationRegistry,
) -> None:
    """The gateway reconnected to the broker (new session) and announced its station again
    before a manager handled the old session's last will."""
    await registry.mark_connected("CS1", "ocpp2.0.1", "gw-a", "c1", T1, session="s1")
    await registry.mark_connected("CS1", "ocpp2.0.1", "gw-a", "c1", T1, session="s2")
    assert await registry.gateway_gone("gw-a", T2, session="s1") == []
    record = await registry.get("CS1")
    assert record is not None and record.online
    # The gateway keeps its lease for the stations of its new session.
    assert await registry.expired_gateways(time.time()) == []


async def test_gateway_leases_expire(registry: StationRegistry) -> None:
    now = time.time()
    await registry.mark_connected("CS1", "ocpp2.0.1", "gw-a", "c1", T1)
    await registry.gateway_alive("gw-a", now + 100)
    assert await registry.expired_gateways(now + 99) == []
    assert await registry.expired_gateways(now + 101) == ["gw-a"]
    await registry.gateway_alive("gw-a", now + 200)  # renewed
    assert await registry.expired_gateways(now + 101) == []
    await registry.gateway_alive("gw-a", now + 100)
    assert await registry.gateway_gone("gw-a", T2) == ["CS1"]
    assert await registry.expired_gateways(now + 101) == []


async def test_pending_password_hash_never_creates_a_station(registry: StationRegistry) -> None:
    assert await registry.set_pending_password_hash("ghost", HASH_A) is False
    assert await registry.set_pending_password_hash("ghost", None, replacing=HASH_A) is False
    assert await registry.get("ghost") is None
    with pytest.raises(ValueError, match="not a password hash"):
        await registry.set_pending_password_hash("ghost", "clear-text-password")


async def test_set_password_hash_promotes_only_a_matching_pending_hash(
    registry: StationRegistry,
) -> None:
    await registry.provision("CS1", RegistrationStatus.ACCEPTED)
    await registry.set_pending_password_hash("CS1", HASH_B)
    assert await registry.set_password_hash("CS1", HASH_A) is True  # another password
    stored = await registry.get("CS1")
    assert stored is not None and stored.pending_password_hash == HASH_B
    assert await registry.set_password_hash("CS1", HASH_B) is True  # the rotation accepted
    stored = await registry.get("CS1")
    assert stored is not None
    assert stored.password_hash == HASH_B and stored.pending_password_hash is None


async def test_operator_password_ends_a_pending_rotation(registry: StationRegistry) -> None:
    await registry.provision("CS1", RegistrationStatus.ACCEPTED)
    await registry.set_pending_password_hash("CS1", HASH_B)
    record = await registry.set_credentials("CS1", StationCredentials(password_hash=HASH_A))
    assert record.password_hash == HASH_A and record.pending_password_hash is None
    record = await registry.set_credentials("CS1", StationCredentials(security_profile=2))
    assert record.password_hash == HASH_A  # other credentials keep the password


async def test_registry_refuses_what_is_not_a_hash(registry: StationRegistry) -> None:
    await registry.provision("CS1", RegistrationStatus.ACCEPTED)
    with pytest.raises(ValueError, match="not a password hash"):
        await registry.set_password_hash("CS1", "clear-text-password")
    with pytest.raises(ValueError, match="not a password hash"):
        StationCredentials(password_hash="clear-text-password")
    stored = await registry.get("CS1")
    assert stored is not None and stored.password_hash is None


async def test_provision_keeps_credentials(registry: StationRegistry) -> None:
    await registry.set_credentials(
        "CS1", StationCredentials(security_profile=1, password_hash=HASH_A)
    )
    await registry.provision("CS1", RegistrationStatus.ACCEPTED)
    stored = await registry.get("CS1")
    assert stored is not None
    assert stored.registration is RegistrationStatus.ACCEPTED
    assert (stored.security_profile, stored.password_hash) == (1, HASH_A)


# --- deleting stations -----------------------------------------------------------------------


async def test_delete_forgets_the_station_in_every_read(registry: StationRegistry) -> None:
    await _live_station(registry, "CS1")
    await registry.set_credentials(
        "CS1", StationCredentials(security_profile=1, password_hash=HASH_A)
    )
    await registry.touch("CS1", T2)
    await registry.set_connector_status(
        "CS1", ConnectorStatus(evse_id=1, connector_id=1, status="Occupied", at=T1)
    )
    await registry.provision("CS2", RegistrationStatus.PENDING)
    assert await registry.delete("CS1") is True
    assert await registry.get("CS1") is None
    assert await registry.connector_statuses("CS1") == []
    assert _ids(await _all_pages(registry.list_stations, 1)) == ["CS2"]
    assert _ids((await registry.list_stations(online=True)).items) == []
    accepted = await registry.list_stations(registration=RegistrationStatus.ACCEPTED)
    assert accepted.items == []
    assert await registry.station_counts() == StationCounts(total=1, offline=1, pending=1)
    assert await registry.delete("CS1") is False
    # What its gateway reports later (the socket's end, the gateway's end) never revives it.
    assert await registry.mark_disconnected("CS1", "c1", T2) is False
    assert await registry.gateway_gone("gw1", T2) == []
    assert await registry.get("CS1") is None
    assert await registry.station_counts() == StationCounts(total=1, offline=1, pending=1)


async def test_delete_of_a_station_without_record(registry: StationRegistry) -> None:
    status = ConnectorStatus(evse_id=1, connector_id=1, status="Available", at=T1)
    await registry.set_connector_status("ghost", status)
    assert await registry.delete("ghost") is False
    assert await registry.connector_statuses("ghost") == []
    assert await registry.station_counts() == StationCounts()


async def test_a_deleted_station_is_registered_again_from_scratch(
    registry: StationRegistry,
) -> None:
    await _live_station(registry, "CS1")
    await registry.set_credentials(
        "CS1", StationCredentials(security_profile=1, password_hash=HASH_A)
    )
    await registry.set_connector_status(
        "CS1", ConnectorStatus(evse_id=1, connector_id=1, status="Faulted", at=T1)
    )
    assert await registry.delete("CS1") is True
    await registry.provision("CS1", RegistrationStatus.REJECTED)
    record = await registry.get("CS1")
    assert record == StationRecord(station_id="CS1", registration=RegistrationStatus.REJECTED)
    assert await registry.connector_statuses("CS1") == []
    assert await registry.station_counts() == StationCounts(total=1, offline=1, rejected=1)
    assert _ids((await registry.list_stations(online=False)).items) == ["CS1"]


# --- tokens ----------------------------------------------------------------------------------


async def test_unknown_token(make_tokens: TokenStoreFactory) -> None:
    tokens = make_tokens()
    assert isinstance(tokens, TokenStore)
    decision = await tokens.authorize("nope")
    assert decision.status is AuthorizationStatus.UNKNOWN


async def test_first_try_mode_accepts_unknown_but_not_blocked(
    make_tokens: TokenStoreFactory,
) -> None:
    tokens = make_tokens(accept_unknown=True)
    assert (await tokens.authorize("nope")).status is AuthorizationStatus.ACCEPTED
    await tokens.put(TokenRecord(id_token="bad", status=AuthorizationStatus.BLOCKED))
    assert (await tokens.authorize("bad")).status is AuthorizationStatus.BLOCKED


async def test_stored_status_with_expiry_and_group(make_tokens: TokenStoreFactory) -> None:
    tokens = make_tokens()
    await tokens.put(TokenRecord(id_token="t:1", expiry="2026-02-01T00:00:00Z", group_id="fleet"))
    decision = await tokens.authorize("t:1")
    assert decision.status is AuthorizationStatus.ACCEPTED
    assert decision.expiry == "2026-02-01T00:00:00Z"
    assert decision.group_id == "fleet"
    await tokens.put(TokenRecord(id_token="b", status=AuthorizationStatus.BLOCKED))
    assert (await tokens.authorize("b")).status is AuthorizationStatus.BLOCKED


@pytest.mark.parametrize("status", [AuthorizationStatus.ACCEPTED, AuthorizationStatus.BLOCKED])
async def test_past_expiry_is_expired_whatever_the_status(
    make_tokens: TokenStoreFactory, status: AuthorizationStatus
) -> None:
    tokens = make_tokens(accept_unknown=True)
    await tokens.put(TokenRecord(id_token="old", status=status, expiry="2026-01-15T11:59:59+00:00"))
    decision = await tokens.authorize("old")
    assert decision.status is AuthorizationStatus.EXPIRED
    assert decision.expiry == "2026-01-15T11:59:59+00:00"


async def test_unreadable_expiry_fails_closed(make_tokens: TokenStoreFactory) -> None:
    tokens = make_tokens()
    await tokens.put(TokenRecord(id_token="x", expiry="next tuesday"))
    assert (await tokens.authorize("x")).status is AuthorizationStatus.EXPIRED


async def test_token_type_must_match_when_stored(make_tokens: TokenStoreFactory) -> None:
    tokens = make_tokens()
    await tokens.put(TokenRecord(id_token="E1", token_type="eMAID"))
    await tokens.put(TokenRecord(id_token="ANY"))
    assert (await tokens.authorize("E1", "eMAID")).status is AuthorizationStatus.ACCEPTED
    assert (await tokens.authorize("E1")).status is AuthorizationStatus.ACCEPTED
    assert (await tokens.authorize("E1", "ISO14443")).status is AuthorizationStatus.UNKNOWN
    assert (await tokens.authorize("ANY", "ISO14443")).status is AuthorizationStatus.ACCEPTED


# --- transactions ----------------------------------------------------------------------------


def _start(station: str, tx_id: str, token: str | None = "TAG") -> Callable[..., Transaction]:
    def change(old: Transaction | None) -> Transaction:
        assert old is None
        return Transaction(
            station_id=station,
            transaction_id=tx_id,
            version="ocpp2.0.1",
            id_token=token,
            started_at="2026-01-15T12:00:00Z",
            meter_start_wh=100.0,
        )

    return change


def _end(old: Transaction | None) -> Transaction:
    assert old is not None
    return msgspec.structs.replace(old, state=TransactionState.ENDED, meter_stop_wh=900.0)


async def test_transactions_satisfy_protocol(transactions: TransactionStore) -> None:
    assert isinstance(transactions, TransactionStore)


async def test_next_transaction_id_increases(transactions: TransactionStore) -> None:
    ids = [await transactions.next_transaction_id() for _ in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert all(0 < value <= 2**31 - 1 for value in ids)


async def test_update_is_read_modify_write(transactions: TransactionStore) -> None:
    created = await transactions.update("CS:1", "tx/1", _start("CS:1", "tx/1"))
    assert created.state is TransactionState.ACTIVE
    assert await transactions.get("CS:1", "tx/1") == created

    def add_reading(old: Transaction | None) -> TransactionChange:
        assert old is not None
        reading = EnergyReading(at="2026-01-15T12:10:00Z", wh=400.0)
        return TransactionChange(msgspec.structs.replace(old, charging_state="EV"), (reading,))

    await transactions.update("CS:1", "tx/1", add_reading)
    updated = await transactions.update("CS:1", "tx/1", add_reading)
    assert updated.charging_state == "EV"
    # The same reading again is stored once; the store keeps the energy it gives.
    assert await transactions.readings("CS:1", "tx/1") == [
        EnergyReading(at="2026-01-15T12:10:00Z", wh=400.0)
    ]
    assert updated.energy_wh == 300.0
    assert await transactions.get("CS:1", "tx/1") == updated
    assert await transactions.get("CS", "1:tx/1") is None
    assert await transactions.readings("CS", "1:tx/1") == []


async def test_active_and_find_by_token_follow_state(transactions: TransactionStore) -> None:
    await transactions.update("CS1", "a", _start("CS1", "a", "TAG"))
    await transactions.update("CS1", "b", _start("CS1", "b", "OTHER"))
    await transactions.update("CS2", "a", _start("CS2", "a", "TAG"))
    assert [tx.transaction_id for tx in await transactions.active("CS1")] == ["a", "b"]
    found = await transactions.find_by_token("TAG")
    assert sorted((tx.station_id, tx.transaction_id) for tx in found) == [
        ("CS1", "a"),
        ("CS2", "a"),
    ]

    await transactions.update("CS1", "a", _end)
    assert [tx.transaction_id for tx in await transactions.active("CS1")] == ["b"]
    assert [tx.station_id for tx in await transactions.find_by_token("TAG")] == ["CS2"]
    ended = await transactions.get("CS1", "a")
    assert ended is not None
    assert ended.state is TransactionState.ENDED
    assert await transactions.active("nobody") == []
    assert await transactions.find_by_token("nobody") == []


async def test_token_change_moves_index(transactions: TransactionStore) -> None:
    await transactions.update("CS1", "a", _start("CS1", "a", None))
    assert await transactions.find_by_token("LATE") == []

    def authorize_late(old: Transaction | None) -> Transaction:
        assert old is not None
        return msgspec.structs.replace(old, id_token="LATE")

    await transactions.update("CS1", "a", authorize_late)
    assert [tx.transaction_id for tx in await transactions.find_by_token("LATE")] == ["a"]

    def swap(old: Transaction | None) -> Transaction:
        assert old is not None
        return msgspec.structs.replace(old, id_token="NEW")

    await transactions.update("CS1", "a", swap)
    assert await transactions.find_by_token("LATE") == []
    assert len(await transactions.find_by_token("NEW")) == 1


async def test_update_cannot_change_keys(transactions: TransactionStore) -> None:
    with pytest.raises(ValueError, match="keys cannot change"):
        await transactions.update("CS1", "a", _start("CS1", "b"))
    assert await transactions.get("CS1", "a") is None
    assert await transactions.get("CS1", "b") is None


async def test_failing_change_stores_nothing(transactions: TransactionStore) -> None:
    def boom(old: Transaction | None) -> Transaction:
        raise RuntimeError("handler bug")

    with pytest.raises(RuntimeError):
        await transactions.update("CS1", "a", boom)
    assert await transactions.get("CS1", "a") is None


def _reading(minute: int, wh: float) -> EnergyReading:
    return EnergyReading(at=f"2026-01-15T12:{minute:02d}:00Z", wh=wh)


async def test_readings_are_kept_next_to_a_bounded_record(
    transactions: TransactionStore,
) -> None:
    await transactions.update("CS1", "a", _start("CS1", "a"))

    def add(*readings: EnergyReading) -> Callable[[Transaction | None], TransactionChange]:
        def change(old: Transaction | None) -> TransactionChange:
            assert old is not None
            return TransactionChange(old, readings)

        return change

    first = await transactions.update("CS1", "a", add(_reading(1, 150.0)))
    for minute in range(2, 60):
        tx = await transactions.update("CS1", "a", add(_reading(minute, 100.0 + 50 * minute)))
    assert len(msgspec.json.encode(tx)) < len(msgspec.json.encode(first)) + 48
    assert tx.energy_wh == 2950.0  # from the meter start 100 to 3050 Wh
    # A late reading (older than the latest) and a duplicate: rebuilt, stored once.
    tx = await transactions.update("CS1", "a", add(_reading(0, 120.0), _reading(5, 350.0)))
    readings = await transactions.readings("CS1", "a")
    assert [r.at[14:16] for r in readings] == [f"{m:02d}" for m in range(60)]
    assert tx.meter is not None and tx.meter.count == 60 and tx.energy_wh == 2950.0
    ended = await transactions.update("CS1", "a", _end)
    # The meter stop (900) is below the last reading: a reset, the rises are summed.
    assert ended.energy_wh == 2950.0
    assert await transactions.get("CS1", "a") == ended


async def test_an_event_is_applied_once_per_seq_no(transactions: TransactionStore) -> None:
    calls: list[int] = []

    def event(seq_no: int) -> Callable[[Transaction | None], Transaction]:
        def change(old: Transaction | None) -> Transaction:
            calls.append(seq_no)
            base = old or Transaction(station_id="CS1", transaction_id="e", version="ocpp2.0.1")
            return msgspec.structs.replace(base, charging_state=f"s{seq_no}")

        return change

    for seq_no in (0, 2, 1, 2, 0, 5, 1):
        update = await transactions.update_event("CS1", "e", seq_no, event(seq_no))
        assert update.applied == (calls[-1:] == [seq_no] and calls.count(seq_no) == 1)
        assert update.after == await transactions.get("CS1", "e")
        if not update.applied:
            assert update.before == update.after
    assert calls == [0, 2, 1, 5]
    assert await transactions.seq_nos("CS1", "e") == [0, 1, 2, 5]
    stored = await transactions.get("CS1", "e")
    assert stored is not None and (stored.last_seq_no, stored.charging_state) == (5, "s5")
    assert await transactions.seq_nos("CS1", "nothing") == []


# --- idempotency -----------------------------------------------------------------------------


async def test_claim_complete_replay(idempotency: IdempotencyStore) -> None:
    assert isinstance(idempotency, IdempotencyStore)
    assert await idempotency.claim("k", "attempt-1|w1", 60) is True
    assert await idempotency.claim("k", "attempt-1|w1", 60) is False  # same owner: a copy
    await idempotency.complete("k", b'[3,"1",{}]', 60)
    assert await idempotency.claim("k", "attempt-1|w1", 60) == b'[3,"1",{}]'
    assert await idempotency.claim("k", "attempt-2|w2", 60) == b'[3,"1",{}]'


async def test_claim_of_another_attempt_is_taken_over(idempotency: IdempotencyStore) -> None:
    """A claim left by a crashed worker, or applied by a stalled store after the client gave
    up, must not swallow the station's retry (a new attempt) nor a copy redelivered to
    another worker."""
    assert await idempotency.claim("k", "attempt-1|w1", 60) is True  # w1 dies holding it
    assert await idempotency.claim("k", "attempt-2|w2", 60) is True  # the retry is handled
    assert await idempotency.claim("k", "attempt-2|w2", 60) is False
    assert await idempotency.claim("k", "attempt-2|w3", 60) is True  # redelivered elsewhere
    # The old owner's release cannot drop the new owner's claim.
    await idempotency.release("k", "attempt-2|w2")
    assert await idempotency.claim("k", "attempt-2|w3", 60) is False


async def test_release_lets_a_retry_work_but_keeps_answers(idempotency: IdempotencyStore) -> None:
    assert await idempotency.claim("k", "a|w", 60) is True
    await idempotency.release("k", "a|w")
    assert await idempotency.claim("k", "a|w", 60) is True
    await idempotency.complete("k", b"A", 60)
    await idempotency.release("k", "a|w")
    assert await idempotency.claim("k", "a|w", 60) == b"A"
    await idempotency.release("never-claimed", "a|w")


async def test_empty_and_marker_like_answers_round_trip(idempotency: IdempotencyStore) -> None:
    for key, answer in (("e", b""), ("p", b"P"), ("a", b"A")):
        assert await idempotency.claim(key, "a|w", 60) is True
        await idempotency.complete(key, answer, 60)
        assert await idempotency.claim(key, "a|w", 60) == answer


# --- read side: listings and counts -----------------------------------------------------------

PageOf = Callable[..., Awaitable[Page[Any]]]


async def _all_pages(
    list_page: PageOf, limit: int, cursor: str | None = None, **filters: Any
) -> list[Any]:
    """Every item of a listing (after ``cursor``), page by page, each at most ``limit``."""
    items: list[Any] = []
    for _ in range(1000):
        page = await list_page(cursor=cursor, limit=limit, **filters)
        assert len(page.items) <= limit
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor
    raise AssertionError("the listing never ended")


def _ids(records: list[StationRecord]) -> list[str]:
    return [record.station_id for record in records]


STATION_IDS = ["CS-10", "CS-2", "CS:1/a", "AB", "cs-1", "CS-1", "Zé", "CS-1.1"]


async def test_stations_are_listed_in_id_order_page_by_page(registry: StationRegistry) -> None:
    for station_id in STATION_IDS:
        await registry.provision(station_id, RegistrationStatus.ACCEPTED)
    expected = sorted(STATION_IDS)
    for limit in (1, 3, 8, 100):
        assert _ids(await _all_pages(registry.list_stations, limit)) == expected
    first = await registry.list_stations(limit=3)
    assert _ids(first.items) == expected[:3] and first.next_cursor is not None
    whole = await registry.list_stations(limit=len(STATION_IDS))
    assert _ids(whole.items) == expected and whole.next_cursor is None
    assert (await registry.list_stations()).items == [
        await registry.get(station_id) for station_id in expected
    ]


async def test_station_listing_filters(registry: StationRegistry) -> None:
    for station_id in STATION_IDS:
        await registry.provision(station_id, RegistrationStatus.PENDING)
    await registry.set_registration("CS-2", RegistrationStatus.ACCEPTED)
    await registry.set_registration("AB", RegistrationStatus.REJECTED)
    await registry.record_boot("new-1", "ocpp1.6", BOOT, RegistrationStatus.ACCEPTED, T1)
    await registry.mark_connected("CS-2", "ocpp1.6", "gw", "c1", T1)
    await registry.mark_connected("CS-10", "ocpp1.6", "gw", "c2", T1)
    await registry.mark_connected("AB", "ocpp1.6", "gw", "c3", T1)
    await registry.mark_disconnected("AB", "c3", T2)

    async def listed(**filters: Any) -> list[str]:
        return _ids(await _all_pages(registry.list_stations, 2, **filters))

    assert await listed(prefix="CS-1") == ["CS-1", "CS-1.1", "CS-10"]
    assert await listed(prefix="CS") == ["CS-1", "CS-1.1", "CS-10", "CS-2", "CS:1/a"]
    assert await listed(prefix="Z") == ["Zé"]
    assert await listed(prefix="nobody") == []
    assert await listed(online=True) == ["CS-10", "CS-2"]
    assert await listed(online=False) == sorted(set(STATION_IDS) - {"CS-10", "CS-2"} | {"new-1"})
    assert await listed(registration=RegistrationStatus.ACCEPTED) == ["CS-2", "new-1"]
    assert await listed(registration=RegistrationStatus.REJECTED) == ["AB"]
    assert await listed(online=True, registration=RegistrationStatus.PENDING) == ["CS-10"]
    assert await listed(online=False, registration=RegistrationStatus.ACCEPTED) == ["new-1"]
    assert await listed(online=True, prefix="CS-2") == ["CS-2"]
    assert await listed(online=False, prefix="CS-1") == ["CS-1", "CS-1.1"]


async def test_station_listing_shows_what_get_shows(registry: StationRegistry) -> None:
    await registry.mark_connected("CS1", "ocpp2.0.1", "gw", "c1", T1)
    await registry.touch("CS1", "2026-01-15T12:30:00Z")
    [listed] = (await registry.list_stations(online=True)).items
    assert listed == await registry.get("CS1")
    assert parse_time(listed.last_seen) == parse_time("2026-01-15T12:30:00Z")


async def test_station_cursor_is_stable_under_inserts(registry: StationRegistry) -> None:
    for station_id in ("b", "d", "f", "h"):
        await registry.provision(station_id, RegistrationStatus.ACCEPTED)
    first = await registry.list_stations(limit=2)
    assert _ids(first.items) == ["b", "d"]
    for station_id in ("a", "c", "e", "i"):  # before and after the cursor
        await registry.provision(station_id, RegistrationStatus.ACCEPTED)
    rest = await _all_pages(registry.list_stations, 2, cursor=first.next_cursor)
    assert _ids(rest) == ["e", "f", "h", "i"]


async def test_station_counts_follow_every_change(registry: StationRegistry) -> None:
    assert await registry.station_counts() == StationCounts()
    await registry.provision("A", RegistrationStatus.ACCEPTED)
    await registry.provision("B", RegistrationStatus.ACCEPTED)
    await registry.set_registration("C", RegistrationStatus.REJECTED)
    await registry.record_boot("D", "ocpp1.6", BOOT, RegistrationStatus.PENDING, T1)
    await registry.mark_connected("A", "ocpp1.6", "gw-a", "c1", T1, session="s")
    await registry.mark_connected("B", "ocpp1.6", "gw-a", "c2", T1, session="s")
    await registry.mark_connected("D", "ocpp1.6", "gw-b", "c3", T1)
    assert await registry.station_counts() == StationCounts(
        total=4, online=3, offline=1, accepted=2, pending=1, rejected=1
    )
    await registry.mark_disconnected("D", "c3", T2)
    await registry.set_registration("D", RegistrationStatus.ACCEPTED)
    assert await registry.gateway_gone("gw-a", T2, session="s") == ["A", "B"]
    await registry.put(StationRecord(station_id="C", online=True))  # replaced: Pending, online
    assert await registry.station_counts() == StationCounts(
        total=4, online=1, offline=3, accepted=3, pending=1, rejected=0
    )
    assert _ids((await registry.list_stations(online=True)).items) == ["C"]
    assert (
        _ids((await registry.list_stations(registration=RegistrationStatus.REJECTED)).items) == []
    )


@pytest.mark.parametrize(
    "cursor", ["", "garbage", "!!!", "eyJ4IjoxfQ", "WyJ0b2tlbnMiLCJhIl0", "WyJzdGF0aW9ucyIsIiJd"]
)
async def test_station_listing_refuses_a_cursor_it_did_not_make(
    registry: StationRegistry, cursor: str
) -> None:
    # '{"x":1}', a token listing's cursor, an empty position: none is a station cursor.
    await registry.provision("CS1", RegistrationStatus.ACCEPTED)
    with pytest.raises(ValueError, match="cursor"):
        await registry.list_stations(cursor=cursor)


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1])
async def test_listings_refuse_a_limit_out_of_range(
    registry: StationRegistry,
    transactions: TransactionStore,
    make_tokens: TokenStoreFactory,
    limit: int,
) -> None:
    tokens = make_tokens()
    assert isinstance(tokens, TokenDirectory)
    with pytest.raises(ValueError, match="limit"):
        await registry.list_stations(limit=limit)
    with pytest.raises(ValueError, match="limit"):
        await transactions.list_transactions(limit=limit)
    with pytest.raises(ValueError, match="limit"):
        await tokens.list_tokens(limit=limit)


async def test_tokens_are_listed_in_id_order(make_tokens: TokenStoreFactory) -> None:
    tokens = make_tokens()
    assert isinstance(tokens, TokenDirectory)
    ids = ["T-2", "T-10", "A:1", "T-1", "ü"]
    for id_token in ids:
        await tokens.put(TokenRecord(id_token=id_token, group_id="g"))
    await tokens.put(TokenRecord(id_token="T-1", status=AuthorizationStatus.BLOCKED))
    listed = await _all_pages(tokens.list_tokens, 2)
    assert [token.id_token for token in listed] == sorted(ids)
    assert listed[1] == TokenRecord(id_token="T-1", status=AuthorizationStatus.BLOCKED)
    by_prefix = await _all_pages(tokens.list_tokens, 1, prefix="T-1")
    assert [token.id_token for token in by_prefix] == ["T-1", "T-10"]
    with pytest.raises(ValueError, match="cursor"):
        await tokens.list_tokens(cursor="WyJzdGF0aW9ucyIsIkEiXQ")  # a station cursor


def _started(
    station: str,
    tx_id: str,
    at: str | None,
    token: str | None = "TAG",
    state: TransactionState = TransactionState.ACTIVE,
) -> Callable[[Transaction | None], Transaction]:
    def change(old: Transaction | None) -> Transaction:
        return Transaction(
            station_id=station,
            transaction_id=tx_id,
            version="ocpp2.0.1",
            id_token=token,
            started_at=at,
            state=state,
        )

    return change


def _keys(found: list[Transaction]) -> list[tuple[str, str]]:
    return [(tx.station_id, tx.transaction_id) for tx in found]


async def _history(transactions: TransactionStore) -> None:
    """Eight transactions on three stations, two tokens, both states, tied start times."""
    rows = [
        ("CS1", "1", "2026-01-10T08:00:00Z", "TAG", TransactionState.ENDED),
        ("CS1", "2", "2026-01-11T08:00:00Z", "OTHER", TransactionState.ENDED),
        ("CS2", "1", "2026-01-11T08:00:00Z", "TAG", TransactionState.ENDED),
        ("CS2", "2", "2026-01-12T09:30:00.250+01:00", "TAG", TransactionState.ACTIVE),
        ("CS1", "3", "2026-01-12T08:30:00.250Z", None, TransactionState.ACTIVE),
        ("CS:3", "a/b", "2026-01-11T08:00:00Z", "TAG", TransactionState.ENDED),
        ("CS:3", "c", "2026-01-13T00:00:00Z", "OTHER", TransactionState.ACTIVE),
        ("CS1", "4", "2026-01-09T00:00:00Z", "TAG", TransactionState.ACTIVE),
    ]
    for station, tx_id, at, token, state in rows:
        await transactions.update(station, tx_id, _started(station, tx_id, at, token, state))


NEWEST_FIRST = [
    ("CS:3", "c"),
    ("CS2", "2"),  # 08:30:00.250Z, tied with CS1/3: the higher station id first
    ("CS1", "3"),
    ("CS2", "1"),  # three starts at 2026-01-11T08:00Z
    ("CS1", "2"),
    ("CS:3", "a/b"),  # "CS%3A3" sorts before "CS1": percent-encoded ids break ties
    ("CS1", "1"),
    ("CS1", "4"),
]


async def test_transactions_are_listed_newest_first_page_by_page(
    transactions: TransactionStore,
) -> None:
    await _history(transactions)
    for limit in (1, 2, 3, 8, 100):
        assert _keys(await _all_pages(transactions.list_transactions, limit)) == NEWEST_FIRST
    page = await transactions.list_transactions(limit=8)
    assert page.next_cursor is None
    assert page.items[0] == await transactions.get("CS:3", "c")
    assert [transaction_key(tx) for tx in page.items] == sorted(
        (transaction_key(tx) for tx in page.items), reverse=True
    )


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"station_id": "CS1"}, [("CS1", "3"), ("CS1", "2"), ("CS1", "1"), ("CS1", "4")]),
        ({"id_token": "OTHER"}, [("CS:3", "c"), ("CS1", "2")]),
        (
            {"state": TransactionState.ACTIVE},
            [("CS:3", "c"), ("CS2", "2"), ("CS1", "3"), ("CS1", "4")],
        ),
        (
            {"state": TransactionState.ENDED},
            [("CS2", "1"), ("CS1", "2"), ("CS:3", "a/b"), ("CS1", "1")],
        ),
        ({"station_id": "CS1", "state": TransactionState.ACTIVE}, [("CS1", "3"), ("CS1", "4")]),
        ({"station_id": "CS1", "state": TransactionState.ENDED}, [("CS1", "2"), ("CS1", "1")]),
        ({"id_token": "TAG", "state": TransactionState.ACTIVE}, [("CS2", "2"), ("CS1", "4")]),
        (
            {"id_token": "TAG", "state": TransactionState.ENDED},
            [("CS2", "1"), ("CS:3", "a/b"), ("CS1", "1")],
        ),
        ({"station_id": "CS1", "id_token": "TAG"}, [("CS1", "1"), ("CS1", "4")]),
        ({"station_id": "CS2", "id_token": "TAG", "state": TransactionState.ENDED}, [("CS2", "1")]),
        ({"station_id": "nobody"}, []),
        ({"started_after": "2026-01-11T08:00:00Z"}, NEWEST_FIRST[:6]),
        ({"started_after": "2026-01-11T08:00:00.001Z"}, NEWEST_FIRST[:3]),
        ({"started_before": "2026-01-11T08:00:00Z"}, NEWEST_FIRST[6:]),
        ({"started_before": "2026-01-11T09:00:00+01:00"}, NEWEST_FIRST[6:]),
        ({"started_after": "2026-01-11", "started_before": "2026-01-12"}, NEWEST_FIRST[3:6]),
        (
            {
                "started_after": "2026-01-12T08:30:00.250Z",
                "started_before": "2026-01-12T08:30:00.251Z",
            },
            NEWEST_FIRST[1:3],
        ),
        ({"station_id": "CS1", "started_before": "2026-01-11"}, [("CS1", "1"), ("CS1", "4")]),
        (
            {"state": TransactionState.ACTIVE, "station_id": "CS1", "started_after": "2026-01-10"},
            [("CS1", "3")],
        ),
        ({"id_token": "TAG", "started_after": "2026-01-12", "started_before": "2026-01-11"}, []),
    ],
)
async def test_transaction_listing_filters(
    transactions: TransactionStore, filters: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    await _history(transactions)
    for limit in (1, 2, 100):
        found = await _all_pages(transactions.list_transactions, limit, **filters)
        assert _keys(found) == expected, limit


async def test_transaction_listing_follows_updates(transactions: TransactionStore) -> None:
    await _history(transactions)

    async def listed(**filters: Any) -> list[tuple[str, str]]:
        return _keys(await _all_pages(transactions.list_transactions, 2, **filters))

    await transactions.update("CS1", "3", _end)
    assert ("CS1", "3") in await listed(state=TransactionState.ENDED, station_id="CS1")
    assert await listed(state=TransactionState.ACTIVE, station_id="CS1") == [("CS1", "4")]

    def retag(old: Transaction | None) -> Transaction:
        assert old is not None
        return msgspec.structs.replace(old, id_token="OTHER")

    await transactions.update("CS1", "4", retag)
    assert await listed(id_token="OTHER") == [("CS:3", "c"), ("CS1", "2"), ("CS1", "4")]
    assert ("CS1", "4") not in await listed(id_token="TAG")

    def earlier(old: Transaction | None) -> Transaction:  # a Started event arriving late
        assert old is not None
        return msgspec.structs.replace(old, started_at="2026-01-01T00:00:00Z")

    await transactions.update("CS:3", "c", earlier)
    everything = await listed()
    assert everything[-1] == ("CS:3", "c") and len(everything) == len(NEWEST_FIRST)
    assert await listed(station_id="CS:3") == [("CS:3", "a/b"), ("CS:3", "c")]


async def test_transaction_cursor_is_stable_under_inserts(transactions: TransactionStore) -> None:
    await _history(transactions)
    first = await transactions.list_transactions(limit=3)
    assert _keys(first.items) == NEWEST_FIRST[:3]
    # A newer one (before the cursor) and an older one (after it) arrive between two pages.
    await transactions.update("CS9", "n", _started("CS9", "n", "2026-02-01T00:00:00Z"))
    await transactions.update("CS9", "o", _started("CS9", "o", "2026-01-10T12:00:00Z"))
    rest = await _all_pages(transactions.list_transactions, 3, cursor=first.next_cursor)
    assert _keys(rest) == [*NEWEST_FIRST[3:6], ("CS9", "o"), *NEWEST_FIRST[6:]]


async def test_pointer_records_and_missing_start_times(transactions: TransactionStore) -> None:
    await _history(transactions)
    await transactions.update("CS1", "late", _started("CS1", "late", None))
    await transactions.update("CS1", "bad", _started("CS1", "bad", "yesterday"))

    def pointer(old: Transaction | None) -> Transaction:
        return Transaction(
            station_id="CS1",
            transaction_id="-1:stop",
            version="ocpp1.6",
            state=TransactionState.ENDED,
            id_token="TAG",
            started_at="2026-01-09T00:00:00Z",
            merged_into="4",
        )

    await transactions.update("CS1", "-1:stop", pointer)
    everything = _keys(await _all_pages(transactions.list_transactions, 3))
    # No start time sorts as the epoch (last); the pointer is never listed.
    assert everything == [*NEWEST_FIRST, ("CS1", "late"), ("CS1", "bad")]
    station = _keys(await _all_pages(transactions.list_transactions, 2, station_id="CS1"))
    assert station[-2:] == [("CS1", "late"), ("CS1", "bad")]
    assert ("CS1", "-1:stop") not in station
    assert await transactions.get("CS1", "-1:stop") is not None


@pytest.mark.parametrize(
    "arguments",
    [
        {"cursor": "garbage"},
        {"cursor": "WyJzdGF0aW9ucyIsIkNTMSJd"},  # a station listing's cursor
        {"cursor": "WyJ0cmFuc2FjdGlvbnMiLCJDUzEiXQ"},  # ["transactions", "CS1"]
        {"started_after": "last week"},
        {"started_before": ""},
    ],
)
async def test_transaction_listing_refuses_bad_arguments(
    transactions: TransactionStore, arguments: dict[str, Any]
) -> None:
    await _history(transactions)
    with pytest.raises(ValueError, match=r"cursor|started_"):
        await transactions.list_transactions(**arguments)
