"""OCPP 1.6 DataTransfer (§4.3): vendor-specific messages."""

from __future__ import annotations

from typing import Any

from manager.common import notifications
from manager.context import CallContext

ACTION = "DataTransfer"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """No vendor extension is configured: UnknownVendorId, as the spec prescribes."""
    return await notifications.data_transfer(ctx, payload)
