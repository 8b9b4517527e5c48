"""What the API reads and writes: pydantic models, the documented shapes of its JSON.

Records come from the stores as msgspec structs; each ``*Out`` model copies the fields an
operator may see. Station credentials never leave the store: a station shows whether it has
a password (``has_password``), never a hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from operations.calls import CallOutcome
from services.api_keys import ApiKeyRecord, Scope
from services.call_records import CallRecord, CallState
from services.models import (
    BootInfo,
    ConnectorStatus,
    Cost,
    EnergyReading,
    RegistrationStatus,
    StationCounts,
    StationRecord,
    TokenRecord,
    Transaction,
    TransactionState,
)

# --- stations ------------------------------------------------------------------------------


class BootOut(BaseModel):
    """What the station said about itself in its last BootNotification."""

    vendor: str
    model: str
    serial_number: str | None = None
    firmware_version: str | None = None
    iccid: str | None = None
    imsi: str | None = None
    meter_type: str | None = None
    meter_serial_number: str | None = None
    reason: str | None = None

    @classmethod
    def of(cls, boot: BootInfo) -> BootOut:
        return cls(
            vendor=boot.vendor,
            model=boot.model,
            serial_number=boot.serial_number,
            firmware_version=boot.firmware_version,
            iccid=boot.iccid,
            imsi=boot.imsi,
            meter_type=boot.meter_type,
            meter_serial_number=boot.meter_serial_number,
            reason=boot.reason,
        )


class StationOut(BaseModel):
    """A charging station as the registry knows it (no credentials)."""

    station_id: str
    registration: RegistrationStatus
    known: bool = Field(description="false for stations first seen at boot, not provisioned")
    ocpp_version: str | None = None
    boot: BootOut | None = None
    last_boot_at: str | None = None
    online: bool
    gateway: str | None = Field(default=None, description="gateway holding its socket")
    connection: str | None = None
    connected_at: str | None = None
    disconnected_at: str | None = None
    last_seen: str | None = None
    security_profile: int
    pending_security_profile: int | None = Field(
        default=None,
        description="a higher profile the station accepted; it becomes security_profile "
        "once the station connects with it",
    )
    has_password: bool = Field(description="a Basic auth password is set (never shown)")
    password_rotation_pending: bool
    allowed_versions: list[str] = []
    certificate_identity: str | None = None

    @classmethod
    def of(cls, record: StationRecord) -> StationOut:
        return cls(**_station_fields(record))


def _station_fields(record: StationRecord) -> dict[str, Any]:
    return {
        "station_id": record.station_id,
        "registration": record.registration,
        "known": record.known,
        "ocpp_version": record.ocpp_version,
        "boot": BootOut.of(record.boot) if record.boot is not None else None,
        "last_boot_at": record.last_boot_at,
        "online": record.online,
        "gateway": record.gateway,
        "connection": record.connection,
        "connected_at": record.connected_at,
        "disconnected_at": record.disconnected_at,
        "last_seen": record.last_seen,
        "security_profile": record.security_profile,
        "pending_security_profile": record.pending_security_profile,
        "has_password": record.password_hash is not None,
        "password_rotation_pending": bool(
            record.pending_password_hash or record.unsettled_password_hashes
        ),
        "allowed_versions": list(record.allowed_versions),
        "certificate_identity": record.certificate_identity,
    }


SecurityProfile = Literal[0, 1, 2, 3]
StationVersion = Literal["ocpp1.6", "ocpp2.0.1"]
Registration = Literal["Accepted", "Pending", "Rejected"]


class StationChangeIn(BaseModel):
    """What ``PATCH /v1/stations/{id}`` changes: the fields given, nothing else (a field given
    as null removes what it names: the password, the certificate identity)."""

    # A password must never be echoed back in an error.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    registration: Registration | None = Field(
        default=None, description="the BootNotification answer the station gets"
    )
    security_profile: SecurityProfile | None = Field(
        default=None,
        description="0 none, 1 Basic auth, 2 TLS + Basic auth, 3 TLS client certificate",
    )
    password: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Basic auth password (profiles 1, 2) suiting the station's versions; only "
        "its hash is stored; null removes it",
    )
    generate_password: bool = Field(
        default=False, description="generate a password, returned once as generated_password"
    )
    certificate_identity: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="profile 3: the name its client certificate must carry; null: the id",
    )
    allowed_versions: list[StationVersion] | None = Field(
        default=None, description="OCPP versions it may connect with; [] = any"
    )


class StationIn(StationChangeIn):
    """A station to register (``POST /v1/stations``); unset fields take their defaults:
    Accepted, profile 0, no password, any version."""

    station_id: str = Field(min_length=1, max_length=48, description="its OCPP identity")

    @field_validator("station_id")
    @classmethod
    def _check_station_id(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must not contain control characters")
        return value


class StationSavedOut(StationOut):
    """The station as stored, and a generated password this once."""

    generated_password: str | None = Field(
        default=None,
        description="the generated password: shown this once, only its hash is stored (a 1.6 "
        "station gets it as AuthorizationKey: the password's octets in hex)",
    )

    @classmethod
    def saved(cls, record: StationRecord, generated_password: str | None) -> StationSavedOut:
        return cls(**_station_fields(record), generated_password=generated_password)


class ConnectorOut(BaseModel):
    """Last reported status of one connector (1.6: evse_id is the connector id)."""

    evse_id: int
    connector_id: int
    status: str
    at: str
    error_code: str | None = None
    info: str | None = None
    vendor_error_code: str | None = None

    @classmethod
    def of(cls, status: ConnectorStatus) -> ConnectorOut:
        return cls(
            evse_id=status.evse_id,
            connector_id=status.connector_id,
            status=status.status,
            at=status.at,
            error_code=status.error_code,
            info=status.info,
            vendor_error_code=status.vendor_error_code,
        )


class StationPage(BaseModel):
    items: list[StationOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null: last")


class StationCountsOut(BaseModel):
    """Numbers of stations, exact as of the call."""

    total: int
    online: int
    offline: int
    accepted: int
    pending: int
    rejected: int
    faulted: int = Field(description="stations with a connector whose latest status is Faulted")

    @classmethod
    def of(cls, counts: StationCounts) -> StationCountsOut:
        return cls(
            total=counts.total,
            online=counts.online,
            offline=counts.offline,
            accepted=counts.accepted,
            pending=counts.pending,
            rejected=counts.rejected,
            faulted=counts.faulted,
        )


class StatsOut(BaseModel):
    stations: StationCountsOut


# --- transactions --------------------------------------------------------------------------


class CostOut(BaseModel):
    """Cost as the tariff priced it; decimal strings, so nothing is rounded."""

    total: str
    currency: str
    energy: str
    time: str
    fee: str

    @classmethod
    def of(cls, cost: Cost) -> CostOut:
        return cls(
            total=cost.total,
            currency=cost.currency,
            energy=cost.energy,
            time=cost.time,
            fee=cost.fee,
        )


class TransactionOut(BaseModel):
    """One charging transaction (without its meter readings; see the detail route)."""

    station_id: str
    transaction_id: str
    version: str
    state: TransactionState
    evse_id: int | None = None
    connector_id: int | None = None
    id_token: str | None = None
    id_token_type: str | None = None
    group_id: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    meter_start_wh: float | None = None
    meter_stop_wh: float | None = None
    energy_wh: float | None = None
    cost: CostOut | None = None
    stop_reason: str | None = None
    superseded_by: str | None = None
    merged_into: str | None = None
    charging_state: str | None = None
    offline: bool = False
    reservation_id: int | None = None
    remote_start_id: int | None = None

    @classmethod
    def of(cls, tx: Transaction) -> TransactionOut:
        return cls(**_transaction_fields(tx))


def _transaction_fields(tx: Transaction) -> dict[str, Any]:
    return {
        "station_id": tx.station_id,
        "transaction_id": tx.transaction_id,
        "version": tx.version,
        "state": tx.state,
        "evse_id": tx.evse_id,
        "connector_id": tx.connector_id,
        "id_token": tx.id_token,
        "id_token_type": tx.id_token_type,
        "group_id": tx.group_id,
        "started_at": tx.started_at,
        "ended_at": tx.ended_at,
        "meter_start_wh": tx.meter_start_wh,
        "meter_stop_wh": tx.meter_stop_wh,
        "energy_wh": tx.energy_wh,
        "cost": CostOut.of(tx.cost) if tx.cost is not None else None,
        "stop_reason": tx.stop_reason,
        "superseded_by": tx.superseded_by,
        "merged_into": tx.merged_into,
        "charging_state": tx.charging_state,
        "offline": tx.offline,
        "reservation_id": tx.reservation_id,
        "remote_start_id": tx.remote_start_id,
    }


class ReadingOut(BaseModel):
    """One reading of the energy import register, in Wh."""

    at: str
    wh: float
    context: str | None = None

    @classmethod
    def of(cls, reading: EnergyReading) -> ReadingOut:
        return cls(at=reading.at, wh=reading.wh, context=reading.context)


class TransactionDetail(TransactionOut):
    """A transaction with its energy-register readings, in arrival order."""

    readings: list[ReadingOut]

    @classmethod
    def with_readings(cls, tx: Transaction, readings: Sequence[EnergyReading]) -> TransactionDetail:
        return cls(**_transaction_fields(tx), readings=[ReadingOut.of(item) for item in readings])


class TransactionPage(BaseModel):
    items: list[TransactionOut]
    next_cursor: str | None


class StationDetail(StationOut):
    """A station with its connector statuses and the transactions still running on it."""

    connectors: list[ConnectorOut]
    active_transactions: list[TransactionOut]

    @classmethod
    def detail(
        cls,
        record: StationRecord,
        connectors: list[ConnectorStatus],
        active: list[Transaction],
    ) -> StationDetail:
        return cls(
            **_station_fields(record),
            connectors=[ConnectorOut.of(item) for item in connectors],
            active_transactions=[TransactionOut.of(tx) for tx in active],
        )


# --- tokens --------------------------------------------------------------------------------

TokenStatus = Literal["Accepted", "Blocked", "Expired", "Invalid"]
TokenType = Literal[
    "Central", "eMAID", "ISO14443", "ISO15693", "KeyCode", "Local", "MacAddress", "NoAuthorization"
]


class TokenOut(BaseModel):
    id_token: str
    status: str
    token_type: str | None = None
    expiry: str | None = None
    group_id: str | None = None

    @classmethod
    def of(cls, record: TokenRecord) -> TokenOut:
        return cls(
            id_token=record.id_token,
            status=record.status.value,
            token_type=record.token_type,
            expiry=record.expiry,
            group_id=record.group_id,
        )


class TokenIn(BaseModel):
    """A token to provision (PUT replaces the whole record)."""

    model_config = ConfigDict(extra="forbid")

    status: TokenStatus = "Accepted"
    token_type: TokenType | None = Field(
        default=None, description="2.0.1 idToken type it must be presented as; null = any"
    )
    expiry: str | None = Field(default=None, description="ISO 8601; Expired after it")
    group_id: str | None = Field(default=None, min_length=1, max_length=36)

    @field_validator("expiry")
    @classmethod
    def _check_expiry(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(
                    "must be an ISO 8601 date-time, e.g. 2030-12-31T23:59:59Z"
                ) from None
        return value


class TokenPage(BaseModel):
    items: list[TokenOut]
    next_cursor: str | None


# --- API keys ------------------------------------------------------------------------------


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="who or what uses the key")
    scope: Scope = Field(default=Scope.READ, description="read < operate < admin")


class ApiKeyOut(BaseModel):
    key_id: str
    name: str
    scope: Scope
    created_at: str
    revoked_at: str | None = None

    @classmethod
    def of(cls, record: ApiKeyRecord) -> ApiKeyOut:
        return cls(
            key_id=record.key_id,
            name=record.name,
            scope=record.scope,
            created_at=record.created_at,
            revoked_at=record.revoked_at,
        )


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="the key itself: shown this once, only its hash is stored")


class ApiKeyPage(BaseModel):
    items: list[ApiKeyOut]
    next_cursor: str | None


# --- calls ---------------------------------------------------------------------------------


class CallOutcomeOut(BaseModel):
    """What became of a CSMS call: the station's answer, its CallError, or why there is
    none (timeout: the station did not answer in time; no_outcome: nothing came back before
    the API's deadline, the outcome is unknown), or ``pending`` for a call sent without
    waiting whose outcome is not known yet."""

    outcome: CallState = Field(
        description="the values of a waited call's outcome, plus pending (read back only)"
    )
    station_id: str
    version: str
    action: str
    message_id: str | None = Field(description="OCPP message id used; null when nothing was sent")
    payload: dict[str, Any] | None = Field(default=None, description="the CallResult payload")
    error_code: str | None = None
    error_description: str | None = None
    error_details: Any = None
    sent_at: float | None = Field(
        default=None, description="Unix time the gateway wrote the call to the station"
    )
    finished_at: float | None = Field(
        default=None, description="Unix time of the outcome; null while pending"
    )
    request: dict[str, Any] | None = Field(
        default=None, description="the request payload sent, passwords redacted (call records)"
    )
    requested_at: float | None = Field(
        default=None, description="Unix time the call was recorded (read back only)"
    )

    @classmethod
    def of(cls, outcome: CallOutcome) -> CallOutcomeOut:
        return cls(
            outcome=CallState(outcome.outcome.value),
            station_id=outcome.station_id,
            version=outcome.version,
            action=outcome.action,
            message_id=outcome.message_id,
            payload=outcome.payload,
            error_code=outcome.error_code,
            error_description=outcome.error_description,
            error_details=outcome.error_details,
            sent_at=outcome.sent_at,
            finished_at=outcome.finished_at,
        )

    @classmethod
    def of_record(cls, record: CallRecord) -> CallOutcomeOut:
        """A recorded call, pending or final."""
        return cls(
            outcome=record.outcome,
            station_id=record.station_id,
            version=record.version,
            action=record.action,
            message_id=record.message_id,
            payload=record.payload,
            error_code=record.error_code,
            error_description=record.error_description,
            error_details=record.error_details,
            sent_at=record.sent_at,
            finished_at=record.finished_at,
            request=record.request,
            requested_at=record.requested_at,
        )


class CallPage(BaseModel):
    items: list[CallOutcomeOut]
    next_cursor: str | None


# --- health --------------------------------------------------------------------------------


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, bool] = Field(description="bus: broker connected; store: stores answer")
