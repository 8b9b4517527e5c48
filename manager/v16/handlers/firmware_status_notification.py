"""OCPP 1.6 FirmwareStatusNotification: firmware update progress (UpdateFirmware)."""

from __future__ import annotations

from typing import Any

from manager.common import events, notifications
from manager.context import CallContext

ACTION = "FirmwareStatusNotification"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Log, acknowledge (the response is empty) and append the event."""
    answer = await notifications.acknowledge(
        ctx,
        "firmware_status_notification",
        status=payload["status"],
    )
    await events.firmware_status(ctx, payload)
    return answer
