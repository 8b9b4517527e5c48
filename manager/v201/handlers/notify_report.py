"""OCPP 2.0.1 NotifyReport (B07/B08): one part of a device-model report."""

from __future__ import annotations

from typing import Any

from manager.common import notifications
from manager.context import CallContext

ACTION = "NotifyReport"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Log and acknowledge (reports are not stored yet); the response is empty."""
    return await notifications.acknowledge(
        ctx,
        "notify_report",
        request_id=payload["requestId"],
        seq_no=payload["seqNo"],
        tbc=payload.get("tbc", False),
        variables=len(payload.get("reportData") or ()),
    )
