"""OCPP 1.6 MeterValues (§4.7): energy readings, inside a transaction or not."""

from __future__ import annotations

from typing import Any

from manager import common
from manager.context import CallContext
from services import energy
from services.models import Transaction, TransactionState

ACTION = "MeterValues"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Merge energy-register readings into the transaction named by transactionId and
    recompute its energy; readings outside a transaction are only logged.

    A transactionId the CSMS does not know is logged and otherwise ignored (1.6 ids are the
    CSMS's own, so this is a record lost from the store, not one to invent). Readings that
    reach an already ended transaction re-price it, since its energy may have changed.
    """
    await common.require_accepted(ctx)
    readings = energy.readings_from_meter_values(payload["meterValue"], ctx.version)
    transaction_id = payload.get("transactionId")
    ctx.log.info(
        "meter_values",
        connector_id=payload["connectorId"],
        transaction_id=transaction_id,
        samples=len(payload["meterValue"]),
        energy_readings=len(readings),
    )
    if transaction_id is None or not readings:
        return {}
    tx_key = str(transaction_id)
    existing = await ctx.services.transactions.get(ctx.station_id, tx_key)
    if existing is None:
        ctx.log.warning("meter_values_for_unknown_transaction", transaction_id=tx_key)
        return {}
    changed = {"readings": False}

    def merge(current: Transaction | None) -> Transaction:
        base = current or existing
        merged = common.with_readings(base, readings)
        changed["readings"] = merged.readings != base.readings
        return merged

    tx = await ctx.services.transactions.update(ctx.station_id, tx_key, merge)
    if tx.state is TransactionState.ENDED and changed["readings"]:
        await common.settle(ctx, tx, reprice=True)
    return {}
