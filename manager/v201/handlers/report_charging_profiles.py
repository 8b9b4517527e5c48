"""OCPP 2.0.1 ReportChargingProfiles (K09): the station's charging profiles, reported in
parts in answer to a GetChargingProfiles request."""

from __future__ import annotations

from typing import Any

from manager.common import station_reports
from manager.common.registration import require_accepted
from manager.context import CallContext
from services.station_reports import EntryKind, Put, ReportChange

ACTION = "ReportChargingProfiles"
CAUSE = "GetChargingProfiles"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Store each profile (per EVSE and profile id, naming its report) and the report's
    progress (per ``requestId``: parts, profiles, complete once a part without ``tbc``
    arrived, and the GetChargingProfiles call it answers). A part for a complete report
    starts a new report under that id (callers reuse ids). The response is empty."""
    await require_accepted(ctx)
    request_id = payload["requestId"]
    evse_id = payload["evseId"]
    source = payload["chargingLimitSource"]
    profiles = payload["chargingProfile"]
    at = ctx.now_iso()
    report = await ctx.services.station_reports.entry(
        ctx.station_id, EntryKind.PROFILE_REPORTS, str(request_id)
    )
    if report is None or report["complete"]:
        report = {
            "request_id": request_id,
            "call_id": await station_reports.originating_call(ctx, (CAUSE,), request_id),
            "parts": 0,
            "profiles": 0,
            "evse_ids": [],
            "started_at": at,
        }
    report = {
        **report,
        "parts": report["parts"] + 1,
        "profiles": report["profiles"] + len(profiles),
        "evse_ids": sorted({*report["evse_ids"], evse_id}),
        "complete": not payload.get("tbc", False),
        "updated_at": at,
    }
    puts = [
        Put(
            EntryKind.CHARGING_PROFILES,
            f"{evse_id}/{profile['id']}",
            {
                "evse_id": evse_id,
                "request_id": request_id,
                "charging_limit_source": source,
                "charging_profile": profile,
                "received_at": at,
            },
        )
        for profile in profiles
    ]
    puts.append(Put(EntryKind.PROFILE_REPORTS, str(request_id), report))
    await station_reports.store(ctx, ReportChange(puts=puts))
    ctx.log.info(
        "charging_profiles_reported",
        request_id=request_id,
        evse_id=evse_id,
        profiles=len(profiles),
        complete=report["complete"],
    )
    return {}
