"""OCPP 2.0.1 NotifyEvent (N07, N08): monitoring events of device-model variables."""

from __future__ import annotations

from typing import Any

from manager.common import notifications, station_reports
from manager.context import CallContext
from services.station_reports import Append, EntryKind, HistoryKind, Put, ReportChange
from services.station_state import VariableRef

ACTION = "NotifyEvent"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Log each event, store it in the station's event history and acknowledge.

    Problems are tracked per variable: an Alerting event (a threshold or delta monitor
    tripped) opens one, an event with ``cleared`` closes it. Each stored event notes the
    transition it made (``problem`` / ``cleared``, else none), and the open problems are
    kept apart, so a problem reported again is no new transition.
    """
    events = [
        {
            "id": event.get("eventId"),
            "component": event.get("component", {}).get("name"),
            "variable": event.get("variable", {}).get("name"),
            "trigger": event.get("trigger"),
            "value": event.get("actualValue"),
        }
        for event in payload["eventData"]
    ]
    answer = await notifications.acknowledge(
        ctx, "notify_event", seq_no=payload["seqNo"], tbc=payload.get("tbc", False), events=events
    )
    at = ctx.now_iso()
    open_problems = set(
        await ctx.services.station_reports.entries(ctx.station_id, EntryKind.PROBLEMS)
    )
    appends: list[Append] = []
    puts: list[Put] = []
    deletes: list[tuple[EntryKind, str]] = []
    for event in payload["eventData"]:
        key = VariableRef.from_ocpp(event["component"], event["variable"]).key
        transition = None
        if event.get("cleared"):
            if key in open_problems:
                transition = "cleared"
                open_problems.discard(key)
            deletes.append((EntryKind.PROBLEMS, key))
        elif event["trigger"] == "Alerting":
            if key not in open_problems:
                transition = "problem"
                open_problems.add(key)
            puts.append(Put(EntryKind.PROBLEMS, key, {"event": event, "received_at": at}))
        record = {
            "event": event,
            "transition": transition,
            "generated_at": payload["generatedAt"],
            "seq_no": payload["seqNo"],
            "received_at": at,
        }
        appends.append(Append(HistoryKind.EVENTS, record))
    await station_reports.store(ctx, ReportChange(puts=puts, deletes=deletes, appends=appends))
    return answer
