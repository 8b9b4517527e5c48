"""OCPP 2.0.1 NotifyMonitoringReport (N02): the variable monitors a station has set, reported
in parts in answer to GetMonitoringReport."""

from __future__ import annotations

from typing import Any

from manager.common import station_reports
from manager.common.registration import require_accepted
from manager.context import CallContext
from services.station_reports import EntryKind, Put, ReportChange
from services.station_state import VariableRef

ACTION = "NotifyMonitoringReport"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Store each monitor under its variable and monitor id (a later report replaces it);
    parts describe different monitors, so their order does not matter. The response is
    empty."""
    await require_accepted(ctx)
    request_id = payload["requestId"]
    at = ctx.now_iso()
    puts: list[Put] = []
    for monitored in payload.get("monitor") or []:
        ref = VariableRef.from_ocpp(monitored["component"], monitored["variable"])
        for monitor in monitored["variableMonitoring"]:
            puts.append(
                Put(
                    EntryKind.MONITORS,
                    f"{ref.key}/{monitor['id']}",
                    {
                        "component": monitored["component"],
                        "variable": monitored["variable"],
                        "monitor": monitor,
                        "request_id": request_id,
                        "received_at": at,
                    },
                )
            )
    await station_reports.store(ctx, ReportChange(puts=puts))
    ctx.log.info(
        "monitoring_report",
        request_id=request_id,
        seq_no=payload["seqNo"],
        tbc=payload.get("tbc", False),
        monitors=len(puts),
    )
    return {}
