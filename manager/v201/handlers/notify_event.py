"""OCPP 2.0.1 NotifyEvent (N07, N08): monitoring events of device-model variables."""

from __future__ import annotations

from typing import Any

from manager.common import notifications
from manager.context import CallContext

ACTION = "NotifyEvent"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Log each event (component, variable, trigger, value) and acknowledge."""
    events = [
        {
            "id": event.get("eventId"),
            "component": event.get("component", {}).get("name"),
            "variable": event.get("variable", {}).get("name"),
            "trigger": event.get("trigger"),
            "value": event.get("actualValue"),
        }
        for event in payload["eventData"]
    ]
    return await notifications.acknowledge(
        ctx, "notify_event", seq_no=payload["seqNo"], tbc=payload.get("tbc", False), events=events
    )
