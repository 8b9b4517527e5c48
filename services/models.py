"""Records the services store and return. msgspec Structs: typed, and cheap to (de)serialise
to JSON for Redis. Times are ISO-8601 UTC strings as OCPP sends them; money is a decimal
string so no rounding happens in storage."""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

import msgspec

from csms.credentials import is_password_hash
from csms.versions import supported

__all__ = [
    "MAX_PAGE_SIZE",
    "MAX_UNSETTLED_PASSWORDS",
    "OCPP_VERSIONS",
    "SECURITY_PROFILES",
    "Authorization",
    "AuthorizationStatus",
    "BootInfo",
    "ConnectorStatus",
    "Cost",
    "EnergyReading",
    "EventUpdate",
    "MeterSummary",
    "Page",
    "RegistrationStatus",
    "StationCounts",
    "StationCredentials",
    "StationRecord",
    "TokenRecord",
    "Transaction",
    "TransactionChange",
    "TransactionState",
]


class RegistrationStatus(enum.StrEnum):
    """BootNotification answer for a station (same names in 1.6 and 2.0.1)."""

    ACCEPTED = "Accepted"
    PENDING = "Pending"
    REJECTED = "Rejected"


class BootInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a station said about itself in its last BootNotification."""

    vendor: str
    model: str
    serial_number: str | None = None
    firmware_version: str | None = None
    iccid: str | None = None
    imsi: str | None = None
    meter_type: str | None = None
    meter_serial_number: str | None = None
    reason: str | None = None
    """2.0.1 boot reason (PowerUp, Watchdog, ...); None for 1.6."""


class StationRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Everything the CSMS knows about one charging station."""

    station_id: str
    registration: RegistrationStatus = RegistrationStatus.PENDING
    """Registration decided by the operator; the BootNotification answer."""
    known: bool = True
    """False for stations first seen at boot and admitted by policy (not provisioned)."""
    boot: BootInfo | None = None
    ocpp_version: str | None = None
    last_boot_at: str | None = None
    online: bool = False
    connection: str | None = None
    """Id of the socket that currently owns the station."""
    gateway: str | None = None
    gateway_session: str | None = None
    """The gateway's bus session that announced the connection (see GatewayPresence)."""
    connected_at: str | None = None
    disconnected_at: str | None = None
    last_seen: str | None = None
    # Security (gateway admission): filled by the operator's CLI / API.
    security_profile: int = 0
    """0 = none (first-try only), 1 = Basic auth, 2 = TLS + Basic, 3 = TLS client certificate."""
    pending_security_profile: int | None = None
    """A higher profile the station accepted to move to (2.0.1 A05, 1.6 security whitepaper);
    the registry raises ``security_profile`` to it once the station connects authenticated at
    it or higher. Until then a connection at the old profile is still admitted."""
    password_hash: str | None = None
    pending_password_hash: str | None = None
    """Hash of a password being rotated, accepted at admission only until the station's
    answer settles it: a station may reconnect with it before its Accepted is stored."""
    unsettled_password_hashes: list[str] = []
    """Hashes of earlier rotations whose outcome never arrived (the answer was lost or came
    too late): the station may be using any of them, so admission accepts them until the
    station proves which password it uses (a login with one of them promotes it) or an
    operator sets a password. At most :data:`MAX_UNSETTLED_PASSWORDS`, newest last."""
    allowed_versions: list[str] = []
    certificate_identity: str | None = None


MAX_UNSETTLED_PASSWORDS = 4
"""Rotations with an unknown outcome kept admissible; the oldest goes first."""

SECURITY_PROFILES = (0, 1, 2, 3)
OCPP_VERSIONS = tuple(sorted(version.value for version in supported()))
"""Subprotocol names of every supported version (for messages and settings)."""


class StationCredentials(msgspec.Struct, kw_only=True, frozen=True):
    """A change to the security facts the gateway checks when a station connects.

    Fields left ``UNSET`` keep what the registry holds, so provisioning one fact (say the
    certificate identity) never clears another (the password hash). Values are checked on
    construction: ``ValueError`` for a profile outside 0-3, an unknown OCPP version, or a
    ``password_hash`` that is not a hash (a clear password must never reach the registry).
    """

    security_profile: int | msgspec.UnsetType = msgspec.UNSET
    password_hash: str | msgspec.UnsetType | None = msgspec.UNSET
    """A :func:`csms.credentials.hash_password` value; None removes the password."""
    certificate_identity: str | msgspec.UnsetType | None = msgspec.UNSET
    """Profile 3: the name the client certificate must carry (None = the station id)."""
    allowed_versions: tuple[str, ...] | msgspec.UnsetType = msgspec.UNSET
    """OCPP versions the station may connect with (empty = any)."""

    def __post_init__(self) -> None:
        profile = self.security_profile
        if not isinstance(profile, msgspec.UnsetType) and profile not in SECURITY_PROFILES:
            raise ValueError(f"security profile must be 0, 1, 2 or 3, not {profile!r}")
        versions = self.allowed_versions
        if not isinstance(versions, msgspec.UnsetType):
            unknown = sorted(set(versions) - set(OCPP_VERSIONS))
            if unknown:
                raise ValueError(
                    f"unknown OCPP version(s) {', '.join(unknown)}; "
                    f"known: {', '.join(OCPP_VERSIONS)}"
                )
        password_hash = self.password_hash
        if isinstance(password_hash, str) and not is_password_hash(password_hash):
            raise ValueError("password_hash is not a password hash (see 'csms password hash')")


class ConnectorStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Last reported status of one connector (1.6 connectorId 0 = the whole station)."""

    evse_id: int
    """2.0.1 EVSE id; in 1.6 the connector id (1.6 has no EVSEs)."""
    connector_id: int
    status: str
    at: str
    error_code: str | None = None
    info: str | None = None
    vendor_error_code: str | None = None


class AuthorizationStatus(enum.StrEnum):
    """Union of 1.6 and 2.0.1 idToken statuses; handlers map to what their version allows."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    UNKNOWN = "Unknown"
    CONCURRENT_TX = "ConcurrentTx"
    NO_CREDIT = "NoCredit"
    NOT_ALLOWED_TYPE_EVSE = "NotAllowedTypeEVSE"
    NOT_AT_THIS_LOCATION = "NotAtThisLocation"
    NOT_AT_THIS_TIME = "NotAtThisTime"


class TokenRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A token as provisioned in the token store."""

    id_token: str
    status: AuthorizationStatus = AuthorizationStatus.ACCEPTED
    token_type: str | None = None
    """2.0.1 IdTokenEnumType (ISO14443, eMAID, ...); None = any type."""
    expiry: str | None = None
    group_id: str | None = None


class Authorization(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The token store's decision for one presentation of a token."""

    status: AuthorizationStatus
    expiry: str | None = None
    group_id: str | None = None


class EnergyReading(msgspec.Struct, kw_only=True, array_like=True, frozen=True):
    """One reading of the energy import register, normalised to Wh."""

    at: str
    wh: float
    context: str | None = None


class Cost(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """Cost of a transaction as the TariffService priced it (decimal strings)."""

    total: str
    currency: str
    energy: str = "0"
    time: str = "0"
    fee: str = "0"


class MeterSummary(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """The running aggregate of a transaction's energy-register readings.

    Everything the energy and the price of a transaction need from its readings, so a new
    reading updates it in constant time (:func:`services.energy.advance`) and the readings
    themselves stay out of the transaction record (the store keeps them next to it, see
    :meth:`services.interfaces.TransactionStore.readings`). The store maintains it with
    every update; a reading older than the latest one, or a change of the meter start or of
    the end, rebuilds it from the stored readings (:func:`services.energy.rebuild`).

    The energy series is the meter start (when plausible) followed by the *counted* readings
    in time order: plausible values, and once the transaction has ended only those taken no
    later than its end (see :func:`services.energy.energy_wh`).
    """

    count: int = 0
    """Readings stored for the transaction."""
    first_at: str | None = None
    """Time of the earliest reading (readable times only)."""
    last_at: str | None = None
    """Time of the latest reading (readable times only)."""
    arrival_from: int | None = None
    """Set when some reading has an unreadable time: readings from this position on (in the
    order they arrived) are taken in arrival order, those before it by time."""
    start_wh: float | None = None
    """The meter start the series begins with (None: none, or not plausible)."""
    cutoff: str | None = None
    """The end the readings were filtered by (``ended_at`` of an ended transaction)."""
    counted_at: str | None = None
    """Time of the latest counted reading (readable times only)."""
    values: int = 0
    """Values in the series, the meter start included."""
    first_wh: float | None = None
    last_wh: float | None = None
    dropped: bool = False
    """The series went down somewhere (a register reset, a replaced meter)."""
    rise_wh: float = 0.0
    """Sum of the series' positive steps, in order."""
    rise_error: float = 0.0
    """Compensation term of that sum where Python's ``sum`` of floats is compensated."""


class TransactionState(enum.StrEnum):
    ACTIVE = "Active"
    ENDED = "Ended"


class Transaction(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One charging transaction, keyed by (station_id, transaction_id).

    1.6: ``transaction_id`` is the CSMS-assigned integer, as a string.
    2.0.1: ``transaction_id`` is the station-assigned transactionId.

    The record has a bounded size whatever the length of the session: its readings and
    applied seqNos are kept by the store next to it (:meth:`TransactionStore.readings
    <services.interfaces.TransactionStore.readings>`, :meth:`~services.interfaces.
    TransactionStore.seq_nos`); ``meter``, ``energy_wh`` and ``last_seq_no`` are derived
    from them by the store on every update.
    """

    station_id: str
    transaction_id: str
    version: str
    state: TransactionState = TransactionState.ACTIVE
    evse_id: int | None = None
    connector_id: int | None = None
    id_token: str | None = None
    id_token_type: str | None = None
    group_id: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    meter_start_wh: float | None = None
    meter_stop_wh: float | None = None
    meter: MeterSummary | None = None
    """Aggregate of the energy-register readings (None: none yet); kept by the store."""
    energy_wh: float | None = None
    """Energy delivered so far, from the meter start and stop and the readings (see
    services.energy); kept by the store."""
    cost: Cost | None = None
    stop_reason: str | None = None
    superseded_by: str | None = None
    """Set when the CSMS closed this transaction itself because a new one started on its
    EVSE (1.6: connector) while it was still active: its own stop never arrived (a station
    reboot, a lost message). The id of that new transaction; the stop reason is ``Other``,
    the end its last known reading, and it is priced like any ended transaction. Its own
    stop, should it still arrive, replaces these facts and clears this field."""
    merged_into: str | None = None
    """1.6 only: this record stands for a StopTransaction sent with ``transactionId`` -1 (its
    StartTransaction was never answered) that was applied to the transaction named here.
    It is not priced itself; it makes a re-sent copy of that stop recognisable."""
    charging_state: str | None = None
    last_seq_no: int | None = None
    """2.0.1: the highest TransactionEvent seqNo applied (the set of them is kept by the
    store, see ``TransactionStore.update_event``); kept by the store."""
    end_seq_no: int | None = None
    """2.0.1: the seqNo of the Ended event. Events numbered after it happened after the end:
    their seqNo is recorded but their readings are not merged."""
    offline: bool = False
    """True when any event of the transaction was sent after an offline period."""
    reservation_id: int | None = None
    remote_start_id: int | None = None


class TransactionChange(msgspec.Struct, frozen=True):
    """What a ``change`` given to :meth:`TransactionStore.update
    <services.interfaces.TransactionStore.update>` returns when it adds readings: the new
    transaction and the energy-register readings to add to it (one already stored, same
    time and value, is not added again)."""

    transaction: Transaction
    readings: tuple[EnergyReading, ...] = ()


class EventUpdate(msgspec.Struct, frozen=True):
    """What :meth:`TransactionStore.update_event
    <services.interfaces.TransactionStore.update_event>` did."""

    before: Transaction | None
    """The transaction as it was (None: new)."""
    after: Transaction
    """The transaction as stored now."""
    applied: bool
    """False when the event's seqNo had been applied before: nothing changed."""


# --- read side -----------------------------------------------------------------------------

MAX_PAGE_SIZE = 1000
"""Largest ``limit`` a listing accepts (a larger one is a ``ValueError``)."""

_Item = TypeVar("_Item")


class Page(msgspec.Struct, Generic[_Item], kw_only=True, frozen=True):
    """One page of a listing, in the listing's order.

    ``next_cursor`` is None on the last page; otherwise pass it back as ``cursor`` to get the
    items after this page. Cursors are opaque strings naming a position in the order (not
    an offset), so records inserted or changed between two calls never make a page repeat
    or skip a record that stayed where it was. A page may hold fewer than ``limit`` items
    (even none) and still have a ``next_cursor``: a listing whose filters no index answers
    stops after examining a bounded number of records (see each implementation).
    """

    items: list[_Item]
    next_cursor: str | None = None


class StationCounts(msgspec.Struct, kw_only=True, frozen=True):
    """Numbers of stations for a dashboard, exact as of the call."""

    total: int = 0
    online: int = 0
    offline: int = 0
    accepted: int = 0
    pending: int = 0
    rejected: int = 0
    faulted: int = 0
    """Stations with at least one connector whose latest status is Faulted."""
