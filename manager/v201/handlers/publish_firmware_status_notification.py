"""OCPP 2.0.1 PublishFirmwareStatusNotification (L03): progress of a local controller
publishing firmware (PublishFirmware)."""

from __future__ import annotations

from typing import Any

from manager.common import station_reports
from manager.common.registration import require_accepted
from manager.context import CallContext
from services.station_reports import HistoryKind

ACTION = "PublishFirmwareStatusNotification"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Append the status (and, once Published, the download locations) to the firmware
    history, tied to the PublishFirmware call; the response is empty."""
    await require_accepted(ctx)
    record = await station_reports.record_status(
        ctx,
        HistoryKind.FIRMWARE,
        payload,
        ("PublishFirmware",),
        location=payload.get("location") or [],
    )
    ctx.log.info(
        "publish_firmware_status", status=record["status"], request_id=record["request_id"]
    )
    return {}
