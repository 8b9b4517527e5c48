"""OCPP 2.0.1 DataTransfer (P02): vendor-specific messages."""

from __future__ import annotations

from typing import Any

from manager.common import data_transfer
from manager.context import CallContext

ACTION = "DataTransfer"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Dispatched by vendorId (see manager.common.data_transfer)."""
    return await data_transfer.dispatch(ctx, payload)
