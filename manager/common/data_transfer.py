"""DataTransfer of both versions: dispatched by vendorId to the operator's handlers
(``services.data_transfer``, setting ``data_transfer_handlers``) or a built-in one (1.6:
ISO 15118 Plug & Charge, :mod:`manager.common.pnc`); any other vendorId is UnknownVendorId,
an unknown messageId of a known vendor UnknownMessageId. Every DataTransfer is logged with
its vendorId and messageId, handled or not."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from csms.versions import OcppVersion
from manager.common import pnc
from manager.common.registration import require_accepted
from manager.context import CallContext
from services.data_transfer import VendorAnswer, VendorMessage

__all__ = ["BUILT_IN", "dispatch"]

BuiltIn = Callable[[CallContext, str | None, Any], Awaitable[VendorAnswer]]

BUILT_IN: dict[str, dict[str, BuiltIn]] = {
    OcppVersion.OCPP16.value: {pnc.PNC_VENDOR_ID: pnc.data_transfer_16},
}
"""Vendors the CSMS answers itself, per version; a configured handler of the same vendorId
takes precedence."""


async def dispatch(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """The DataTransfer response for ``payload`` (either version's request shape)."""
    await require_accepted(ctx)
    vendor_id: str = payload["vendorId"]
    message_id: str | None = payload.get("messageId")
    data = payload.get("data")
    plugged = ctx.services.data_transfer.get(vendor_id)
    built_in = BUILT_IN.get(ctx.version, {}).get(vendor_id)
    if plugged is not None:
        answer = await plugged.handle(
            VendorMessage(
                station_id=ctx.station_id,
                version=ctx.version,
                vendor_id=vendor_id,
                message_id=message_id,
                data=data,
            )
        )
    elif built_in is not None:
        answer = await built_in(ctx, message_id, data)
    else:
        answer = VendorAnswer(status="UnknownVendorId")
    ctx.log.info(
        "data_transfer",
        vendor_id=vendor_id,
        message_id=message_id,
        status=answer.status,
        handler="configured" if plugged else "built-in" if built_in else None,
    )
    response: dict[str, Any] = {"status": answer.status}
    if answer.data is not None:
        text_only = ctx.version == OcppVersion.OCPP16.value
        response["data"] = (
            answer.data
            if not text_only or isinstance(answer.data, str)
            else json.dumps(answer.data, separators=(",", ":"))
        )
    return response
