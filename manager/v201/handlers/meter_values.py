"""OCPP 2.0.1 MeterValues (J01): readings outside transactions (those go in TransactionEvent)."""

from __future__ import annotations

from typing import Any

from manager.common import registration, transactions
from manager.context import CallContext
from services import energy

ACTION = "MeterValues"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Log the readings (evseId 0 is the station's main meter) and record last-seen.

    2.0.1 MeterValues never belong to a transaction, so nothing is merged anywhere.
    Implausible register values are logged as data-quality warnings.
    """
    await registration.require_accepted(ctx)
    screened = energy.screen_meter_values(payload["meterValue"], ctx.version)
    transactions.log_rejected(ctx, None, screened.rejected)
    readings = screened.readings
    ctx.log.debug(
        "meter_values",
        evse_id=payload["evseId"],
        samples=len(payload["meterValue"]),
        register_wh=readings[-1].wh if readings else None,
    )
    return {}
