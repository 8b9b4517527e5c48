"""OCPP 2.0.1 SecurityEventNotification (A04): a security event at the station."""

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
