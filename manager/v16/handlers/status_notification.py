"""OCPP 1.6 StatusNotification (§4.9): the state of one connector (0 = the whole station)."""

from __future__ import annotations

from typing import Any

from manager.common import events, notifications
from manager.context import CallContext
from services.models import ConnectorStatus

ACTION = "StatusNotification"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Store the status. 1.6 has no EVSEs, so the connector id doubles as the EVSE id; a
    status without a timestamp is taken as of its receipt."""
    connector_id = payload["connectorId"]
    status = ConnectorStatus(
        evse_id=connector_id,
        connector_id=connector_id,
        status=payload["status"],
        at=payload.get("timestamp") or ctx.now_iso(),
        error_code=payload["errorCode"],
        info=payload.get("info"),
        vendor_error_code=payload.get("vendorErrorCode"),
    )
    answer = await notifications.connector_status(ctx, status)
    await events.connector_status(ctx, status)
    return answer
