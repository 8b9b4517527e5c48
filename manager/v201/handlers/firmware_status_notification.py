"""OCPP 2.0.1 FirmwareStatusNotification (L01): firmware update progress."""

from __future__ import annotations

from typing import Any

from manager.common import events, notifications, station_reports
from manager.context import CallContext
from services.station_reports import HistoryKind

ACTION = "FirmwareStatusNotification"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Log, acknowledge (the response is empty) and append the event."""
    answer = await notifications.acknowledge(
        ctx,
        "firmware_status_notification",
        status=payload["status"],
        request_id=payload.get("requestId"),
    )
    await events.firmware_status(ctx, payload)
    await station_reports.record_status(ctx, HistoryKind.FIRMWARE, payload, ("UpdateFirmware",))
    return answer
