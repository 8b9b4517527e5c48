"""OCPP 2.0.1 LogStatusNotification (N01): log upload progress."""

from __future__ import annotations

from typing import Any

from manager.common import notifications
from manager.context import CallContext

ACTION = "LogStatusNotification"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Log and acknowledge; the response is empty."""
    return await notifications.acknowledge(
        ctx,
        "log_status_notification",
        status=payload["status"],
        request_id=payload.get("requestId"),
    )
