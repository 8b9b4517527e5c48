"""OCPP 2.0.1 NotifyCustomerInformation (N09): customer data a station holds, sent in parts
in answer to a CustomerInformation request."""

from __future__ import annotations

from typing import Any

from manager.common import station_reports
from manager.common.registration import require_accepted
from manager.context import CallContext
from services.station_reports import EntryKind, Put, ReportChange

ACTION = "NotifyCustomerInformation"


def part_field(request_id: int, seq_no: int) -> str:
    """Where a part is stored: zero-padded so a request's parts sort in ``seqNo`` order."""
    return f"{request_id}/{seq_no:010d}"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Store the part; the API assembles a request's parts in ``seqNo`` order (complete once
    every part up to the one without ``tbc`` is there). A repeated part replaces itself.
    The response is empty."""
    await require_accepted(ctx)
    request_id, seq_no = payload["requestId"], payload["seqNo"]
    part = {
        "request_id": request_id,
        "seq_no": seq_no,
        "tbc": payload.get("tbc", False),
        "generated_at": payload["generatedAt"],
        "data": payload["data"],
        "received_at": ctx.now_iso(),
    }
    await station_reports.store(
        ctx,
        ReportChange(
            puts=[Put(EntryKind.CUSTOMER_INFORMATION, part_field(request_id, seq_no), part)]
        ),
    )
    ctx.log.info("customer_information", request_id=request_id, seq_no=seq_no, tbc=part["tbc"])
    return {}
