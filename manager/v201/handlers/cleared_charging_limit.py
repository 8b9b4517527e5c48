"""OCPP 2.0.1 ClearedChargingLimit (K13): an external limit is gone."""

from __future__ import annotations

from typing import Any

from manager.common import station_reports
from manager.common.registration import require_accepted
from manager.context import CallContext
from manager.v201.handlers.notify_charging_limit import limit_field
from services.station_reports import EntryKind, ReportChange

ACTION = "ClearedChargingLimit"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Clear the source's limit on the EVSE given, or on every EVSE when none is given; the
    response is empty."""
    await require_accepted(ctx)
    source = payload["chargingLimitSource"]
    evse_id = payload.get("evseId")
    if evse_id is not None:
        fields = [limit_field(evse_id, source)]
    else:
        held = await ctx.services.station_reports.entries(ctx.station_id, EntryKind.CHARGING_LIMITS)
        fields = [name for name, limit in held.items() if limit["charging_limit_source"] == source]
    await station_reports.store(
        ctx, ReportChange(deletes=[(EntryKind.CHARGING_LIMITS, name) for name in fields])
    )
    ctx.log.info("charging_limit_cleared", evse_id=evse_id, source=source, cleared=len(fields))
    return {}
