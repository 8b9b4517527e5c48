"""Small station messages: Heartbeat, connector status, notifications whose response is
empty, and the logging of CSMS calls that failed."""

from __future__ import annotations

from typing import Any

from manager.common.registration import require_accepted
from manager.context import CallContext, ResultContext
from services.models import (
    ConnectorStatus,
)

__all__ = [
    "acknowledge",
    "connector_status",
    "heartbeat",
    "result_failed",
]


async def heartbeat(ctx: CallContext) -> dict[str, Any]:
    """Answer a Heartbeat with the CSMS time (OCPP's clock synchronisation).

    Last-seen is recorded by the worker for every message a station sends, this one included.
    """
    await require_accepted(ctx)
    return {"currentTime": ctx.now_iso()}


async def connector_status(ctx: CallContext, status: ConnectorStatus) -> dict[str, Any]:
    """Store a reported connector status; StatusNotification responses are empty."""
    await require_accepted(ctx)
    await ctx.services.stations.set_connector_status(ctx.station_id, status)
    ctx.log.info(
        "connector_status",
        evse_id=status.evse_id,
        connector_id=status.connector_id,
        status=status.status,
        error_code=status.error_code,
    )
    return {}


async def acknowledge(ctx: CallContext, event: str, **facts: Any) -> dict[str, Any]:
    """Log a notification whose response is empty and acknowledge it."""
    await require_accepted(ctx)
    ctx.log.info(event, **facts)
    return {}


def result_failed(ctx: ResultContext) -> bool:
    """Log a CSMS call the station did not answer with a CallResult; True when so."""
    if ctx.ok:
        return False
    ctx.log.warning(
        "call_failed",
        action=ctx.request.action,
        error_code=ctx.error_code,
        error_description=ctx.error_description,
        timed_out=ctx.timed_out,
        undelivered=ctx.undelivered,
    )
    return True
