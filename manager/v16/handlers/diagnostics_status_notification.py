"""OCPP 1.6 DiagnosticsStatusNotification: diagnostics upload status (GetDiagnostics)."""

from __future__ import annotations

from typing import Any

from manager.common import events, notifications
from manager.context import CallContext

ACTION = "DiagnosticsStatusNotification"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Log, acknowledge (the response is empty) and append the event."""
    answer = await notifications.acknowledge(
        ctx,
        "diagnostics_status_notification",
        status=payload["status"],
    )
    await events.diagnostics_status(ctx, payload)
    return answer
