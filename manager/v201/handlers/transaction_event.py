"""OCPP 2.0.1 TransactionEvent (E01-E15): every step of a transaction, in one message.

Events are upserted into one transaction record keyed by the station's transactionId. The
record is built from whatever arrives first: events may come out of order, late (queued
while offline, ``offline=true``) or twice (a retry after a lost answer). Each event's
``seqNo`` is kept on the transaction, so a repeated event is answered again but never
applied twice.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from manager import common
from manager.context import CallContext
from services import energy
from services.models import Authorization, EnergyReading, Transaction, TransactionState

ACTION = "TransactionEvent"

_STARTED = "Started"
_ENDED = "Ended"
_AUTHORIZED = "Authorized"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Apply the event, answer idTokenInfo for a token and totalCost once Ended.

    The token in the event is authorized on every delivery (the answer must carry
    idTokenInfo); ConcurrentTx is only considered when the token starts the transaction
    (a Started event or an Authorized trigger, sent live), never when it stops it. When the
    transaction has ended it is priced and the total is returned in the Ended event's
    answer (I03.FR.02); a running cost is not sent with Started/Updated.
    """
    await common.require_accepted(ctx)
    event_type: str = payload["eventType"]
    tx_key: str = payload["transactionInfo"]["transactionId"]
    seq_no: int = payload["seqNo"]
    decision = await _authorize(ctx, payload, tx_key)
    readings = energy.readings_from_meter_values(payload.get("meterValue") or [], ctx.version)
    outcome = {"applied": False}

    def apply(current: Transaction | None) -> Transaction:
        outcome["applied"] = current is None or seq_no not in current.seq_nos
        if current is not None and not outcome["applied"]:
            return current
        return _applied(current, ctx, payload, readings, decision)

    tx = await ctx.services.transactions.update(ctx.station_id, tx_key, apply)
    ctx.log.info(
        "transaction_event",
        transaction_id=tx_key,
        event_type=event_type,
        trigger_reason=payload["triggerReason"],
        seq_no=seq_no,
        offline=payload.get("offline", False),
        retry=not outcome["applied"],
        state=tx.state.value,
        energy_wh=tx.energy_wh,
    )
    if tx.state is TransactionState.ENDED:
        tx = await common.settle(ctx, tx, reprice=outcome["applied"])
    response: dict[str, Any] = {}
    if decision is not None:
        response["idTokenInfo"] = common.id_token_info(decision)
    if event_type == _ENDED and tx.cost is not None:
        response["totalCost"] = float(Decimal(tx.cost.total))
    return response


async def _authorize(
    ctx: CallContext, payload: dict[str, Any], tx_key: str
) -> Authorization | None:
    token = payload.get("idToken")
    if token is None:
        return None
    starts = payload["eventType"] == _STARTED or payload["triggerReason"] == _AUTHORIZED
    if starts and payload["eventType"] != _ENDED and not payload.get("offline", False):

        def this_transaction(tx: Transaction) -> bool:
            return tx.station_id == ctx.station_id and tx.transaction_id == tx_key

        return await common.authorize_start(
            ctx, token["idToken"], token["type"], same=this_transaction
        )
    return await common.authorize(ctx, token["idToken"], token["type"])


def _context_wh(readings: list[EnergyReading], context: str) -> float | None:
    return next((reading.wh for reading in readings if reading.context == context), None)


def _applied(
    current: Transaction | None,
    ctx: CallContext,
    payload: dict[str, Any],
    readings: list[EnergyReading],
    decision: Authorization | None,
) -> Transaction:
    """The transaction after one not yet applied event (pure: the store may call it twice).

    Facts that only grow (seqNos, readings, offline, ids) merge whatever the order; facts
    that change over time (charging state, EVSE) are taken from the event only when it is
    the newest by seqNo. The start time is the earliest event time seen (the Started event's,
    once it arrives); Ended is final, a late Updated does not reopen it.
    """
    info = payload["transactionInfo"]
    event_type: str = payload["eventType"]
    at: str = payload["timestamp"]
    seq_no: int = payload["seqNo"]
    tx = current or Transaction(
        station_id=ctx.station_id, transaction_id=info["transactionId"], version=ctx.version
    )
    newest = not tx.seq_nos or seq_no > max(tx.seq_nos)
    changes: dict[str, Any] = {
        "seq_nos": sorted({*tx.seq_nos, seq_no}),
        "offline": tx.offline or bool(payload.get("offline", False)),
        "started_at": common.earlier(tx.started_at, at),
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
    tx = common.with_readings(msgspec.structs.replace(tx, **changes), readings)
    if event_type == _ENDED:
        tx = common.ended(
            tx,
            at=at,
            reason=info.get("stoppedReason"),
            meter_stop_wh=_context_wh(readings, "Transaction.End"),
        )
    return tx
