"""In-memory stores: the embedded default of ``csms run`` and the stores of unit tests.

They live in one event loop, so a method that does not await between its read and its write
is atomic by construction. Records are copied in and out (a JSON round trip through msgspec)
so a caller mutating a returned record cannot change what is stored, just as with Redis,
and anything that would not survive Redis fails here too. Transactions are the exception:
they are immutable (frozen structs of immutable fields), so the store keeps and returns the
very objects, and a message costs no copy however long its transaction is.
"""

from __future__ import annotations

import bisect
import collections
import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote

import msgspec

from services import energy, rules
from services.models import (
    Authorization,
    BootInfo,
    ConnectorStatus,
    EnergyReading,
    EventUpdate,
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

__all__ = [
    "MemoryIdempotencyStore",
    "MemoryStationRegistry",
    "MemoryTokenStore",
    "MemoryTransactionStore",
]

_T = TypeVar("_T", StationRecord, BootInfo, TokenRecord, Transaction, ConnectorStatus)

_encoder = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}
"""A decoder per record type: a typed decoder made once decodes faster than ``decode(type=)``."""


def _copy(record: _T) -> _T:
    """A deep, storage-faithful copy of ``record``."""
    kind = type(record)
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    copied: _T = decoder.decode(_encoder.encode(record))
    return copied


class _Sorted:
    """A sorted list of distinct strings: the in-memory counterpart of a lexicographic
    Redis sorted set (insertion is a memmove, fine for the sizes an embedded CSMS holds)."""

    def __init__(self) -> None:
        self._items: list[str] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: str) -> None:
        index = bisect.bisect_left(self._items, item)
        if index == len(self._items) or self._items[index] != item:
            self._items.insert(index, item)

    def discard(self, item: str) -> None:
        index = bisect.bisect_left(self._items, item)
        if index < len(self._items) and self._items[index] == item:
            del self._items[index]

    def ascending(self, after: str | None, start: str) -> Iterator[str]:
        """Items greater than ``after`` and not less than ``start``, in order."""
        index = bisect.bisect_left(self._items, start)
        if after is not None:
            index = max(index, bisect.bisect_right(self._items, after))
        while index < len(self._items):
            yield self._items[index]
            index += 1

    def descending(self, upper: str | None, lower: str | None) -> Iterator[str]:
        """Items in ``[lower, upper)``, last first."""
        index = len(self._items) if upper is None else bisect.bisect_left(self._items, upper)
        stop = 0 if lower is None else bisect.bisect_left(self._items, lower)
        while index > stop:
            index -= 1
            yield self._items[index]


def _list_by_id(
    ids: _Sorted,
    query: rules.IdQuery,
    load: Callable[[str], _T],
    matches: Callable[[_T], bool],
    kind: str,
    position: Callable[[_T], str],
) -> Page[_T]:
    found: list[_T] = []
    for record_id in ids.ascending(query.after, query.prefix):
        if not record_id.startswith(query.prefix):
            break
        record = load(record_id)
        if matches(record):
            found.append(_copy(record))
            if len(found) > query.limit:
                break
    return rules.page_of(found, query.limit, position, kind)


class MemoryStationRegistry:
    """:class:`~services.interfaces.StationRegistry` in a dict."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._stations: dict[str, StationRecord] = {}
        self._connectors: dict[str, dict[tuple[int, int], ConnectorStatus]] = {}
        self._faulted: set[str] = set()
        self._leases: dict[str, float] = {}
        """Gateway → Unix time its lease on its stations runs out."""
        self._held: dict[str, set[str]] = {}
        """Gateway → stations it was last recorded holding."""
        self._clock = clock
        self._ids = _Sorted()
        self._buckets: collections.Counter[rules.StationBucket] = collections.Counter()
        """(presence, registration) → stations (see rules.station_bucket)."""

    def _store(self, record: StationRecord) -> None:
        """Store ``record`` (owned by the registry from now on), keeping the listing order
        and the counts."""
        old = self._stations.get(record.station_id)
        if old is None:
            self._ids.add(record.station_id)
        else:
            self._buckets[rules.station_bucket(old)] -= 1
        self._buckets[rules.station_bucket(record)] += 1
        self._stations[record.station_id] = record

    async def get(self, station_id: str) -> StationRecord | None:
        record = self._stations.get(station_id)
        return _copy(record) if record is not None else None

    async def put(self, record: StationRecord) -> None:
        self._store(_copy(record))

    async def list_stations(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        online: bool | None = None,
        registration: RegistrationStatus | None = None,
        prefix: str | None = None,
    ) -> Page[StationRecord]:
        query = rules.station_query(cursor, limit, online, registration, prefix)
        return _list_by_id(
            self._ids,
            query,
            self._stations.__getitem__,
            query.matches,
            rules.STATION_CURSOR,
            lambda record: record.station_id,
        )

    async def station_counts(self) -> StationCounts:
        counts = rules.station_counts(self._buckets)
        return msgspec.structs.replace(counts, faulted=len(self._faulted))

    async def provision(self, station_id: str, registration: RegistrationStatus) -> None:
        """Declare the station known with ``registration``, keeping its other state (used to
        apply configuration at start-up without wiping connection or boot facts)."""
        record = rules.provisioned(self._stations.get(station_id), station_id, registration)
        if record is not None:
            self._store(record)

    async def set_registration(self, station_id: str, status: RegistrationStatus) -> None:
        self._store(rules.with_registration(self._stations.get(station_id), station_id, status))

    async def set_credentials(
        self, station_id: str, credentials: StationCredentials
    ) -> StationRecord:
        record = rules.with_credentials(self._stations.get(station_id), station_id, credentials)
        self._store(_copy(record))
        return _copy(record)

    async def set_password_hash(self, station_id: str, password_hash: str) -> bool:
        record = rules.with_password_hash(self._stations.get(station_id), password_hash)
        if record is None:
            return False
        self._store(record)
        return True

    async def set_pending_password_hash(
        self, station_id: str, password_hash: str | None, *, replacing: str | None = None
    ) -> bool:
        record = rules.with_pending_password_hash(
            self._stations.get(station_id), password_hash, replacing
        )
        if record is None:
            return False
        self._store(record)
        return True

    async def promote_password_hash(self, station_id: str, password_hash: str) -> bool:
        record = rules.with_proven_password_hash(self._stations.get(station_id), password_hash)
        if record is None:
            return False
        self._store(record)
        return True

    async def set_pending_security_profile(self, station_id: str, profile: int) -> bool:
        record = rules.with_pending_security_profile(self._stations.get(station_id), profile)
        if record is None:
            return False
        self._store(record)
        return True

    async def raise_security_profile(self, station_id: str, profile: int) -> int | None:
        record = rules.with_security_profile_reached(self._stations.get(station_id), profile)
        if record is None:
            return None
        self._store(record)
        return record.security_profile

    async def record_boot(
        self,
        station_id: str,
        version: str,
        boot: BootInfo,
        registration: RegistrationStatus,
        at: str,
    ) -> StationRecord:
        record = rules.with_boot(
            self._stations.get(station_id), station_id, version, _copy(boot), registration, at
        )
        self._store(record)
        return _copy(record)

    async def mark_connected(
        self,
        station_id: str,
        version: str,
        gateway: str,
        connection: str,
        at: str,
        session: str | None = None,
        lease: float | None = None,
    ) -> None:
        old = self._stations.get(station_id)
        record = rules.with_connection(old, station_id, version, gateway, connection, at, session)
        if record is not None:
            self._store(record)
            if old is not None and old.gateway is not None and old.gateway != gateway:
                self._held.get(old.gateway, set()).discard(station_id)
            self._held.setdefault(gateway, set()).add(station_id)
            self._leases.setdefault(gateway, self._clock() + (lease or rules.FIRST_LEASE))

    async def mark_disconnected(self, station_id: str, connection: str, at: str) -> bool:
        old = self._stations.get(station_id)
        record = rules.without_connection(old, connection, at)
        if record is None:
            return False
        self._store(record)
        if old is not None and old.gateway is not None:
            self._held.get(old.gateway, set()).discard(station_id)
        return True

    async def gateway_alive(self, gateway: str, until: float) -> None:
        self._leases[gateway] = until

    async def gateway_gone(self, gateway: str, at: str, session: str | None = None) -> list[str]:
        offline = []
        held = self._held.get(gateway, set())
        for station_id in sorted(held):
            record = rules.without_gateway(self._stations.get(station_id), gateway, at, session)
            if record is not None:
                self._store(record)
                offline.append(station_id)
            current = self._stations.get(station_id)
            if current is None or current.gateway != gateway:
                held.discard(station_id)
        if not held:
            # Stations announced again in a newer session keep the gateway's lease.
            self._held.pop(gateway, None)
            self._leases.pop(gateway, None)
        return offline

    async def expired_gateways(self, now: float) -> list[str]:
        return sorted(gateway for gateway, until in self._leases.items() if until <= now)

    async def touch(self, station_id: str, at: str) -> None:
        record = rules.with_last_seen(self._stations.get(station_id), at)
        if record is not None:
            self._store(record)

    async def set_connector_status(self, station_id: str, status: ConnectorStatus) -> None:
        connectors = self._connectors.setdefault(station_id, {})
        connectors[(status.evse_id, status.connector_id)] = _copy(status)
        if any(known.status == "Faulted" for known in connectors.values()):
            self._faulted.add(station_id)
        else:
            self._faulted.discard(station_id)

    async def connector_statuses(self, station_id: str) -> list[ConnectorStatus]:
        connectors = self._connectors.get(station_id, {})
        return [_copy(connectors[key]) for key in sorted(connectors)]

    async def delete(self, station_id: str) -> bool:
        self._connectors.pop(station_id, None)
        self._faulted.discard(station_id)
        record = self._stations.pop(station_id, None)
        if record is None:
            return False
        self._ids.discard(station_id)
        self._buckets[rules.station_bucket(record)] -= 1
        if record.gateway is not None:
            self._held.get(record.gateway, set()).discard(station_id)
        return True


class MemoryTokenStore:
    """:class:`~services.interfaces.TokenStore` in a dict.

    ``accept_unknown=True`` is the first-try mode: tokens not provisioned are Accepted.
    ``clock`` returns the current UTC time (tests pass a fixed one).
    """

    def __init__(
        self,
        *,
        accept_unknown: bool = False,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._tokens: dict[str, TokenRecord] = {}
        self._ids = _Sorted()
        self._accept_unknown = accept_unknown
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    async def authorize(
        self, id_token: str, token_type: str | None = None, station_id: str | None = None
    ) -> Authorization:
        return rules.decide_token(
            self._tokens.get(id_token),
            self._clock(),
            token_type=token_type,
            accept_unknown=self._accept_unknown,
        )

    async def put(self, record: TokenRecord) -> None:
        self._tokens[record.id_token] = _copy(record)
        self._ids.add(record.id_token)

    async def list_tokens(
        self, *, cursor: str | None = None, limit: int = 100, prefix: str | None = None
    ) -> Page[TokenRecord]:
        query = rules.token_query(cursor, limit, prefix)
        return _list_by_id(
            self._ids,
            query,
            self._tokens.__getitem__,
            lambda _: True,
            rules.TOKEN_CURSOR,
            lambda record: record.id_token,
        )

    async def delete(self, id_token: str) -> bool:
        self._ids.discard(id_token)
        return self._tokens.pop(id_token, None) is not None

    async def get(self, id_token: str) -> TokenRecord | None:
        """The stored record (not part of the protocol; for tools and tests)."""
        record = self._tokens.get(id_token)
        return _copy(record) if record is not None else None


class MemoryTransactionStore:
    """:class:`~services.interfaces.TransactionStore` in a dict, with the same indexes as
    the Redis store (active transactions per station, per token; sort keys of all of them,
    per station, per token, per state) so lookups and listings stay cheap. Readings and
    applied seqNos are kept next to the records, appended to, never copied."""

    def __init__(self, *, first_id: int = 1) -> None:
        self._transactions: dict[tuple[str, str], Transaction] = {}
        self._readings: dict[tuple[str, str], list[EnergyReading]] = {}
        """Readings of each transaction, in arrival order (see energy.ordered_readings)."""
        self._seq_nos: dict[tuple[str, str], set[int]] = {}
        self._active_by_station: dict[str, set[str]] = {}
        self._active_by_token: dict[str, set[tuple[str, str]]] = {}
        self._sorted: dict[rules.TransactionIndex, _Sorted] = {}
        self._last_id = first_id - 1

    async def next_transaction_id(self) -> int:
        self._last_id = rules.next_after(self._last_id)
        return self._last_id

    async def get(self, station_id: str, transaction_id: str) -> Transaction | None:
        return self._transactions.get((station_id, transaction_id))

    async def update(
        self,
        station_id: str,
        transaction_id: str,
        change: Callable[[Transaction | None], Transaction | TransactionChange],
    ) -> Transaction:
        return self._apply(station_id, transaction_id, change, None).after

    async def update_event(
        self,
        station_id: str,
        transaction_id: str,
        seq_no: int,
        change: Callable[[Transaction | None], Transaction | TransactionChange],
    ) -> EventUpdate:
        return self._apply(station_id, transaction_id, change, seq_no)

    async def readings(self, station_id: str, transaction_id: str) -> list[EnergyReading]:
        key = (station_id, transaction_id)
        tx = self._transactions.get(key)
        arrival_from = tx.meter.arrival_from if tx is not None and tx.meter is not None else None
        return energy.ordered_readings(self._readings.get(key, []), arrival_from)

    async def seq_nos(self, station_id: str, transaction_id: str) -> list[int]:
        return sorted(self._seq_nos.get((station_id, transaction_id), ()))

    def _apply(
        self,
        station_id: str,
        transaction_id: str,
        change: Callable[[Transaction | None], Transaction | TransactionChange],
        seq_no: int | None,
    ) -> EventUpdate:
        key = (station_id, transaction_id)
        old = self._transactions.get(key)
        applied = self._seq_nos.get(key)
        if old is not None and seq_no is not None and applied is not None and seq_no in applied:
            return EventUpdate(old, old, False)
        new, readings = rules.changed_transaction(station_id, transaction_id, change(old))
        previous = old.meter if old is not None else None
        plan = energy.advance(previous, new, readings)
        if plan is None:
            plan = energy.rebuild(self._readings.get(key, []), new, readings, previous)
        new = msgspec.structs.replace(
            energy.derived(new, plan.summary), last_seq_no=rules.last_seq_no(old, seq_no)
        )
        self._unindex(old)
        self._transactions[key] = new
        self._index(new)
        if plan.added:
            self._readings.setdefault(key, []).extend(plan.added)
        if seq_no is not None:
            self._seq_nos.setdefault(key, set()).add(seq_no)
        removed, added = rules.transaction_index_changes(old, new)
        for index, sort_key in removed:
            entries = self._sorted[index]
            entries.discard(sort_key)
            if not entries:
                del self._sorted[index]
        for index, sort_key in added:
            self._sorted.setdefault(index, _Sorted()).add(sort_key)
        return EventUpdate(old, new, True)

    async def list_transactions(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        station_id: str | None = None,
        state: TransactionState | None = None,
        id_token: str | None = None,
        started_after: str | None = None,
        started_before: str | None = None,
    ) -> Page[Transaction]:
        query = rules.transaction_query(
            cursor, limit, station_id, state, id_token, started_after, started_before
        )
        if rules.lists_active_set(query):
            if query.station_id is not None:
                ids = self._active_by_station.get(query.station_id, set())
                keys = [(query.station_id, tx_id) for tx_id in ids]
            else:
                keys = list(self._active_by_token.get(query.id_token or "", set()))
            return rules.active_page(query, [self._transactions[key] for key in keys])
        index, _ = rules.transaction_source(query)
        found: list[Transaction] = []
        for sort_key in self._sorted.get(index, _Sorted()).descending(query.upper, query.lower):
            tx = self._transactions[_record_key(sort_key)]
            if query.matches(tx, sort_key):
                found.append(tx)
                if len(found) > query.limit:
                    break
        return rules.page_of(found, query.limit, rules.transaction_key, rules.TRANSACTION_CURSOR)

    async def active(self, station_id: str) -> list[Transaction]:
        ids = sorted(self._active_by_station.get(station_id, ()))
        return [self._transactions[(station_id, tx_id)] for tx_id in ids]

    async def find_by_token(self, id_token: str) -> list[Transaction]:
        keys = sorted(self._active_by_token.get(id_token, ()))
        return [self._transactions[key] for key in keys]

    def _index(self, tx: Transaction) -> None:
        if not rules.is_active(tx):
            return
        self._active_by_station.setdefault(tx.station_id, set()).add(tx.transaction_id)
        if tx.id_token is not None:
            keys = self._active_by_token.setdefault(tx.id_token, set())
            keys.add((tx.station_id, tx.transaction_id))

    def _unindex(self, tx: Transaction | None) -> None:
        if tx is None:
            return
        station_ids = self._active_by_station.get(tx.station_id)
        if station_ids is not None:
            station_ids.discard(tx.transaction_id)
            if not station_ids:
                del self._active_by_station[tx.station_id]
        if tx.id_token is not None:
            keys = self._active_by_token.get(tx.id_token)
            if keys is not None:
                keys.discard((tx.station_id, tx.transaction_id))
                if not keys:
                    del self._active_by_token[tx.id_token]


def _record_key(sort_key: str) -> tuple[str, str]:
    """(station, transaction) of a transaction sort key."""
    station, transaction = rules.transaction_ref(sort_key).split(":")
    return unquote(station), unquote(transaction)


class MemoryIdempotencyStore:
    """:class:`~services.interfaces.IdempotencyStore` in a dict with monotonic-clock TTLs.

    Expired entries are dropped when touched and swept every ``sweep_every`` claims, so
    memory stays bounded by the traffic of one TTL.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, sweep_every: int = 1024
    ) -> None:
        self._entries: dict[str, tuple[object, float]] = {}
        self._clock = clock
        self._sweep_every = sweep_every
        self._claims = 0

    async def claim(self, key: str, owner: str, ttl: float) -> bytes | bool:
        now = self._clock()
        self._claims += 1
        if self._claims % self._sweep_every == 0:
            self._sweep(now)
        entry = self._entries.get(key)
        if entry is not None and entry[1] > now:
            value = entry[0]
            if isinstance(value, bytes):
                return value
            if value == owner:
                return False
        self._entries[key] = (owner, now + ttl)
        return True

    async def complete(self, key: str, answer: bytes, ttl: float) -> None:
        self._entries[key] = (bytes(answer), self._clock() + ttl)

    async def release(self, key: str, owner: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] == owner:
            del self._entries[key]

    def _sweep(self, now: float) -> None:
        expired = [key for key, (_, deadline) in self._entries.items() if deadline <= now]
        for key in expired:
            del self._entries[key]
