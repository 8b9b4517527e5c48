"""OCPP 2.0.1 Heartbeat (G02): the CSMS time, and proof of life."""

from __future__ import annotations

from typing import Any

from manager.common import notifications
from manager.context import CallContext

ACTION = "Heartbeat"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Answer ``currentTime`` (stations may sync their clock to it); record last-seen."""
    return await notifications.heartbeat(ctx)
