"""OCPP 2.0.1 SecurityEventNotification (A04): a security event at the station."""

from __future__ import annotations

from typing import Any

from manager.common import notifications
from manager.context import CallContext

ACTION = "SecurityEventNotification"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Log and acknowledge; the response is empty."""
    return await notifications.acknowledge(
        ctx,
        "security_event_notification",
        type=payload["type"],
        timestamp=payload["timestamp"],
        tech_info=payload.get("techInfo"),
    )
