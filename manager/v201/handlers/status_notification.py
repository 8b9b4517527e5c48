"""OCPP 2.0.1 StatusNotification (G01): the state of one connector of one EVSE."""

from __future__ import annotations

from typing import Any

from manager.common import events, notifications
from manager.context import CallContext
from services.models import ConnectorStatus

ACTION = "StatusNotification"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Store the connector status as reported (2.0.1 carries no error code here; faults
    arrive as NotifyEvent)."""
    status = ConnectorStatus(
        evse_id=payload["evseId"],
        connector_id=payload["connectorId"],
        status=payload["connectorStatus"],
        at=payload["timestamp"],
    )
    answer = await notifications.connector_status(ctx, status)
    await events.connector_status(ctx, status)
    return answer
