"""OCPP 2.0.1 MeterValues (J01): readings outside transactions (those go in TransactionEvent)."""

from __future__ import annotations

from typing import Any

from manager.common import registration, station_reports, transactions
from manager.context import CallContext
from services import energy
from services.station_reports import Append, HistoryKind, ReportChange, transaction_scope

ACTION = "MeterValues"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Store the readings per EVSE (evseId 0 is the station's main meter) and log them.

    2.0.1 MeterValues are never a transaction's readings (those come in TransactionEvent),
    so nothing is merged into one; a record names the transaction running on the EVSE, if
    any, and is stored under that transaction too. Implausible register values are logged
    as data-quality warnings.
    """
    await registration.require_accepted(ctx)
    screened = energy.screen_meter_values(payload["meterValue"], ctx.version)
    transactions.log_rejected(ctx, None, screened.rejected)
    readings = screened.readings
    evse_id = payload["evseId"]
    running = [
        transaction.transaction_id
        for transaction in await ctx.services.transactions.active(ctx.station_id)
        if evse_id and transaction.evse_id == evse_id
    ]
    record = {
        "evse_id": evse_id,
        "transaction_id": running[0] if running else None,
        "meter_value": payload["meterValue"],
        "received_at": ctx.now_iso(),
    }
    appends = [Append(HistoryKind.METER_VALUES, record, scope=str(evse_id))]
    if running:
        scope = transaction_scope(running[0])
        appends.append(Append(HistoryKind.METER_VALUES, record, scope=scope))
    await station_reports.store(ctx, ReportChange(appends=appends))
    ctx.log.debug(
        "meter_values",
        evse_id=evse_id,
        samples=len(payload["meterValue"]),
        register_wh=readings[-1].wh if readings else None,
    )
    return {}
