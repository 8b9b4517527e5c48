"""OCPP 1.6 StopTransaction (§4.10): end, measure and price the transaction."""

from __future__ import annotations

from typing import Any

from manager import common
from manager.context import CallContext
from services import energy
from services.models import EnergyReading, Transaction, TransactionState

ACTION = "StopTransaction"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """End the transaction with its meterStop and transactionData, then price it.

    The spec has the Central System accept a StopTransaction whatever happens, so an unknown
    transactionId still gets an answer: a record is made from the stop data (logged as a
    warning) so the energy is not lost. A stop replayed for an already ended transaction
    changes nothing and keeps its cost. idTagInfo is answered when the stop carries an idTag.
    """
    await common.require_accepted(ctx)
    tx_key = str(payload["transactionId"])
    stopped_at: str = payload["timestamp"]
    meter_stop = float(payload["meterStop"])
    id_tag: str | None = payload.get("idTag")
    readings = energy.readings_from_meter_values(payload.get("transactionData") or [], ctx.version)
    readings.append(EnergyReading(at=stopped_at, wh=meter_stop, context="Transaction.End"))
    seen = {"known": True, "replay": False}

    def stop(current: Transaction | None) -> Transaction:
        seen["known"] = current is not None
        seen["replay"] = current is not None and current.state is TransactionState.ENDED
        if current is not None and current.state is TransactionState.ENDED:
            return current
        base = current or Transaction(
            station_id=ctx.station_id, transaction_id=tx_key, version=ctx.version, id_token=id_tag
        )
        return common.ended(
            common.with_readings(base, readings),
            at=stopped_at,
            reason=payload.get("reason"),
            meter_stop_wh=meter_stop,
        )

    tx = await ctx.services.transactions.update(ctx.station_id, tx_key, stop)
    if not seen["known"]:
        ctx.log.warning("stop_of_unknown_transaction", transaction_id=tx_key)
    tx = await common.settle(ctx, tx)
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
    decision = await common.authorize(ctx, id_tag)
    return {"idTagInfo": common.id_tag_info(decision)}
