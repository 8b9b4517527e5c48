"""Decisions the OCPP 1.6 and 2.0.1 handlers share, written once.

The handlers of each version translate their wire format into these calls and back:

- registration: what a BootNotification answers and whether a station may send anything else;
- authorization: one token decision, mapped to 1.6 ``idTagInfo`` or 2.0.1 ``idTokenInfo``;
- transactions: merging energy readings, ending, and pricing an ended transaction;
- small acknowledgements (notifications with empty responses, DataTransfer) and result logging.

Everything goes through the :mod:`services` interfaces; nothing here knows which store
implementation runs behind them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from csms.envelope import ADMITTED_AS
from csms.rpc import RpcError
from manager.context import CallContext, OcppError, ResultContext, iso
from services import energy
from services.models import (
    Authorization,
    AuthorizationStatus,
    BootInfo,
    ConnectorStatus,
    Cost,
    EnergyReading,
    RegistrationStatus,
    Transaction,
    TransactionState,
)
from services.rules import parse_time

# --- registration --------------------------------------------------------------------------

_POLICY = {
    "accept": RegistrationStatus.ACCEPTED,
    "pending": RegistrationStatus.PENDING,
    "reject": RegistrationStatus.REJECTED,
}


def policy_registration(ctx: CallContext) -> RegistrationStatus:
    """Registration for a station the operator did not provision.

    What the gateway's admission gave it (``ADMITTED_AS`` on the envelope: Pending under
    ``unknown_stations = "pending"``, Accepted in first-try mode) wins; without that mark,
    the ``unknown_stations`` setting decides.
    """
    admitted = ctx.meta.get(ADMITTED_AS)
    if admitted in (RegistrationStatus.PENDING, RegistrationStatus.ACCEPTED):
        return RegistrationStatus(admitted)
    return _POLICY[ctx.settings.unknown_stations]


async def boot(ctx: CallContext, info: BootInfo) -> dict[str, Any]:
    """Decide and record a BootNotification; the response payload (same shape in 1.6 and 2.0.1).

    A provisioned station (``known``) gets its operator-set registration; any other station
    gets the ``unknown_stations`` policy. ``interval`` is the heartbeat interval when
    Accepted and otherwise the minimum wait before the next BootNotification, as both
    versions define it.
    """
    record = await ctx.services.stations.get(ctx.station_id)
    if record is not None and record.known:
        registration = record.registration
    else:
        registration = policy_registration(ctx)
    now = ctx.now_iso()
    await ctx.services.stations.record_boot(ctx.station_id, ctx.version, info, registration, now)
    accepted = registration is RegistrationStatus.ACCEPTED
    interval = ctx.settings.heartbeat_interval if accepted else ctx.settings.pending_retry_interval
    ctx.log.info(
        "boot_notification",
        registration=registration.value,
        known=record is not None and record.known,
        vendor=info.vendor,
        model=info.model,
        firmware=info.firmware_version,
        reason=info.reason,
    )
    return {"status": registration.value, "currentTime": now, "interval": interval}


async def current_registration(ctx: CallContext) -> RegistrationStatus:
    """The registration the station currently holds.

    The answer to its last BootNotification (or the operator's later change); for a station
    that never booted and was not provisioned, what the policy would answer.
    """
    record = await ctx.services.stations.get(ctx.station_id)
    if record is None or (not record.known and record.last_boot_at is None):
        return policy_registration(ctx)
    return record.registration


async def require_accepted(ctx: CallContext) -> None:
    """Refuse any Call but BootNotification from a Rejected station with a SecurityError.

    OCPP 2.0.1 B03.FR.07 has the CSMS answer a Rejected station's other messages this way;
    1.6 forbids a Rejected station from sending them at all. Pending stations are let through:
    they may send what the CSMS triggers (B02) and Heartbeat/StatusNotification are harmless.
    """
    if await current_registration(ctx) is RegistrationStatus.REJECTED:
        raise OcppError(RpcError.SECURITY_ERROR, "station is not accepted")


async def heartbeat(ctx: CallContext) -> dict[str, Any]:
    """Answer a Heartbeat with the CSMS time (OCPP's clock synchronisation).

    Last-seen is recorded by the worker for every message a station sends, this one included.
    """
    await require_accepted(ctx)
    return {"currentTime": ctx.now_iso()}


async def connector_status(ctx: CallContext, status: ConnectorStatus) -> dict[str, Any]:
    """Store a reported connector status; StatusNotification responses are empty."""
    await require_accepted(ctx)
    await ctx.services.stations.set_connector_status(ctx.station_id, status)
    ctx.log.info(
        "connector_status",
        evse_id=status.evse_id,
        connector_id=status.connector_id,
        status=status.status,
        error_code=status.error_code,
    )
    return {}


# --- authorization -------------------------------------------------------------------------

NO_AUTHORIZATION = "NoAuthorization"
"""2.0.1 IdTokenEnumType for transactions the station runs without any authorization."""

_V16_STATUSES = frozenset(
    {
        AuthorizationStatus.ACCEPTED,
        AuthorizationStatus.BLOCKED,
        AuthorizationStatus.EXPIRED,
        AuthorizationStatus.INVALID,
        AuthorizationStatus.CONCURRENT_TX,
    }
)
_V16_ID_TAG_MAX = 20
_V201_ID_TOKEN_MAX = 36


async def authorize(
    ctx: CallContext, id_token: str, token_type: str | None = None
) -> Authorization:
    """The token store's decision for one presentation of a token at this station.

    A 2.0.1 ``NoAuthorization`` token carries no identity to check (the station charges
    without authorization by its own configuration), so it is Accepted as it is.
    """
    if token_type == NO_AUTHORIZATION:
        return Authorization(status=AuthorizationStatus.ACCEPTED)
    return await ctx.services.tokens.authorize(id_token, token_type, ctx.station_id)


async def authorize_start(
    ctx: CallContext,
    id_token: str,
    token_type: str | None,
    *,
    same: Callable[[Transaction], bool],
) -> Authorization:
    """:func:`authorize` for starting a transaction: an Accepted token that already has an
    active transaction elsewhere (``same`` says which transactions are this one) is
    ConcurrentTx.

    Only used when a transaction starts: a token presented again to stop its own transaction
    must not be refused.
    """
    decision = await authorize(ctx, id_token, token_type)
    if decision.status is not AuthorizationStatus.ACCEPTED or token_type == NO_AUTHORIZATION:
        return decision
    for other in await ctx.services.transactions.find_by_token(id_token):
        if other.state is TransactionState.ACTIVE and not same(other):
            ctx.log.info(
                "concurrent_transaction",
                id_token=id_token,
                other_station=other.station_id,
                other_transaction=other.transaction_id,
            )
            return msgspec.structs.replace(decision, status=AuthorizationStatus.CONCURRENT_TX)
    return decision


def _wire_time(value: str | None) -> str | None:
    """An operator-provisioned time as an OCPP date-time (UTC, ``Z``); None if unreadable.

    Token expiries come from configuration, not from a schema-checked message, so they are
    normalised here rather than risking a response that fails its schema.
    """
    moment = parse_time(value)
    return iso(moment) if moment is not None else None


def id_tag_info(decision: Authorization) -> dict[str, Any]:
    """OCPP 1.6 ``IdTagInfo``: statuses 1.6 lacks (Unknown, NoCredit, ...) become Invalid;
    a group id longer than a 1.6 idTag (20) cannot be a parentIdTag and is left out."""
    status = decision.status if decision.status in _V16_STATUSES else AuthorizationStatus.INVALID
    info: dict[str, Any] = {"status": status.value}
    expiry = _wire_time(decision.expiry)
    if expiry is not None:
        info["expiryDate"] = expiry
    if decision.group_id is not None and len(decision.group_id) <= _V16_ID_TAG_MAX:
        info["parentIdTag"] = decision.group_id
    return info


def id_token_info(decision: Authorization) -> dict[str, Any]:
    """OCPP 2.0.1 ``IdTokenInfoType``; the group is a CSMS-issued (``Central``) token, left out
    when longer than an idToken (36)."""
    info: dict[str, Any] = {"status": decision.status.value}
    expiry = _wire_time(decision.expiry)
    if expiry is not None:
        info["cacheExpiryDateTime"] = expiry
    if decision.group_id is not None and len(decision.group_id) <= _V201_ID_TOKEN_MAX:
        info["groupIdToken"] = {"idToken": decision.group_id, "type": "Central"}
    return info


# --- transactions --------------------------------------------------------------------------


def earlier(first: str | None, second: str | None) -> str | None:
    """The earlier of two OCPP timestamps (compared as instants, returned as received)."""
    if first is None or second is None:
        return second if first is None else first
    a, b = parse_time(first), parse_time(second)
    if a is None or b is None:
        return first
    return second if b < a else first


def with_energy(tx: Transaction) -> Transaction:
    """``tx`` with ``energy_wh`` recomputed from its meter start/stop and readings."""
    return msgspec.structs.replace(tx, energy_wh=energy.energy_wh(tx))


def with_readings(tx: Transaction, readings: Iterable[EnergyReading]) -> Transaction:
    """``tx`` with energy-register ``readings`` merged in (a re-delivered reading changes
    nothing) and ``energy_wh`` recomputed."""
    merged = energy.merge_readings(tx.readings, readings)
    return with_energy(msgspec.structs.replace(tx, readings=merged))


def ended(
    tx: Transaction,
    *,
    at: str,
    reason: str | None,
    meter_stop_wh: float | None = None,
) -> Transaction:
    """``tx`` in state Ended, energy recomputed. The stop reason defaults to Local, as both
    versions define it for a stop without a reason."""
    return with_energy(
        msgspec.structs.replace(
            tx,
            state=TransactionState.ENDED,
            ended_at=at,
            stop_reason=reason or "Local",
            meter_stop_wh=meter_stop_wh if meter_stop_wh is not None else tx.meter_stop_wh,
        )
    )


_PRICING_ATTEMPTS = 3


async def settle(ctx: CallContext, tx: Transaction, *, reprice: bool = False) -> Transaction:
    """Price an ended transaction and store the cost on it; returns the stored transaction.

    An already priced transaction keeps its cost unless ``reprice`` (new data arrived after
    the end), so a replayed stop never prices differently. The cost is stored only if the
    transaction did not change while it was priced; otherwise the newer state is priced.
    """
    for _ in range(_PRICING_ATTEMPTS):
        if tx.state is not TransactionState.ENDED or (tx.cost is not None and not reprice):
            return tx
        cost = await ctx.services.tariff.price(tx)
        basis = msgspec.structs.replace(tx, cost=None)

        def set_cost(
            current: Transaction | None,
            basis: Transaction = basis,
            cost: Cost = cost,
        ) -> Transaction:
            if current is None:
                return msgspec.structs.replace(basis, cost=cost)
            if msgspec.structs.replace(current, cost=None) != basis:
                return current
            return msgspec.structs.replace(current, cost=cost)

        stored = await ctx.services.transactions.update(tx.station_id, tx.transaction_id, set_cost)
        if stored.cost == cost and msgspec.structs.replace(stored, cost=None) == basis:
            ctx.log.info(
                "transaction_priced",
                transaction_id=tx.transaction_id,
                energy_wh=stored.energy_wh,
                total=cost.total,
                currency=cost.currency,
            )
            return stored
        tx, reprice = stored, True
    ctx.log.warning("transaction_pricing_raced", transaction_id=tx.transaction_id)
    return tx


# --- small acknowledgements ----------------------------------------------------------------


async def acknowledge(ctx: CallContext, event: str, **facts: Any) -> dict[str, Any]:
    """Log a notification whose response is empty and acknowledge it."""
    await require_accepted(ctx)
    ctx.log.info(event, **facts)
    return {}


async def data_transfer(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """No vendor extensions are configured, so every vendorId is UnknownVendorId."""
    await require_accepted(ctx)
    ctx.log.info(
        "data_transfer", vendor_id=payload["vendorId"], message_id=payload.get("messageId")
    )
    return {"status": "UnknownVendorId"}


def result_failed(ctx: ResultContext) -> bool:
    """Log a CSMS call the station did not answer with a CallResult; True when so."""
    if ctx.ok:
        return False
    ctx.log.warning(
        "call_failed",
        action=ctx.request.action,
        error_code=ctx.error_code,
        error_description=ctx.error_description,
        timed_out=ctx.timed_out,
        undelivered=ctx.undelivered,
    )
    return True
