"""The integration points of the CSMS: small typed interfaces.

Managers hold no state; everything lives behind these. Each has an in-memory implementation
(:mod:`services.memory`, embedded default and unit tests) and a Redis one
(:mod:`services.redis_store`). Operators can plug in their own TokenStore or TariffService by
naming a ``module:factory`` in the settings (see :mod:`services.loader`).

Every method is async and may raise :class:`StoreUnavailable` when its backend cannot be
reached; the manager turns that into a prompt CallError to the station.

The read side (``list_*`` methods, :class:`StationCounts`) is for operators: listings return a
:class:`~services.models.Page` with an opaque cursor and raise ``ValueError`` for a cursor
they did not make, a ``limit`` outside 1 to :data:`~services.models.MAX_PAGE_SIZE` or an
unreadable time bound (the API answers 400).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from csms.errors import Unavailable
from services.models import (
    Authorization,
    BootInfo,
    ConnectorStatus,
    Cost,
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


class StoreUnavailable(Unavailable):
    """A backing store (Redis, an operator's service) could not be reached in time."""


@runtime_checkable
class StationRegistry(Protocol):
    """Stations, their registration, boot info, connection state and connector statuses."""

    async def get(self, station_id: str) -> StationRecord | None: ...

    async def put(self, record: StationRecord) -> None:
        """Create or replace a station record (provisioning)."""
        ...

    async def set_registration(self, station_id: str, status: RegistrationStatus) -> None:
        """Change the registration status (creating an unknown station's record if needed)."""
        ...

    async def provision(self, station_id: str, registration: RegistrationStatus) -> None:
        """Declare the station known with ``registration``, keeping its other state
        (connection, boot facts, credentials)."""
        ...

    async def set_credentials(
        self, station_id: str, credentials: StationCredentials
    ) -> StationRecord:
        """Atomically apply the set fields of ``credentials`` (profile, password hash,
        certificate identity, allowed versions), keeping live state; returns the record.

        Creates a known, Pending record when the station has none.
        """
        ...

    async def set_password_hash(self, station_id: str, password_hash: str) -> bool:
        """Atomically replace only the password hash (a rotation the station accepted);
        False when the station has no record. ``ValueError`` unless it is a hash.

        A pending hash equal to ``password_hash`` is cleared in the same write (promoted)."""
        ...

    async def set_pending_password_hash(
        self, station_id: str, password_hash: str | None, *, replacing: str | None = None
    ) -> bool:
        """Atomically set (None: clear) the hash of a password being rotated, which admission
        accepts besides the current one. With ``replacing``, only when the pending hash is
        exactly that one. False when nothing changed (no record, or another pending hash).
        ``ValueError`` unless ``password_hash`` is a hash or None."""
        ...

    async def promote_password_hash(self, station_id: str, password_hash: str) -> bool:
        """The station logged in with a rotated password (``password_hash`` is the pending
        or an unsettled rotation's hash): make it current and settle the others. False when
        it is neither (nothing changes)."""
        ...

    async def set_pending_security_profile(self, station_id: str, profile: int) -> bool:
        """Atomically record that the station accepted to move up to security ``profile``;
        False when nothing changed (no record, or ``profile`` is not above the registered
        one). ``ValueError`` for a profile outside 1-3."""
        ...

    async def raise_security_profile(self, station_id: str, profile: int) -> int | None:
        """The station connected authenticated at ``profile``: when that meets its pending
        upgrade, atomically make the upgrade its registered profile and clear it. Returns the
        profile raised to, None when nothing changed."""
        ...

    async def record_boot(
        self,
        station_id: str,
        version: str,
        boot: BootInfo,
        registration: RegistrationStatus,
        at: str,
    ) -> StationRecord:
        """Store boot info, OCPP version and the registration answered; returns the record.

        Creates the record (``known=False``) when the station was not provisioned.
        """
        ...

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
        """Record that ``connection`` on ``gateway`` (in the gateway's bus ``session``) now
        owns the station (newest wins). A gateway without a lease gets one of ``lease``
        seconds (default :data:`services.rules.FIRST_LEASE`) until its heartbeats renew it."""
        ...

    async def mark_disconnected(self, station_id: str, connection: str, at: str) -> bool:
        """Mark offline only if ``connection`` still owns the station; True when it did."""
        ...

    async def touch(self, station_id: str, at: str) -> None:
        """Update last-seen (every message from the station)."""
        ...

    async def gateway_alive(self, gateway: str, until: float) -> None:
        """Set ``gateway``'s lease on the stations it holds to end at Unix time ``until``
        (its heartbeat says so; it replaces the provisional lease a first connection gets)."""
        ...

    async def gateway_gone(self, gateway: str, at: str, session: str | None = None) -> list[str]:
        """``gateway`` stopped or died: mark offline every station it still holds (a station
        that moved to another gateway since is left alone; with ``session``, only stations
        announced in that bus session); returns those marked offline."""
        ...

    async def expired_gateways(self, now: float) -> list[str]:
        """Gateways holding stations whose lease ran out before Unix time ``now``."""
        ...

    async def set_connector_status(self, station_id: str, status: ConnectorStatus) -> None: ...

    async def connector_statuses(self, station_id: str) -> list[ConnectorStatus]: ...

    async def list_stations(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        online: bool | None = None,
        registration: RegistrationStatus | None = None,
        prefix: str | None = None,
    ) -> Page[StationRecord]:
        """Station records in station id order (code point order), with ``last_seen`` as
        :meth:`get` gives it. ``prefix``: ids starting with it; ``online``: presence;
        ``registration``: that registration status. ``cursor``: a previous page's
        ``next_cursor`` (the same filters are expected)."""
        ...

    async def station_counts(self) -> StationCounts:
        """How many stations there are, online and offline, per registration status, and
        faulted (a connector whose latest status is Faulted), each a bounded-cost read."""
        ...

    async def delete(self, station_id: str) -> bool:
        """Forget the station: its record (credentials included), last-seen time, connector
        statuses and every index entry, so listings and counts no longer show it. Its
        transactions are another store's and stay. False when there was no record."""
        ...


@runtime_checkable
class TokenStore(Protocol):
    """Decides whether an idToken may charge."""

    async def authorize(
        self, id_token: str, token_type: str | None = None, station_id: str | None = None
    ) -> Authorization:
        """Decision for this token now: Accepted, Blocked, Expired, Invalid, Unknown, ...

        Implementations report Expired for a token whose expiry is in the past, whatever
        its stored status.
        """
        ...

    async def put(self, record: TokenRecord) -> None:
        """Provision or replace a token."""
        ...


@runtime_checkable
class TokenDirectory(Protocol):
    """A token store that can also list and delete its tokens (the built-in ones can; an
    operator's :class:`TokenStore` plug-in need not: check with ``isinstance``)."""

    async def list_tokens(
        self, *, cursor: str | None = None, limit: int = 100, prefix: str | None = None
    ) -> Page[TokenRecord]:
        """Token records in id order; ``prefix``: ids starting with it."""
        ...

    async def delete(self, id_token: str) -> bool:
        """Forget the token (it is then Unknown, or Accepted in first-try mode); False when
        there was none."""
        ...


@runtime_checkable
class TransactionStore(Protocol):
    """Charging transactions, written atomically so two managers never lose an update."""

    async def next_transaction_id(self) -> int:
        """A new OCPP 1.6 transactionId, unique across the whole fleet (positive int32)."""
        ...

    async def get(self, station_id: str, transaction_id: str) -> Transaction | None:
        """The transaction record: bounded in size whatever the length of the session (its
        readings and seqNos are not in it; see :meth:`readings`, :meth:`seq_nos`)."""
        ...

    async def update(
        self,
        station_id: str,
        transaction_id: str,
        change: Callable[[Transaction | None], Transaction | TransactionChange],
    ) -> Transaction:
        """Atomic read-modify-write: ``change`` gets the stored transaction (or None) and
        returns the new one, which is stored and returned. ``change`` may be called more
        than once (optimistic concurrency), so it must not have side effects.

        ``change`` returns a :class:`~services.models.TransactionChange` to add energy
        readings; they are stored next to the record in the same atomic write. The store
        keeps what is derived from them: ``meter`` and ``energy_wh`` (the energy of the meter
        start and stop and the readings, :func:`services.energy.energy_wh`; a ``change``'s
        own ``energy_wh`` is kept only when there is nothing to compute it from) and
        ``last_seq_no``. A reading later than every stored one costs constant time; an older
        one has the store read the transaction's readings to rebuild the aggregate."""
        ...

    async def update_event(
        self,
        station_id: str,
        transaction_id: str,
        seq_no: int,
        change: Callable[[Transaction | None], Transaction | TransactionChange],
    ) -> EventUpdate:
        """:meth:`update` for an event numbered ``seq_no`` (a 2.0.1 TransactionEvent's):
        applied at most once per seqNo. When ``seq_no`` was applied before, ``change`` is
        not called and nothing is written (``applied`` False); otherwise ``seq_no`` is
        recorded with the change, atomically. Constant cost per event."""
        ...

    async def readings(self, station_id: str, transaction_id: str) -> list[EnergyReading]:
        """The transaction's energy-register readings, in the order its energy counts them:
        by time (arrival order among equal times; from a reading with an unreadable time
        on, arrival order). Duplicates (same time and value) are stored once. Empty for an
        unknown transaction. Reads them all: for detail views and tools."""
        ...

    async def seq_nos(self, station_id: str, transaction_id: str) -> list[int]:
        """The 2.0.1 seqNos applied to the transaction, ascending (for tools and tests)."""
        ...

    async def active(self, station_id: str) -> list[Transaction]:
        """Transactions of the station that have not ended."""
        ...

    async def find_by_token(self, id_token: str) -> list[Transaction]:
        """Active transactions started with ``id_token`` (ConcurrentTx checks)."""
        ...

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
        """Transactions newest first by start time (ties: descending station id, then
        transaction id, both percent-encoded; see :func:`services.rules.transaction_key`),
        filtered by station, state, idToken and start time: ``started_after <= start <
        started_before`` (ISO 8601, compared to the millisecond). A transaction without a
        start time sorts as started at the Unix epoch. The 1.6 pointer records of stops
        applied to another transaction are not listed (:func:`services.rules.is_listed`)."""
        ...


@runtime_checkable
class TariffService(Protocol):
    """Prices a transaction."""

    async def price(self, transaction: Transaction) -> Cost:
        """Cost of ``transaction`` as of its latest readings (final once it has ended)."""
        ...


@runtime_checkable
class IdempotencyStore(Protocol):
    """Remembers answers to station Calls so a repeated Call (same station, message id,
    action and payload) gets the same answer without the work being done twice."""

    async def claim(self, key: str, owner: str, ttl: float) -> bytes | bool:
        """Try to take ``key`` for ``owner`` (one delivery attempt on one worker).

        Returns the stored answer (bytes) when the work was already done; ``False`` when the
        same ``owner`` holds the claim (a redelivered copy of a message this worker is
        handling right now); ``True`` otherwise: do the work, then :meth:`complete`.

        A claim held by another owner is taken over. Claims are bound to the live attempt:
        the gateway sends a Call again only once it has given up on the earlier attempt
        (answered it InternalError), and a copy redelivered to another worker means the first
        worker lost its connection. A claim left behind by a crashed worker or applied late
        by a stalled store therefore never swallows a retry.
        """
        ...

    async def complete(self, key: str, answer: bytes, ttl: float) -> None:
        """Store the answer for ``key``."""
        ...

    async def release(self, key: str, owner: str) -> None:
        """Drop an unfinished claim so a retry can do the work."""
        ...


@dataclass(frozen=True, slots=True)
class ReadAhead:
    """What a station Call's handler is about to read, so a :class:`CallUnit` can fetch it
    with the claim instead of in a round trip of its own. A hint only: whatever the handler
    reads that is not named here is read when it asks."""

    station_id: str
    """The station record (every handler checks the registration)."""
    tokens: tuple[str, ...] = ()
    """idTokens whose records are read (authorization)."""
    transactions: tuple[str, ...] = ()
    """The station's transactions whose records are read."""
    seq_no: tuple[str, int] | None = None
    """A transaction of the station and a seqNo: whether it was applied."""
    active: bool = False
    """The station's active transactions."""
    token_transactions: tuple[str, ...] = ()
    """idTokens whose active transactions are read (ConcurrentTx)."""
    new_transaction_id: bool = False
    """A 1.6 transactionId is taken (spent even if the handler then answers with another)."""


@runtime_checkable
class CallUnit(Protocol):
    """One station Call as one unit of work: ``async with`` it around the claim and the
    handler; the handler's store writes made meanwhile are held until :meth:`complete`."""

    async def __aenter__(self) -> CallUnit: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def claim(self) -> bytes | bool:
        """:meth:`IdempotencyStore.claim`; the station's last-seen time is recorded and its
        :class:`ReadAhead` fetched with it."""
        ...

    async def complete(self, answer: bytes, ttl: float) -> bool:
        """Store the handler's writes and the answer, atomically. False when something they
        were decided from changed meanwhile: nothing is stored and the claim stays; the Call
        is to be handled again outside the unit (where each write is checked on its own)."""
        ...

    async def release(self) -> None:
        """Drop the handler's writes and the claim (a retry does the work)."""
        ...


@runtime_checkable
class CallUnits(Protocol):
    """An :class:`IdempotencyStore` that runs station Calls as :class:`CallUnit` s (the
    Redis one: a Call then costs two round trips whatever its handler reads and writes)."""

    def unit(self, key: str, owner: str, ttl: float, *, ahead: ReadAhead, seen_at: str) -> CallUnit:
        """The unit of the Call with idempotency ``key``, claimed for ``owner`` for ``ttl``
        seconds, from a station last seen at ``seen_at``."""
        ...
