"""Pure decision rules shared by every store implementation.

The in-memory and Redis stores differ only in how they read and write records; what a new
record looks like after a boot, a connect or a disconnect, and what a token lookup decides,
lives here once so the two can never disagree. Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from csms.credentials import is_password_hash
from services.models import (
    MAX_UNSETTLED_PASSWORDS,
    Authorization,
    AuthorizationStatus,
    BootInfo,
    RegistrationStatus,
    StationCredentials,
    StationRecord,
    TokenRecord,
    Transaction,
    TransactionState,
)

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


def next_after(value: int) -> int:
    """The transaction id following ``value``, wrapping within positive int32."""
    return 1 if value >= INT32_MAX or value < 1 else value + 1
