"""OCPP 2.0.1 NotifyEVChargingNeeds (K15, K17): the EV's charging needs (ISO 15118), stored
per station and EVSE for the operator and the charging API."""

from __future__ import annotations

from typing import Any

from manager.common import station_reports
from manager.common.registration import require_accepted
from manager.context import CallContext
from services.station_reports import EntryKind, Put, ReportChange

ACTION = "NotifyEVChargingNeeds"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Store the needs (the latest per EVSE, K17 renegotiations replace them) and answer.

    The status says whether the CSMS processed the message, not whether the needs can be
    met. Needs name the EVSE the EV is plugged into, so evseId 0 (the station as a whole)
    is Rejected. This CSMS computes no schedule of its own (the operator sets profiles
    through the API from the stored needs), so it never answers Processing, which promises
    a SetChargingProfile to follow: everything else is Accepted.
    """
    await require_accepted(ctx)
    evse_id = payload["evseId"]
    if evse_id < 1:
        ctx.log.info("ev_charging_needs_rejected", evse_id=evse_id)
        return {
            "status": "Rejected",
            "statusInfo": {
                "reasonCode": "InvalidEVSE",
                "additionalInfo": "charging needs name an EVSE (evseId >= 1)",
            },
        }
    needs = {
        "evse_id": evse_id,
        "charging_needs": payload["chargingNeeds"],
        "max_schedule_tuples": payload.get("maxScheduleTuples"),
        "received_at": ctx.now_iso(),
    }
    await station_reports.store(
        ctx, ReportChange(puts=[Put(EntryKind.CHARGING_NEEDS, str(evse_id), needs)])
    )
    ctx.log.info(
        "ev_charging_needs",
        evse_id=evse_id,
        transfer=payload["chargingNeeds"]["requestedEnergyTransfer"],
    )
    return {"status": "Accepted"}
