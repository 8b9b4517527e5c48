"""OCPP 2.0.1 NotifyEVChargingSchedule (K15, K16): the schedule the EV chose, stored per
station and EVSE."""

from __future__ import annotations

from typing import Any

from manager.common import station_reports
from manager.common.registration import require_accepted
from manager.context import CallContext
from services.station_reports import EntryKind, Put, ReportChange

ACTION = "NotifyEVChargingSchedule"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Store the EV's schedule (the latest per EVSE) and accept it: the station already
    checked it against the CSMS's limits (K16.FR.04), and this CSMS keeps no schedule of
    its own to check it against again."""
    await require_accepted(ctx)
    evse_id = payload["evseId"]
    schedule = {
        "evse_id": evse_id,
        "time_base": payload["timeBase"],
        "charging_schedule": payload["chargingSchedule"],
        "received_at": ctx.now_iso(),
    }
    await station_reports.store(
        ctx, ReportChange(puts=[Put(EntryKind.CHARGING_SCHEDULES, str(evse_id), schedule)])
    )
    ctx.log.info("ev_charging_schedule", evse_id=evse_id)
    return {"status": "Accepted"}
