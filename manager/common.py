"""Decisions the OCPP 1.6 and 2.0.1 handlers share, written once.

The handlers of each version translate their wire format into these calls and back:

- registration: what a BootNotification answers and whether a station may send anything else;
- authorization: one token decision, mapped to 1.6 ``idTagInfo`` or 2.0.1 ``idTokenInfo``;
- transactions: merging energy readings, ending, superseding a transaction whose stop was
  lost, pricing an ended transaction and sending the running cost of an active one;
- data quality: absurd meter values are dropped from energy and logged, never refused;
- small acknowledgements (notifications with empty responses, DataTransfer) and result logging.

Everything goes through the :mod:`services` interfaces; nothing here knows which store
implementation runs behind them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import msgspec

from csms.envelope import ADMITTED_AS
from csms.rpc import RpcError
from manager.context import CallContext, OcppError, ResultContext, iso
from services import StoreUnavailable, energy
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


PENDING_ALLOWED = frozenset(
    {
        "BootNotification",
        "Heartbeat",
        "StatusNotification",
        "FirmwareStatusNotification",
        "SignedFirmwareStatusNotification",
        "PublishFirmwareStatusNotification",
        "DiagnosticsStatusNotification",
        "LogStatusNotification",
        "SignCertificate",
        "NotifyReport",
    }
)
"""What a Pending station may send: BootNotification and the messages the CSMS can have
asked for while it is Pending.

OCPP 2.0.1 B02 (tested by TC_B_30_CSMS, requirement B02.FR.09) lets a Pending station send
only BootNotification and messages triggered by TriggerMessage, GetBaseReport or GetReport;
OCPP 1.6 §4.2 likewise allows only what the Central System triggered. A request does not say
whether it was triggered, so the CSMS allows every action a trigger can produce in either
version: TriggerMessage's Heartbeat, StatusNotification, FirmwareStatusNotification,
DiagnosticsStatusNotification (1.6), LogStatusNotification, the Sign*Certificate triggers
(sent as SignCertificate), PublishFirmwareStatusNotification, the 1.6 security extension's
SignedFirmwareStatusNotification, and NotifyReport (GetBaseReport / GetReport: what the
CSMS configures a Pending station with).

Refused although a trigger could produce them: MeterValues and TransactionEvent. A station
that is not registered has no transactions to report on, and they carry energy readings that
are billed; with them, Authorize, StartTransaction, StopTransaction, DataTransfer, NotifyEvent
and SecurityEventNotification are SecurityError (an unregistered client must not be able to
probe which tokens are valid or start billed transactions).
"""


def registration_refusal(registration: RegistrationStatus, action: str) -> OcppError | None:
    """The CallError a station holding ``registration`` gets for a Call of ``action``, or
    None when the Call may be handled. Pure: the router can ask before schema validation.

    - Accepted: nothing is refused.
    - Pending: anything outside :data:`PENDING_ALLOWED` is ``SecurityError`` (B02.FR.09).
    - Rejected: anything but BootNotification is ``SecurityError`` (2.0.1 B03.FR.07; 1.6
      forbids a Rejected charge point from sending anything else).
    """
    if registration is RegistrationStatus.ACCEPTED or action == "BootNotification":
        return None
    if registration is RegistrationStatus.PENDING:
        if action in PENDING_ALLOWED:
            return None
        return OcppError(
            RpcError.SECURITY_ERROR,
            f"station is pending: {action} is not accepted before registration",
            {"registration": registration.value},
        )
    return OcppError(
        RpcError.SECURITY_ERROR,
        "station is not accepted",
        {"registration": registration.value},
    )


async def require_accepted(ctx: CallContext) -> None:
    """Raise :func:`registration_refusal`'s SecurityError for this Call, if any.

    Every station Call handler but BootNotification's calls this first, so the rule holds
    even where nothing checked the registration before the handler ran.
    """
    refusal = registration_refusal(await current_registration(ctx), ctx.action)
    if refusal is not None:
        ctx.log.info(
            "call_refused_by_registration",
            registration=refusal.details.get("registration"),
        )
        raise refusal


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
    versions define it for a stop without a reason. The station's own stop replaces what the
    CSMS assumed when it closed a superseded transaction."""
    return with_energy(
        msgspec.structs.replace(
            tx,
            state=TransactionState.ENDED,
            ended_at=at,
            stop_reason=reason or "Local",
            meter_stop_wh=meter_stop_wh if meter_stop_wh is not None else tx.meter_stop_wh,
            superseded_by=None,
        )
    )


# --- data quality ----------------------------------------------------------------------------


def log_rejected(
    ctx: CallContext, transaction_id: str | None, rejected: Iterable[energy.RejectedReading]
) -> None:
    """One data-quality warning per energy-register value left out of the energy.

    Structured (station, transaction, value, reason) so a faulty meter can be found; the
    message itself is answered normally (see :mod:`services.energy`).
    """
    for item in rejected:
        ctx.log.warning(
            "meter_value_rejected",
            transaction_id=transaction_id,
            value=item.value,
            reason=item.reason,
            at=item.at,
            max_wh=energy.MAX_REGISTER_WH,
        )


def meter_register(
    ctx: CallContext, value: int, *, field: str, transaction_id: str | None
) -> float | None:
    """A 1.6 ``meterStart`` / ``meterStop`` (a JSON integer of any size) in Wh, or None when
    it is implausible (negative or beyond :data:`services.energy.MAX_REGISTER_WH`).

    The message is still answered normally: StopTransaction must be accepted whatever it
    carries (the transaction has ended at the charge point), and a CallError to
    StartTransaction would only have the charge point retry the same value. The value is
    left out of the energy and logged as a data-quality warning.
    """
    wh = energy.screen_wh(value)
    if isinstance(wh, float):
        return wh
    ctx.log.warning(
        "meter_value_rejected",
        transaction_id=transaction_id,
        field=field,
        value=energy.display_value(value),
        reason=wh,
        max_wh=energy.MAX_REGISTER_WH,
    )
    return None


# --- superseded transactions -----------------------------------------------------------------

SUPERSEDED_REASON = "Other"
"""Stop reason of a transaction the CSMS closed because another one started on its EVSE:
``Other`` exists in both versions' reason enums; ``superseded_by`` says what happened."""


def superseded(tx: Transaction, *, by: str, at: str) -> Transaction:
    """``tx`` closed by the CSMS because ``by`` started on its EVSE at ``at``.

    It ends at its last known moment (its latest reading, else its start; ``at`` when it
    has neither), so the time between that and the new start, when nothing is known of it,
    is not billed. The energy is what its readings show.
    """
    start = parse_time(tx.started_at)
    moments = [(parse_time(r.at), r.at) for r in tx.readings]
    known = [(m, text) for m, text in moments if m is not None and (start is None or m >= start)]
    end = max(known)[1] if known else (tx.started_at or at)
    return with_energy(
        msgspec.structs.replace(
            tx,
            state=TransactionState.ENDED,
            ended_at=end,
            stop_reason=SUPERSEDED_REASON,
            superseded_by=by,
        )
    )


def _started_by(tx: Transaction, at: str) -> bool:
    """True when ``tx`` started no later than ``at`` (both readable)."""
    started, moment = parse_time(tx.started_at), parse_time(at)
    return started is not None and moment is not None and started <= moment


async def supersede(
    ctx: CallContext, *, evse_id: int, by: str, at: str, only_earlier: bool = False
) -> list[Transaction]:
    """Close every other active transaction of this station on ``evse_id`` (1.6: connector):
    an EVSE runs one transaction at a time, so one that is still active when ``by`` starts
    there lost its stop (a reboot, a lost message). Each is ended (:func:`superseded`),
    priced and logged; returns them.

    ``only_earlier`` (for starts the station queued while offline, which may arrive out of
    order) closes only transactions that started no later than ``at``.
    """
    closed: list[Transaction] = []
    for old in await ctx.services.transactions.active(ctx.station_id):
        if old.transaction_id == by or old.evse_id != evse_id:
            continue
        if only_earlier and not _started_by(old, at):
            continue

        def close(current: Transaction | None, old: Transaction = old) -> Transaction:
            if current is None or current.state is TransactionState.ENDED:
                return current or old
            if current.evse_id != evse_id:
                return current
            return superseded(current, by=by, at=at)

        tx = await ctx.services.transactions.update(ctx.station_id, old.transaction_id, close)
        if tx.superseded_by != by:
            continue
        ctx.log.warning(
            "transaction_superseded",
            transaction_id=tx.transaction_id,
            superseded_by=by,
            evse_id=evse_id,
            ended_at=tx.ended_at,
            energy_wh=tx.energy_wh,
        )
        closed.append(await settle(ctx, tx))
    return closed


# --- pricing ---------------------------------------------------------------------------------


def pricing_basis(tx: Transaction | None) -> tuple[Any, ...]:
    """What the price of a transaction depends on: when it changes, an ended transaction is
    priced again; when it does not (a replay, a reading after the end), its cost stays."""
    if tx is None:
        return ()
    return (tx.state, tx.energy_wh, tx.started_at, tx.ended_at, tx.merged_into)


async def price(ctx: CallContext, tx: Transaction) -> Cost | None:
    """The TariffService's price for ``tx``, or None (logged) when it fails.

    A pricing failure must not turn into an InternalError the station would retry forever:
    the message is answered without a cost and the next delivery tries again. A store outage
    (``StoreUnavailable``) still propagates, as everywhere.
    """
    try:
        return await ctx.services.tariff.price(tx)
    except StoreUnavailable:
        raise
    except Exception as exc:
        ctx.log.error(
            "transaction_pricing_failed",
            transaction_id=tx.transaction_id,
            energy_wh=tx.energy_wh,
            error=repr(exc),
        )
        return None


def cost_number(cost: Cost | None) -> float | None:
    """A cost's total as an OCPP number (``totalCost``); None when it is not a finite one."""
    if cost is None:
        return None
    try:
        total = Decimal(cost.total)
    except (ArithmeticError, ValueError, TypeError):
        return None
    number = float(total) if total.is_finite() else math.nan
    return number if math.isfinite(number) else None


_PRICING_ATTEMPTS = 3


async def settle(ctx: CallContext, tx: Transaction, *, reprice: bool = False) -> Transaction:
    """Price an ended transaction and store the cost on it; returns the stored transaction.

    An already priced transaction keeps its cost unless ``reprice`` (its pricing basis
    changed after it was priced), so a replayed stop never prices differently. The cost is
    stored only if the transaction did not change while it was priced; otherwise the newer
    state is priced. A record that only points at the transaction it was merged into
    (``merged_into``) is not priced.
    """
    for _ in range(_PRICING_ATTEMPTS):
        if tx.state is not TransactionState.ENDED or tx.merged_into is not None:
            return tx
        if tx.cost is not None and not reprice:
            return tx
        cost = await price(ctx, tx)
        if cost is None:
            return tx
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


COST_UPDATED = "CostUpdated"


async def send_running_cost(ctx: CallContext, tx: Transaction) -> float | None:
    """Send the running cost of an active 2.0.1 transaction in a CostUpdated call (I02).

    TransactionEventResponse's ``totalCost`` "SHALL only be sent when charging has ended",
    so during a transaction the cost goes in the CSMS-initiated CostUpdatedRequest instead.
    Priced by the TariffService on the current readings; nothing is sent when pricing fails
    or the bus refuses the call (logged): the station's message is answered regardless.
    Returns the total sent.
    """
    total = cost_number(await price(ctx, tx))
    if total is None:
        return None
    try:
        await ctx.calls.call(
            ctx.station_id,
            ctx.version,
            COST_UPDATED,
            {"totalCost": total, "transactionId": tx.transaction_id},
            meta={"transaction_id": tx.transaction_id},
        )
    except Exception as exc:
        ctx.log.warning("running_cost_not_sent", transaction_id=tx.transaction_id, error=repr(exc))
        return None
    ctx.log.info(
        "running_cost_sent",
        transaction_id=tx.transaction_id,
        energy_wh=tx.energy_wh,
        total=total,
    )
    return total


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
