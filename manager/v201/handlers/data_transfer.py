"""OCPP 2.0.1 DataTransfer (P02): vendor-specific messages."""

from __future__ import annotations

from typing import Any

from manager.common import notifications
from manager.context import CallContext

ACTION = "DataTransfer"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """No vendor extension is configured: UnknownVendorId."""
    return await notifications.data_transfer(ctx, payload)
