"""OCPP 2.0.1 TransactionEvent (E01-E15): every step of a transaction, in one message.

Events are upserted into one transaction record keyed by the station's transactionId. The
record is built from whatever arrives first: events may come out of order, late (queued
while offline, ``offline=true``) or twice (a retry after a lost answer). Each event's
``seqNo`` is recorded with the transaction (:meth:`TransactionStore.update_event
<services.interfaces.TransactionStore.update_event>`), so a repeated event is answered
again but never applied twice. An event costs the same whatever the length of the session.
"""

from __future__ import annotations

from typing import Any

import msgspec

from manager.common import authorization, events, pricing, registration, transactions
from manager.context import CallContext
from services import energy
from services.models import (
    Authorization,
    EnergyReading,
    Transaction,
    TransactionChange,
    TransactionState,
)

ACTION = "TransactionEvent"

_STARTED = "Started"
_UPDATED = "Updated"
_ENDED = "Ended"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Apply the event, answer idTokenInfo for a token and totalCost once Ended.

    - Authorization: the token in the event is authorized on every delivery (the answer
      must carry idTokenInfo). ConcurrentTx is answered only to a live Started event whose
      token has an active transaction elsewhere (another EVSE or station), never to Updated
      or Ended events: a token presented to its own transaction must not be refused.
    - Stale transactions: a Started event on an EVSE closes any other transaction still
      active there (its Ended never arrived, e.g. after a reboot) as superseded, priced
      (:func:`manager.common.transactions.supersede`); for a Started the station queued
      while offline, only transactions that started before it.
    - Cost: when the transaction has ended it is priced and the total returned in the Ended
      event's answer (I03.FR.02). The schema reserves ``totalCost`` for that ("SHALL only be
      sent when charging has ended"), so the running cost of an active transaction is sent
      in a CostUpdated call (I02) after a live Updated event that changed its energy, at most
      once per ``running_cost_interval`` of meter time; an unchanged energy costs no pricing.
      An ended transaction is priced again only when its pricing basis changed (a late event
      from before the end); readings after the end (by timestamp, or from events numbered
      after the Ended one) never change it.
    - Implausible meter values are logged and left out of the energy; the event is answered.
    """
    await registration.require_accepted(ctx)
    event_type: str = payload["eventType"]
    tx_key: str = payload["transactionInfo"]["transactionId"]
    seq_no: int = payload["seqNo"]
    offline = bool(payload.get("offline", False))
    decision = await _authorize(ctx, payload, tx_key)
    screened = energy.screen_meter_values(payload.get("meterValue") or [], ctx.version)
    transactions.log_rejected(ctx, tx_key, screened.rejected)
    readings = screened.readings

    def apply(current: Transaction | None) -> Transaction | TransactionChange:
        return _applied(current, ctx, payload, readings, decision)

    update = await ctx.services.transactions.update_event(ctx.station_id, tx_key, seq_no, apply)
    tx, applied, before = update.after, update.applied, update.before
    ctx.log.debug(
        "transaction_event",
        transaction_id=tx_key,
        event_type=event_type,
        trigger_reason=payload["triggerReason"],
        seq_no=seq_no,
        offline=offline,
        retry=not applied,
        state=tx.state.value,
        energy_wh=tx.energy_wh,
    )
    if applied and before is None:
        await events.transaction_started(ctx, tx)
    if applied and event_type == _STARTED and tx.evse_id is not None:
        await transactions.supersede(
            ctx, evse_id=tx.evse_id, by=tx_key, at=payload["timestamp"], only_earlier=offline
        )
    if tx.state is TransactionState.ENDED:
        changed = pricing.pricing_basis(before) != pricing.pricing_basis(tx)
        tx = await pricing.settle(ctx, tx, reprice=applied and changed)
        if before is None or before.state is not TransactionState.ENDED:
            await events.transaction_ended(ctx, tx)
    elif (
        applied
        and event_type == _UPDATED
        and not offline
        and tx.energy_wh is not None
        and (before is None or before.energy_wh != tx.energy_wh)
        and pricing.running_cost_due(before, tx, ctx.settings.running_cost_interval)
    ):
        await pricing.send_running_cost(ctx, tx)
        await events.transaction_updated(ctx, before, tx)
    if applied:
        token = payload.get("idToken") or {}
        await events.authorization_refused(
            ctx, decision, token.get("idToken"), token.get("type"), transaction_id=tx_key
        )
    response: dict[str, Any] = {}
    if decision is not None:
        response["idTokenInfo"] = authorization.id_token_info(decision)
    if event_type == _ENDED:
        total = pricing.cost_number(tx.cost)
        if total is not None:
            response["totalCost"] = total
    return response


async def _authorize(
    ctx: CallContext, payload: dict[str, Any], tx_key: str
) -> Authorization | None:
    """The decision for the event's token; with the ConcurrentTx check only for a live
    Started event (the token starting this transaction now). Transactions on the Started
    event's own EVSE are not "elsewhere": they are superseded by this one."""
    token = payload.get("idToken")
    if token is None:
        return None
    if payload["eventType"] == _STARTED and not payload.get("offline", False):
        evse_id = (payload.get("evse") or {}).get("id")

        def here(tx: Transaction) -> bool:
            if tx.station_id != ctx.station_id:
                return False
            return tx.transaction_id == tx_key or (evse_id is not None and tx.evse_id == evse_id)

        return await authorization.authorize_start(ctx, token["idToken"], token["type"], same=here)
    return await authorization.authorize(ctx, token["idToken"], token["type"])


def _context_wh(readings: list[EnergyReading], context: str) -> float | None:
    return next((reading.wh for reading in readings if reading.context == context), None)


def _applied(
    current: Transaction | None,
    ctx: CallContext,
    payload: dict[str, Any],
    readings: list[EnergyReading],
    decision: Authorization | None,
) -> Transaction | TransactionChange:
    """The transaction after one not yet applied event (pure: the store may call it twice).

    Facts that only grow (seqNos, readings, offline, ids) merge whatever the order; facts
    that change over time (charging state, EVSE) are taken from the event only when it is
    the newest by seqNo. The start time is the earliest event time seen (the Started event's,
    once it arrives); Ended is final, a late Updated does not reopen it, and an event
    numbered after the Ended one happened after the end: only its seqNo is recorded.
    """
    info = payload["transactionInfo"]
    event_type: str = payload["eventType"]
    at: str = payload["timestamp"]
    seq_no: int = payload["seqNo"]
    tx = current or Transaction(
        station_id=ctx.station_id, transaction_id=info["transactionId"], version=ctx.version
    )
    if tx.end_seq_no is not None and seq_no > tx.end_seq_no and event_type != _ENDED:
        return tx  # the store records the seqNo
    newest = tx.last_seq_no is None or seq_no > tx.last_seq_no
    changes: dict[str, Any] = {
        "offline": tx.offline or bool(payload.get("offline", False)),
        "started_at": transactions.earlier(tx.started_at, at),
    }
    if "chargingState" in info and (newest or tx.charging_state is None):
        changes["charging_state"] = info["chargingState"]
    evse = payload.get("evse")
    if evse is not None and (newest or tx.evse_id is None):
        changes["evse_id"] = evse["id"]
        changes["connector_id"] = evse.get("connectorId", tx.connector_id)
    if "remoteStartId" in info:
        changes["remote_start_id"] = info["remoteStartId"]
    if "reservationId" in payload:
        changes["reservation_id"] = payload["reservationId"]
    token = payload.get("idToken")
    if token is not None and (tx.id_token is None or event_type == _STARTED):
        changes["id_token"] = token["idToken"]
        changes["id_token_type"] = token["type"]
        changes["group_id"] = decision.group_id if decision is not None else None
    begin = _context_wh(readings, "Transaction.Begin")
    if begin is not None and tx.meter_start_wh is None:
        changes["meter_start_wh"] = begin
    tx = msgspec.structs.replace(tx, **changes)
    if event_type == _ENDED:
        tx = transactions.ended(
            msgspec.structs.replace(tx, end_seq_no=seq_no),
            at=at,
            reason=info.get("stoppedReason"),
            meter_stop_wh=_context_wh(readings, "Transaction.End"),
        )
    return transactions.with_readings(tx, readings)
