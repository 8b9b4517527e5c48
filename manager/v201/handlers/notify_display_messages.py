"""OCPP 2.0.1 NotifyDisplayMessages (O04): the messages a station displays, reported in parts
in answer to GetDisplayMessages."""

from __future__ import annotations

from typing import Any

from manager.common import station_reports
from manager.common.registration import require_accepted
from manager.context import CallContext
from services.station_reports import EntryKind, Put, ReportChange

ACTION = "NotifyDisplayMessages"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Store each message by its id (a later report replaces it), naming the report it came
    in; parts are independent, so their order does not matter. The response is empty."""
    await require_accepted(ctx)
    request_id = payload["requestId"]
    at = ctx.now_iso()
    messages = payload.get("messageInfo") or []
    puts = [
        Put(
            EntryKind.DISPLAY_MESSAGES,
            str(info["id"]),
            {"request_id": request_id, "message_info": info, "received_at": at},
        )
        for info in messages
    ]
    await station_reports.store(ctx, ReportChange(puts=puts))
    ctx.log.info(
        "display_messages",
        request_id=request_id,
        messages=len(messages),
        tbc=payload.get("tbc", False),
    )
    return {}
