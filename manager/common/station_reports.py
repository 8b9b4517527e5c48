"""Shared steps of the handlers that persist what a station reports on its own initiative
(see :mod:`services.station_reports`): writing one change per message, status histories
tied to the CSMS call that caused them, and the keys entries are stored under."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from manager.context import CallContext
from services.station_reports import Append, HistoryKind, ReportChange

__all__ = [
    "REQUEST_LOOKBACK",
    "evse_key",
    "originating_call",
    "record_status",
    "store",
]

REQUEST_LOOKBACK = 20
"""Recent calls of the causing action searched for the one whose ``requestId`` matches."""


def evse_key(evse_id: int | None) -> str:
    """The field part naming an EVSE; 0 (the station as a whole) when none is given."""
    return str(evse_id if evse_id is not None else 0)


async def store(ctx: CallContext, change: ReportChange) -> None:
    """Apply one message's change (one atomic write); log what the caps left out."""
    dropped = await ctx.services.station_reports.apply(ctx.station_id, change)
    if dropped:
        ctx.log.warning("station_reports_full", dropped=dropped)


async def originating_call(
    ctx: CallContext, actions: Sequence[str], request_id: int | None
) -> str | None:
    """The message id of the CSMS call a status notification answers to, None when unknown.

    With a ``request_id``, the recent call of one of ``actions`` that carried it; without
    one (1.6 FirmwareStatusNotification, DiagnosticsStatusNotification carry none), the
    latest call of those actions sent to the station.
    """
    latest: tuple[float, str] | None = None
    for action in actions:
        page = await ctx.services.call_records.list_calls(
            ctx.station_id, action=action, limit=REQUEST_LOOKBACK
        )
        for record in page.items:
            if request_id is not None:
                if (record.request or {}).get("requestId") == request_id:
                    return record.message_id
                continue
            if latest is None or record.requested_at > latest[0]:
                latest = (record.requested_at, record.message_id)
            break  # newest first: the first is the latest of this action
    return latest[1] if latest is not None else None


async def record_status(
    ctx: CallContext,
    kind: HistoryKind,
    payload: Mapping[str, Any],
    causes: Sequence[str],
    **extra: Any,
) -> dict[str, Any]:
    """Append a status notification to the station's ``kind`` history, tied to the call of
    one of ``causes`` that asked for it; the stored record."""
    request_id = payload.get("requestId")
    record: dict[str, Any] = {
        "action": ctx.action,
        "status": payload["status"],
        "request_id": request_id,
        "call_id": await originating_call(ctx, causes, request_id),
        "received_at": ctx.now_iso(),
        **extra,
    }
    await store(ctx, ReportChange(appends=[Append(kind, record)]))
    return record
