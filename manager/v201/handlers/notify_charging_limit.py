"""OCPP 2.0.1 NotifyChargingLimit (K12): an external limit (EMS, grid operator) the station
applies, stored per station, EVSE and limit source."""

from __future__ import annotations

from typing import Any

from manager.common import station_reports
from manager.common.registration import require_accepted
from manager.context import CallContext
from services.station_reports import EntryKind, Put, ReportChange

ACTION = "NotifyChargingLimit"


def limit_field(evse_id: int | None, source: str) -> str:
    """Where the limit of ``source`` on an EVSE (0: the whole station) is stored."""
    return f"{station_reports.evse_key(evse_id)}/{source}"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Store the limit (replacing the source's previous one on that EVSE); the response is
    empty."""
    await require_accepted(ctx)
    limit = payload["chargingLimit"]
    evse_id = payload.get("evseId")
    entry = {
        "evse_id": evse_id if evse_id is not None else 0,
        "charging_limit_source": limit["chargingLimitSource"],
        "is_grid_critical": limit.get("isGridCritical"),
        "charging_schedule": payload.get("chargingSchedule") or [],
        "received_at": ctx.now_iso(),
    }
    field = limit_field(evse_id, limit["chargingLimitSource"])
    await station_reports.store(
        ctx, ReportChange(puts=[Put(EntryKind.CHARGING_LIMITS, field, entry)])
    )
    ctx.log.info("charging_limit", evse_id=evse_id, source=limit["chargingLimitSource"])
    return {}
