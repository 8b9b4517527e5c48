"""OCPP 2.0.1 ReservationStatusUpdate (H04): a reservation expired or was removed."""

from __future__ import annotations

from typing import Any

from manager.common import station_reports
from manager.common.registration import require_accepted
from manager.context import CallContext
from services.station_reports import EntryKind, Put, ReportChange

ACTION = "ReservationStatusUpdate"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Store the reservation's new status; the response is empty."""
    await require_accepted(ctx)
    reservation_id = payload["reservationId"]
    entry = {
        "reservation_id": reservation_id,
        "status": payload["reservationUpdateStatus"],
        "received_at": ctx.now_iso(),
    }
    await station_reports.store(
        ctx, ReportChange(puts=[Put(EntryKind.RESERVATIONS, str(reservation_id), entry)])
    )
    ctx.log.info("reservation_status", reservation_id=reservation_id, status=entry["status"])
    return {}
