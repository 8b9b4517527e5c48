"""OCPP 1.6 SecurityEventNotification: a security event at the station (security extension)."""

from __future__ import annotations

from typing import Any

from manager.common import events, notifications
from manager.context import CallContext

ACTION = "SecurityEventNotification"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Log, acknowledge (the response is empty) and append the event."""
    answer = await notifications.acknowledge(
        ctx,
        "security_event_notification",
        type=payload["type"],
        timestamp=payload["timestamp"],
        tech_info=payload.get("techInfo"),
    )
    await events.security_event(ctx, payload)
    return answer
