"""OCPP 1.6 StopTransaction (§4.10): end, measure and price the transaction."""

from __future__ import annotations

from typing import Any

from manager.common import authorization, events, pricing, registration, transactions
from manager.context import CallContext
from services import energy
from services.models import EnergyReading, Transaction, TransactionChange, TransactionState
from services.rules import parse_time

ACTION = "StopTransaction"

UNANSWERED_START = -1
"""The transactionId a charge point stops with when its StartTransaction was never answered
(1.6 errata): it never learnt the id the CSMS assigned."""


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """End the transaction with its meterStop and transactionData, then price it.

    The spec has the Central System accept a StopTransaction whatever happens, so an unknown
    transactionId still gets an answer: a record is made from the stop data (logged as a
    warning) so the energy is not lost. A stop replayed for an already ended transaction
    changes nothing and keeps its cost; the station's own stop of a transaction the CSMS
    closed as superseded replaces what the CSMS assumed. idTagInfo is answered when the stop
    carries an idTag. ``transactionId`` -1 is resolved by :func:`_unanswered_stop_key`.

    An implausible meterStop or transactionData value (not finite, negative, beyond
    ``MAX_REGISTER_WH``) is left out of the energy and logged; the stop is answered normally.
    """
    await registration.require_accepted(ctx)
    stopped_at: str = payload["timestamp"]
    id_tag: str | None = payload.get("idTag")
    tx_key = str(payload["transactionId"])
    if payload["transactionId"] == UNANSWERED_START:
        tx_key = await _unanswered_stop_key(ctx, payload)
    meter_stop = transactions.meter_register(
        ctx, payload["meterStop"], field="meterStop", transaction_id=tx_key
    )
    screened = energy.screen_meter_values(payload.get("transactionData") or [], ctx.version)
    transactions.log_rejected(ctx, tx_key, screened.rejected)
    readings = screened.readings
    if meter_stop is not None:
        readings.append(EnergyReading(at=stopped_at, wh=meter_stop, context="Transaction.End"))
    seen: dict[str, Any] = {"known": True, "replay": False, "before": None}

    def stop(current: Transaction | None) -> Transaction | TransactionChange:
        seen["known"] = current is not None
        seen["before"] = current
        seen["replay"] = _stopped(current)
        if current is not None and seen["replay"]:
            return current
        base = current or Transaction(
            station_id=ctx.station_id, transaction_id=tx_key, version=ctx.version, id_token=id_tag
        )
        end = transactions.ended(
            base, at=stopped_at, reason=payload.get("reason"), meter_stop_wh=meter_stop
        )
        return transactions.with_readings(end, readings)

    tx = await ctx.services.transactions.update(ctx.station_id, tx_key, stop)
    if not seen["known"]:
        ctx.log.warning("stop_of_unknown_transaction", transaction_id=tx_key)
    changed = pricing.pricing_basis(seen["before"]) != pricing.pricing_basis(tx)
    tx = await pricing.settle(ctx, tx, reprice=changed)
    if not seen["replay"]:
        await events.transaction_ended(ctx, tx)
    ctx.log.info(
        "transaction_stopped",
        transaction_id=tx_key,
        replay=seen["replay"],
        reason=tx.stop_reason,
        energy_wh=tx.energy_wh,
        total=tx.cost.total if tx.cost else None,
    )
    if id_tag is None:
        return {}
    decision = await authorization.authorize(ctx, id_tag)
    return {"idTagInfo": authorization.id_tag_info(decision)}


def _stopped(tx: Transaction | None) -> bool:
    """True when ``tx`` already has its own stop (a later one is a replay); a transaction
    the CSMS closed as superseded is still waiting for it."""
    return tx is not None and tx.state is TransactionState.ENDED and tx.superseded_by is None


async def _unanswered_stop_key(ctx: CallContext, payload: dict[str, Any]) -> str:
    """The record a StopTransaction with transactionId -1 ends.

    Each such stop is its own event, so it is keyed by what identifies it,
    ``-1:<timestamp>:<meterStop>``: a re-sent copy finds the same key (a replay), a later
    stop gets a record of its own instead of being taken for a replay of the first.

    When the CSMS did receive that StartTransaction (only its answer was lost), the session
    is an active transaction here. StopTransaction carries no connectorId, so it is matched
    by what it does carry, and only when exactly one active transaction of this station
    fits: the same idTag (a token charges once at a time: ConcurrentTx), started no later
    than the stop, meterStart no higher than meterStop. The stop is then applied to that
    transaction, and the ``-1:`` key records a pointer to it (``merged_into``, never priced)
    so a re-sent copy is still recognised after the transaction has ended. Without an idTag,
    or with several candidates, nothing is guessed: the stop gets its own record, and a
    stale active transaction is closed by the next start on its connector.
    """
    stopped_at: str = payload["timestamp"]
    # display_value: the integer as written, or a bounded stand-in for an absurdly long one.
    key = f"{UNANSWERED_START}:{stopped_at}:{energy.display_value(payload['meterStop'])}"
    existing = await ctx.services.transactions.get(ctx.station_id, key)
    if existing is not None:
        return existing.merged_into or key
    id_tag: str | None = payload.get("idTag")
    if id_tag is None:
        return key
    meter_stop = energy.screen_wh(payload["meterStop"])
    stop_time = parse_time(stopped_at)
    candidates = []
    for tx in await ctx.services.transactions.active(ctx.station_id):
        if tx.id_token != id_tag:
            continue
        started = parse_time(tx.started_at)
        if started is not None and stop_time is not None and started > stop_time:
            continue
        if (
            isinstance(meter_stop, float)
            and tx.meter_start_wh is not None
            and tx.meter_start_wh > meter_stop
        ):
            continue
        candidates.append(tx)
    if len(candidates) != 1:
        return key
    [target] = candidates

    def point(current: Transaction | None) -> Transaction:
        return current or Transaction(
            station_id=ctx.station_id,
            transaction_id=key,
            version=ctx.version,
            state=TransactionState.ENDED,
            evse_id=target.evse_id,
            connector_id=target.connector_id,
            id_token=id_tag,
            started_at=target.started_at,
            ended_at=stopped_at,
            stop_reason=payload.get("reason") or "Local",
            merged_into=target.transaction_id,
        )

    pointer = await ctx.services.transactions.update(ctx.station_id, key, point)
    ctx.log.info(
        "stop_of_unanswered_start_matched",
        transaction_id=pointer.merged_into or key,
        stop_key=key,
    )
    return pointer.merged_into or key
