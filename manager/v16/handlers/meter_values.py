"""OCPP 1.6 MeterValues (§4.7): energy readings, inside a transaction or not."""

from __future__ import annotations

from typing import Any

from manager.common import events, registration, transactions
from manager.context import CallContext
from services import energy
from services.models import Transaction, TransactionChange, TransactionState

ACTION = "MeterValues"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Add energy-register readings to the transaction named by transactionId (the store
    counts them into its energy); readings outside a transaction are only logged.

    A transactionId the CSMS does not know is logged and otherwise ignored (1.6 ids are the
    CSMS's own, so this is a record lost from the store, not one to invent). Readings for a
    transaction that has already ended are logged and not merged: the StopTransaction (its
    meterStop and transactionData) is the final account of the session, and its energy and
    cost must not change afterwards. Implausible values are logged and left out
    (:func:`manager.common.transactions.log_rejected`); the message is answered normally either way.
    """
    await registration.require_accepted(ctx)
    screened = energy.screen_meter_values(payload["meterValue"], ctx.version)
    readings = screened.readings
    transaction_id = payload.get("transactionId")
    tx_key = str(transaction_id) if transaction_id is not None else None
    transactions.log_rejected(ctx, tx_key, screened.rejected)
    ctx.log.debug(
        "meter_values",
        connector_id=payload["connectorId"],
        transaction_id=transaction_id,
        samples=len(payload["meterValue"]),
        energy_readings=len(readings),
    )
    if tx_key is None or not readings:
        return {}
    existing = await ctx.services.transactions.get(ctx.station_id, tx_key)
    if existing is None:
        ctx.log.warning("meter_values_for_unknown_transaction", transaction_id=tx_key)
        return {}
    if existing.state is TransactionState.ENDED:
        _ended(ctx, tx_key, len(readings))
        return {}

    def merge(current: Transaction | None) -> Transaction | TransactionChange:
        base = current or existing
        if base.state is TransactionState.ENDED:
            return base
        return transactions.with_readings(base, readings)

    tx = await ctx.services.transactions.update(ctx.station_id, tx_key, merge)
    if tx.state is TransactionState.ENDED:  # it ended while the readings were merged
        _ended(ctx, tx_key, len(readings))
    await events.transaction_updated(ctx, existing, tx)
    return {}


def _ended(ctx: CallContext, tx_key: str, count: int) -> None:
    ctx.log.warning(
        "meter_values_for_ended_transaction", transaction_id=tx_key, energy_readings=count
    )
