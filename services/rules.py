"""Pure decision rules shared by every store implementation.

The in-memory and Redis stores differ only in how they read and write records; what a new
record looks like after a boot, a connect or a disconnect, and what a token lookup decides,
lives here once so the two can never disagree. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar
from urllib.parse import quote

import msgspec

from csms.credentials import is_password_hash
from services.models import (
    MAX_PAGE_SIZE,
    MAX_UNSETTLED_PASSWORDS,
    Authorization,
    AuthorizationStatus,
    BootInfo,
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

__all__ = [
    "ALL_TRANSACTIONS",
    "FIRST_LEASE",
    "INT32_MAX",
    "STATION_BUCKETS",
    "STATION_CURSOR",
    "TOKEN_CURSOR",
    "TRANSACTION_CURSOR",
    "IdQuery",
    "StationBucket",
    "StationQuery",
    "TransactionIndex",
    "TransactionQuery",
    "active_page",
    "changed_transaction",
    "check_changed",
    "check_limit",
    "decide_token",
    "decode_cursor",
    "encode_cursor",
    "encode_id",
    "is_active",
    "is_listed",
    "last_seq_no",
    "lists_active_set",
    "new_station",
    "next_after",
    "page_of",
    "parse_time",
    "provisioned",
    "station_bucket",
    "station_buckets",
    "station_counts",
    "station_query",
    "token_query",
    "transaction_entries",
    "transaction_index_changes",
    "transaction_key",
    "transaction_query",
    "transaction_ref",
    "transaction_source",
    "with_boot",
    "with_connection",
    "with_credentials",
    "with_last_seen",
    "with_password_hash",
    "with_pending_password_hash",
    "with_pending_security_profile",
    "with_proven_password_hash",
    "with_registration",
    "with_security_profile_reached",
    "without_connection",
    "without_gateway",
    "without_unsettled_password_hash",
]

INT32_MAX = 2**31 - 1
"""OCPP 1.6 transactionId is a signed 32-bit integer; ids wrap back to 1 after this."""


def parse_time(value: str | None) -> dt.datetime | None:
    """Parse an OCPP ISO-8601 date-time into an aware UTC datetime; None when unreadable.

    Naive values are taken as UTC (OCPP requires UTC; some stations omit the offset).
    """
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


# --- tokens ------------------------------------------------------------------------------


def decide_token(
    record: TokenRecord | None,
    now: dt.datetime,
    *,
    token_type: str | None = None,
    accept_unknown: bool = False,
) -> Authorization:
    """The authorization for one presentation of a token, given its stored record.

    - no record (or a record for another token type) -> Unknown, or Accepted in first-try
      mode (``accept_unknown``);
    - an expiry in the past -> Expired whatever the stored status (an unreadable expiry also
      counts as expired: failing closed is the safe side for something that unlocks energy);
    - otherwise the stored status, with its expiry and group.
    """
    if record is None or (
        token_type is not None and record.token_type is not None and record.token_type != token_type
    ):
        if accept_unknown:
            return Authorization(status=AuthorizationStatus.ACCEPTED)
        return Authorization(status=AuthorizationStatus.UNKNOWN)
    if record.expiry is not None:
        expiry = parse_time(record.expiry)
        if expiry is None or expiry <= now:
            return Authorization(
                status=AuthorizationStatus.EXPIRED, expiry=record.expiry, group_id=record.group_id
            )
    return Authorization(status=record.status, expiry=record.expiry, group_id=record.group_id)


# --- stations ----------------------------------------------------------------------------


def new_station(station_id: str) -> StationRecord:
    """Record for a station first seen without provisioning (admitted by policy)."""
    return StationRecord(station_id=station_id, known=False)


def with_registration(
    record: StationRecord | None, station_id: str, status: RegistrationStatus
) -> StationRecord:
    """``record`` (or a new unknown station) with its registration changed."""
    base = record if record is not None else new_station(station_id)
    return msgspec.structs.replace(base, registration=status)


def provisioned(
    record: StationRecord | None, station_id: str, registration: RegistrationStatus
) -> StationRecord | None:
    """``record`` as the operator's configuration declares it (known, with ``registration``),
    keeping everything else it holds; None when it already is."""
    if record is None:
        return StationRecord(station_id=station_id, registration=registration, known=True)
    if record.known and record.registration == registration:
        return None
    return msgspec.structs.replace(record, known=True, registration=registration)


def with_credentials(
    record: StationRecord | None, station_id: str, credentials: StationCredentials
) -> StationRecord:
    """``record`` with the credentials' set fields replaced and everything else kept.

    A station without a record becomes a provisioned one (``known``) awaiting the operator's
    registration (Pending): giving a station credentials is provisioning it.
    """
    base = record if record is not None else StationRecord(station_id=station_id, known=True)
    changes: dict[str, object] = {}
    if not isinstance(credentials.security_profile, msgspec.UnsetType):
        changes["security_profile"] = credentials.security_profile
        pending = base.pending_security_profile
        if pending is not None and pending <= credentials.security_profile:
            changes["pending_security_profile"] = None  # the operator already moved it up
    if not isinstance(credentials.password_hash, msgspec.UnsetType):
        changes["password_hash"] = credentials.password_hash
        changes["pending_password_hash"] = None  # the operator's password ends a rotation
        changes["unsettled_password_hashes"] = []
    if not isinstance(credentials.certificate_identity, msgspec.UnsetType):
        changes["certificate_identity"] = credentials.certificate_identity
    if not isinstance(credentials.allowed_versions, msgspec.UnsetType):
        changes["allowed_versions"] = list(credentials.allowed_versions)
    return msgspec.structs.replace(base, **changes)


def with_password_hash(record: StationRecord | None, password_hash: str) -> StationRecord | None:
    """``record`` with ``password_hash`` as its current password: the station accepted it or
    proved it uses it. None when there is no record (a rotation never creates a station).
    ``ValueError`` unless ``password_hash`` is a hash.

    The station uses this password now, so every unsettled earlier rotation is settled (they
    stop being accepted); a newer rotation still pending stays pending.
    """
    if not is_password_hash(password_hash):
        raise ValueError("password_hash is not a password hash")
    if record is None:
        return None
    pending = record.pending_password_hash
    return msgspec.structs.replace(
        record,
        password_hash=password_hash,
        pending_password_hash=None if pending == password_hash else pending,
        unsettled_password_hashes=[],
    )


def with_pending_password_hash(
    record: StationRecord | None, password_hash: str | None, replacing: str | None
) -> StationRecord | None:
    """``record`` with its pending password hash set (None clears it); None when there is no
    record or, with ``replacing``, when the pending hash is not that one (so a stale rotation's
    answer cannot clear a newer rotation). ``ValueError`` unless ``password_hash`` is a hash.

    A new rotation never discards the one before: a pending hash it replaces joins
    ``unsettled_password_hashes`` (its outcome was never learned, so the station may use it).
    Clearing (``password_hash`` None) is for a rotation the station certainly did not take.
    """
    if password_hash is not None and not is_password_hash(password_hash):
        raise ValueError("password_hash is not a password hash")
    if record is None:
        return None
    if replacing is not None and record.pending_password_hash != replacing:
        if password_hash is None and replacing in record.unsettled_password_hashes:
            # The refusal of an older rotation arrived after a newer one began.
            return without_unsettled_password_hash(record, replacing)
        return None
    unsettled = list(record.unsettled_password_hashes)
    previous = record.pending_password_hash
    if password_hash is not None and previous is not None and previous != password_hash:
        unsettled = [*(h for h in unsettled if h != previous), previous]
        del unsettled[: max(0, len(unsettled) - MAX_UNSETTLED_PASSWORDS)]
    return msgspec.structs.replace(
        record, pending_password_hash=password_hash, unsettled_password_hashes=unsettled
    )


def with_proven_password_hash(
    record: StationRecord | None, password_hash: str
) -> StationRecord | None:
    """``record`` with ``password_hash`` made current because the station logged in with it;
    None unless it is the pending or an unsettled rotation's hash (a late event must not
    bring back a password the operator has replaced since)."""
    if record is None or (
        password_hash != record.pending_password_hash
        and password_hash not in record.unsettled_password_hashes
    ):
        return None
    return with_password_hash(record, password_hash)


def without_unsettled_password_hash(
    record: StationRecord | None, password_hash: str
) -> StationRecord | None:
    """``record`` without ``password_hash`` among the unsettled ones (the station certainly
    refused that rotation); None when it is not there."""
    if record is None or password_hash not in record.unsettled_password_hashes:
        return None
    remaining = [h for h in record.unsettled_password_hashes if h != password_hash]
    return msgspec.structs.replace(record, unsettled_password_hashes=remaining)


def with_boot(
    record: StationRecord | None,
    station_id: str,
    version: str,
    boot: BootInfo,
    registration: RegistrationStatus,
    at: str,
) -> StationRecord:
    """``record`` (or a new unknown station) after a BootNotification answered ``registration``."""
    base = record if record is not None else new_station(station_id)
    return msgspec.structs.replace(
        base, boot=boot, ocpp_version=version, registration=registration, last_boot_at=at
    )


def with_connection(
    record: StationRecord | None,
    station_id: str,
    version: str,
    gateway: str,
    connection: str,
    at: str,
    session: str | None = None,
) -> StationRecord | None:
    """``record`` now owned by ``connection``; None when nothing should change.

    The newest connection wins. Connection events can arrive out of order (two gateways,
    several managers), so a connect stamped earlier than the current owner's is ignored.
    """
    base = record if record is not None else new_station(station_id)
    if base.connection is not None and base.connection != connection:
        current, incoming = parse_time(base.connected_at), parse_time(at)
        if current is not None and incoming is not None and incoming < current:
            return None
    return msgspec.structs.replace(
        base,
        online=True,
        connection=connection,
        gateway=gateway,
        gateway_session=session,
        ocpp_version=version,
        connected_at=at,
        last_seen=at,
    )


def without_connection(
    record: StationRecord | None, connection: str, at: str
) -> StationRecord | None:
    """``record`` offline after ``connection`` closed; None when that connection no longer
    owns the station (a newer socket took over, or the disconnect was already applied)."""
    if record is None or record.connection != connection:
        return None
    return msgspec.structs.replace(
        record,
        online=False,
        connection=None,
        gateway=None,
        gateway_session=None,
        disconnected_at=at,
    )


FIRST_LEASE = 30.0
"""Seconds a gateway's stations count as held before its first presence heartbeat is seen
(each heartbeat then renews the lease)."""


def without_gateway(
    record: StationRecord | None, gateway: str, at: str, session: str | None = None
) -> StationRecord | None:
    """``record`` offline because ``gateway`` is gone; None unless that gateway still holds
    the station (it may have reconnected elsewhere since) and, with ``session``, holds it
    from that bus session (a gateway back on the broker announced it again since)."""
    if record is None or not record.online or record.gateway != gateway:
        return None
    if session is not None and record.gateway_session not in (None, session):
        return None
    return msgspec.structs.replace(
        record,
        online=False,
        connection=None,
        gateway=None,
        gateway_session=None,
        disconnected_at=at,
    )


def with_last_seen(record: StationRecord | None, at: str) -> StationRecord | None:
    """``record`` with ``last_seen`` moved forward; None when absent or not newer."""
    if record is None:
        return None
    if record.last_seen is not None:
        previous, incoming = parse_time(record.last_seen), parse_time(at)
        if previous is not None and incoming is not None and incoming <= previous:
            return None
    return msgspec.structs.replace(record, last_seen=at)


# --- transactions ------------------------------------------------------------------------


def is_active(transaction: Transaction) -> bool:
    return transaction.state is not TransactionState.ENDED


def check_changed(station_id: str, transaction_id: str, new: Transaction) -> None:
    """Refuse a ``change`` result that would file the transaction under another key."""
    if new.station_id != station_id or new.transaction_id != transaction_id:
        raise ValueError(
            f"update of transaction {station_id!r}/{transaction_id!r} returned "
            f"{new.station_id!r}/{new.transaction_id!r}; keys cannot change"
        )


def changed_transaction(
    station_id: str, transaction_id: str, result: Transaction | TransactionChange
) -> tuple[Transaction, tuple[EnergyReading, ...]]:
    """A ``change``'s result as (transaction, readings to add), its keys checked."""
    if isinstance(result, TransactionChange):
        tx, readings = result.transaction, result.readings
    else:
        tx, readings = result, ()
    check_changed(station_id, transaction_id, tx)
    return tx, readings


def last_seq_no(old: Transaction | None, seq_no: int | None) -> int | None:
    """``last_seq_no`` once ``seq_no`` (if any) is recorded for the transaction ``old``."""
    last = old.last_seq_no if old is not None else None
    if seq_no is None or (last is not None and last >= seq_no):
        return last
    return seq_no


def next_after(value: int) -> int:
    """The transaction id following ``value``, wrapping within positive int32."""
    return 1 if value >= INT32_MAX or value < 1 else value + 1


# --- read side: cursors, filters and index entries ----------------------------------------------
#
# Both store implementations list records in the same orders and filter them with the same
# predicates, defined here once; they differ only in where the ordered entries come from
# (sorted lists in memory, lexicographic sorted sets in Redis).


def encode_id(value: str) -> str:
    """Percent-encode an id (reversible; no ``:`` survives, so ids joined by ``:`` stay
    apart). The text is ASCII, so its character order is its byte order."""
    return quote(value, safe="")


def check_limit(limit: int) -> int:
    """``limit`` when it is a page size the stores accept (1 to MAX_PAGE_SIZE)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, not {limit!r}")
    return limit


_P = TypeVar("_P")
_cursor_decoder = msgspec.json.Decoder(tuple[str, str])


def encode_cursor(kind: str, position: str) -> str:
    """An opaque cursor: base64url (unpadded) of the listing's kind and the last position."""
    raw = msgspec.json.encode((kind, position))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(kind: str, cursor: str) -> str:
    """The position in ``cursor``; ``ValueError`` for anything :func:`encode_cursor` did not
    make for a listing of ``kind``."""
    try:
        text = cursor.encode("ascii")
        raw = base64.b64decode(text + b"=" * (-len(text) % 4), altchars=b"-_", validate=True)
        found, position = _cursor_decoder.decode(raw)
    except (AttributeError, UnicodeError, binascii.Error, msgspec.DecodeError):
        raise ValueError("invalid cursor") from None
    if found != kind or not position:
        raise ValueError("invalid cursor")
    return position


# Stations: listed in station id order (code point order, which is UTF-8 byte order).


class IdQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A checked listing in id order: ids after ``after`` (exclusive) starting with
    ``prefix``."""

    limit: int
    after: str | None = None
    prefix: str = ""

    def admits(self, record_id: str) -> bool:
        return (self.after is None or record_id > self.after) and record_id.startswith(self.prefix)


class StationQuery(IdQuery, frozen=True, kw_only=True):
    """A checked station listing: :class:`IdQuery` with the given presence and
    registration."""

    online: bool | None = None
    registration: RegistrationStatus | None = None

    def matches(self, record: StationRecord) -> bool:
        return (
            self.admits(record.station_id)
            and (self.online is None or record.online == self.online)
            and (self.registration is None or record.registration == self.registration)
        )


STATION_CURSOR = "stations"
TOKEN_CURSOR = "tokens"
TRANSACTION_CURSOR = "transactions"


def station_query(
    cursor: str | None,
    limit: int,
    online: bool | None,
    registration: RegistrationStatus | str | None,
    prefix: str | None,
) -> StationQuery:
    """Validate the arguments of ``list_stations`` (``ValueError`` for a bad one)."""
    return StationQuery(
        limit=check_limit(limit),
        after=decode_cursor(STATION_CURSOR, cursor) if cursor is not None else None,
        prefix=prefix or "",
        online=online,
        registration=RegistrationStatus(registration) if registration is not None else None,
    )


StationBucket = tuple[bool, RegistrationStatus]
"""(online, registration): the stations of one bucket are listed and counted together."""

STATION_BUCKETS: tuple[StationBucket, ...] = tuple(
    (online, status) for online in (True, False) for status in RegistrationStatus
)


def station_bucket(record: StationRecord) -> StationBucket:
    """The (presence, registration) a station is counted under."""
    return record.online, record.registration


def station_buckets(query: StationQuery) -> list[StationBucket]:
    """The buckets holding every station ``query`` can match."""
    return [
        bucket
        for bucket in STATION_BUCKETS
        if query.online in (None, bucket[0]) and query.registration in (None, bucket[1])
    ]


def station_counts(buckets: Mapping[StationBucket, int]) -> StationCounts:
    """StationCounts from the number of stations in each bucket."""

    def count(online: bool | None = None, registration: RegistrationStatus | None = None) -> int:
        return sum(
            number
            for (is_online, status), number in buckets.items()
            if online in (None, is_online) and registration in (None, status)
        )

    return StationCounts(
        total=count(),
        online=count(online=True),
        offline=count(online=False),
        accepted=count(registration=RegistrationStatus.ACCEPTED),
        pending=count(registration=RegistrationStatus.PENDING),
        rejected=count(registration=RegistrationStatus.REJECTED),
    )


def page_of(items: list[_P], limit: int, position: Callable[[_P], str], kind: str) -> Page[_P]:
    """The page of the first ``limit`` of ``items`` (at most ``limit + 1`` matches in listing
    order), with a cursor when there was one more."""
    if len(items) <= limit:
        return Page(items=items)
    return Page(items=items[:limit], next_cursor=encode_cursor(kind, position(items[limit - 1])))


# Tokens: listed in id order.


def token_query(cursor: str | None, limit: int, prefix: str | None) -> IdQuery:
    """Validate the arguments of ``list_tokens`` (``ValueError`` for a bad one)."""
    return IdQuery(
        limit=check_limit(limit),
        after=decode_cursor(TOKEN_CURSOR, cursor) if cursor is not None else None,
        prefix=prefix or "",
    )


# Transactions: listed newest first by start time, ties in descending (station, transaction)
# order. Each transaction has one sort key, "{start ms, 13 digits}:{station}:{transaction}"
# with both ids percent-encoded: plain text whose order is the listing order (reversed), so
# a cursor is simply the last key returned and an index is a lexicographic sorted set.

_KEY_DIGITS = 13
_MAX_MS: int = 10**_KEY_DIGITS - 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TRANSACTION_KEY = re.compile(r"[0-9]{13}:[^:]*:[^:]*")


def _ms(moment: dt.datetime) -> int:
    return min(max(int((moment - _EPOCH) // dt.timedelta(milliseconds=1)), 0), _MAX_MS)


def _time_bound(ms: int) -> str:
    return f"{ms:0{_KEY_DIGITS}d}:"


def transaction_key(tx: Transaction) -> str:
    """The listing sort key of ``tx``. A transaction without a readable start time sorts as
    if it had started at 1970-01-01T00:00:00Z (after every other)."""
    moment = parse_time(tx.started_at)
    ms = _ms(moment) if moment is not None else 0
    return f"{_time_bound(ms)}{encode_id(tx.station_id)}:{encode_id(tx.transaction_id)}"


def transaction_ref(key: str) -> str:
    """The ``{station}:{transaction}`` part of a sort key (names the record)."""
    return key[_KEY_DIGITS + 1 :]


def is_listed(tx: Transaction) -> bool:
    """Whether listings show ``tx``: every transaction but the 1.6 pointer records standing
    for a stop applied to another transaction (``merged_into``), which would show that
    charging session twice."""
    return tx.merged_into is None


class TransactionQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A checked transaction listing: sort keys in ``[lower, upper)``, newest first, with the
    given station, state and token."""

    limit: int
    lower: str | None = None
    """Inclusive lower bound on the sort key (from ``started_after``)."""
    upper: str | None = None
    """Exclusive upper bound on the sort key (the cursor, or ``started_before``)."""
    station_id: str | None = None
    state: TransactionState | None = None
    id_token: str | None = None

    def in_range(self, key: str) -> bool:
        return (self.lower is None or key >= self.lower) and (
            self.upper is None or key < self.upper
        )

    def matches(self, tx: Transaction, key: str | None = None) -> bool:
        """Whether ``tx`` (whose sort key is ``key``, computed when not given) belongs."""
        return (
            is_listed(tx)
            and (self.station_id is None or tx.station_id == self.station_id)
            and (self.state is None or tx.state == self.state)
            and (self.id_token is None or tx.id_token == self.id_token)
            and self.in_range(key if key is not None else transaction_key(tx))
        )


def _bound(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    moment = parse_time(value)
    if moment is None:
        raise ValueError(f"{name} is not an ISO 8601 date-time: {value!r}")
    return _ms(moment)


def transaction_query(
    cursor: str | None,
    limit: int,
    station_id: str | None,
    state: TransactionState | str | None,
    id_token: str | None,
    started_after: str | None,
    started_before: str | None,
) -> TransactionQuery:
    """Validate the arguments of ``list_transactions`` (``ValueError`` for a bad one).

    Start times compare at millisecond precision: ``started_after <= start < started_before``.
    """
    after = _bound(started_after, "started_after")
    before = _bound(started_before, "started_before")
    uppers = []
    if cursor is not None:
        position = decode_cursor(TRANSACTION_CURSOR, cursor)
        if not _TRANSACTION_KEY.fullmatch(position):
            raise ValueError("invalid cursor")
        uppers.append(position)
    if before is not None:
        uppers.append(_time_bound(before))
    return TransactionQuery(
        limit=check_limit(limit),
        lower=_time_bound(after) if after is not None else None,
        upper=min(uppers) if uppers else None,
        station_id=station_id,
        state=TransactionState(state) if state is not None else None,
        id_token=id_token,
    )


TransactionIndex = tuple[str, str]
"""One ordered index of transactions: ("all", ""), ("station", id), ("token", idToken) or
("state", state)."""

ALL_TRANSACTIONS: TransactionIndex = ("all", "")


def transaction_source(query: TransactionQuery) -> tuple[TransactionIndex, bool]:
    """The index a listing reads in order (the most selective one its filters name) and
    whether that index answers every filter (otherwise the others are checked on the records
    it yields, and a listing may have to skip records)."""
    named = [query.station_id, query.id_token, query.state]
    exact = sum(value is not None for value in named) <= 1
    if query.station_id is not None:
        return ("station", query.station_id), exact
    if query.id_token is not None:
        return ("token", query.id_token), exact
    if query.state is not None:
        return ("state", query.state.value), exact
    return ALL_TRANSACTIONS, exact


def lists_active_set(query: TransactionQuery) -> bool:
    """Whether ``query`` is answered from the small sets of active transactions (those of a
    station, or of a token) instead of an ordered index."""
    return query.state is TransactionState.ACTIVE and (
        query.station_id is not None or query.id_token is not None
    )


def active_page(query: TransactionQuery, candidates: Iterable[Transaction]) -> Page[Transaction]:
    """The page of ``query`` among ``candidates`` (every active transaction of its station
    or token: a handful, sorted here)."""
    keyed = sorted(
        ((transaction_key(tx), tx) for tx in candidates), key=lambda pair: pair[0], reverse=True
    )
    found = [tx for key, tx in keyed if query.matches(tx, key)][: query.limit + 1]
    return page_of(found, query.limit, transaction_key, TRANSACTION_CURSOR)


def transaction_entries(tx: Transaction | None) -> frozenset[tuple[TransactionIndex, str]]:
    """Every (index, sort key) entry the stored ``tx`` has."""
    if tx is None or not is_listed(tx):
        return frozenset()
    key = transaction_key(tx)
    indexes = [ALL_TRANSACTIONS, ("station", tx.station_id), ("state", tx.state.value)]
    if tx.id_token is not None:
        indexes.append(("token", tx.id_token))
    return frozenset((index, key) for index in indexes)


def transaction_index_changes(
    old: Transaction | None, new: Transaction
) -> tuple[frozenset[tuple[TransactionIndex, str]], frozenset[tuple[TransactionIndex, str]]]:
    """The index entries to remove and to add when ``old`` is replaced by ``new``. Nothing
    for the usual update (a reading, a charging state): the indexed facts are unchanged."""
    if old is not None and (old.started_at, old.state, old.id_token, old.merged_into) == (
        new.started_at,
        new.state,
        new.id_token,
        new.merged_into,
    ):
        return frozenset(), frozenset()
    before, after = transaction_entries(old), transaction_entries(new)
    return before - after, after - before


def with_pending_security_profile(
    record: StationRecord | None, profile: int
) -> StationRecord | None:
    """``record`` with ``profile`` as its pending upgrade: the station accepted to move to it.
    None when there is no record or it is not above the registered profile (only raise).
    ``ValueError`` for a profile outside 1-3."""
    if profile not in (1, 2, 3):
        raise ValueError(f"security profile must be 1, 2 or 3, not {profile!r}")
    if record is None or profile <= record.security_profile:
        return None
    return msgspec.structs.replace(record, pending_security_profile=profile)


def with_security_profile_reached(
    record: StationRecord | None, profile: int
) -> StationRecord | None:
    """``record`` with its pending upgrade made the registered profile, because the station
    connected authenticated at ``profile``; None unless an upgrade is pending and ``profile``
    meets it. Never lowers the registered profile."""
    if record is None:
        return None
    pending = record.pending_security_profile
    if pending is None or profile < pending:
        return None
    return msgspec.structs.replace(
        record,
        security_profile=max(record.security_profile, pending),
        pending_security_profile=None,
    )
