"""What stations reported on their own initiative (read scope): smart-charging facts, firmware
and log upload status histories, customer information, display messages, reservation status,
monitors, monitoring events and meter values.

The managers store them from station Calls (see :mod:`services.station_reports`); send the
call that asks for a report (``POST .../calls/GetChargingProfiles`` and the like) to refresh
one. Stored values keep the station's OCPP field names inside (``chargingNeeds``,
``messageInfo``, ...); what the CSMS adds is snake case (``received_at``, ``request_id``).

The routes end in a fixed segment after the station id, which may contain ``/`` (``%2F``):
the app registers this router before the stations router, whose detail route takes any rest
of the path as the id.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.auth import Reader
from api.context import API_PREFIX, ApiContext, Context
from api.errors import ErrorBody
from api.stations import station_not_found
from services.station_reports import EntryKind, HistoryKind, transaction_scope

__all__ = [
    "ChargingOut",
    "CustomerInformationOut",
    "EventsOut",
    "HistoryOut",
    "ItemsOut",
    "router",
]

router = APIRouter(prefix=API_PREFIX, tags=["station reports"])

_UNKNOWN_STATION: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "unknown station"}
}

HistoryLimit = Annotated[int, Query(ge=1, le=1000, description="newest records to return")]

Record = dict[str, Any]


class ItemsOut(BaseModel):
    """A station's stored entries of one kind, in key order."""

    station_id: str
    items: list[Record]


class HistoryOut(BaseModel):
    """A station's status history, newest first."""

    station_id: str
    items: list[Record]


class ChargingOut(BaseModel):
    """What the station said about smart charging: the EVs' needs (NotifyEVChargingNeeds) and
    chosen schedules (NotifyEVChargingSchedule) per EVSE, external limits per EVSE and source
    (NotifyChargingLimit, removed by ClearedChargingLimit), reported profiles per EVSE and
    profile id (ReportChargingProfiles) and those reports' progress per requestId."""

    station_id: str
    needs: list[Record]
    schedules: list[Record]
    limits: list[Record]
    profiles: list[Record]
    profile_reports: list[Record]


class CustomerInformationOut(BaseModel):
    """NotifyCustomerInformation parts assembled per requestId: ``data`` is the parts' data
    in seqNo order; ``complete`` once every part up to the last (``tbc`` false) arrived."""

    station_id: str
    items: list[Record]


class EventsOut(BaseModel):
    """NotifyEvent events, newest first (each with the problem transition it made), and the
    variables with an open problem."""

    station_id: str
    items: list[Record]
    open_problems: list[Record]


class MeterValuesOut(BaseModel):
    """2.0.1 MeterValues records, newest first, and the EVSEs that sent any."""

    station_id: str
    evse_ids: list[int]
    items: list[Record]


async def _known(ctx: ApiContext, station_id: str) -> None:
    if await ctx.services.stations.get(station_id) is None:
        raise station_not_found(station_id)


def _sorted(entries: dict[str, Record]) -> list[Record]:
    return [entries[name] for name in sorted(entries)]


async def _entries(ctx: ApiContext, station_id: str, kind: EntryKind) -> list[Record]:
    return _sorted(await ctx.services.station_reports.entries(station_id, kind))


async def _history(ctx: ApiContext, station_id: str, kind: HistoryKind, limit: int) -> HistoryOut:
    await _known(ctx, station_id)
    items = await ctx.services.station_reports.history(station_id, kind, limit=limit)
    return HistoryOut(station_id=station_id, items=items)


@router.get(
    "/stations/{station_id:path}/charging",
    response_model=ChargingOut,
    summary="EV charging needs and schedules, external limits, reported charging profiles",
    responses=_UNKNOWN_STATION,
)
async def get_charging(ctx: Context, _: Reader, station_id: str) -> ChargingOut:
    await _known(ctx, station_id)
    return ChargingOut(
        station_id=station_id,
        needs=await _entries(ctx, station_id, EntryKind.CHARGING_NEEDS),
        schedules=await _entries(ctx, station_id, EntryKind.CHARGING_SCHEDULES),
        limits=await _entries(ctx, station_id, EntryKind.CHARGING_LIMITS),
        profiles=await _entries(ctx, station_id, EntryKind.CHARGING_PROFILES),
        profile_reports=await _entries(ctx, station_id, EntryKind.PROFILE_REPORTS),
    )


@router.get(
    "/stations/{station_id:path}/firmware",
    response_model=HistoryOut,
    summary="Firmware status history (FirmwareStatusNotification, signed, publish)",
    responses=_UNKNOWN_STATION,
)
async def get_firmware(
    ctx: Context, _: Reader, station_id: str, limit: HistoryLimit = 100
) -> HistoryOut:
    return await _history(ctx, station_id, HistoryKind.FIRMWARE, limit)


@router.get(
    "/stations/{station_id:path}/logs",
    response_model=HistoryOut,
    summary="Log and diagnostics upload status history (LogStatusNotification, 1.6 "
    "DiagnosticsStatusNotification)",
    responses=_UNKNOWN_STATION,
)
async def get_logs(
    ctx: Context, _: Reader, station_id: str, limit: HistoryLimit = 100
) -> HistoryOut:
    return await _history(ctx, station_id, HistoryKind.LOGS, limit)


def assemble(parts: dict[str, Record]) -> list[Record]:
    """NotifyCustomerInformation parts (field ``{requestId}/{seqNo:010d}``) per request."""
    by_request: dict[int, list[Record]] = {}
    for name in sorted(parts):
        part = parts[name]
        by_request.setdefault(part["request_id"], []).append(part)
    assembled = []
    for request_id, found in sorted(by_request.items()):
        seq_nos = [part["seq_no"] for part in found]
        last = next((part["seq_no"] for part in found if not part["tbc"]), None)
        complete = last is not None and seq_nos[: last + 1] == list(range(last + 1))
        assembled.append(
            {
                "request_id": request_id,
                "complete": complete,
                "parts": len(found),
                "data": "".join(part["data"] for part in found),
                "generated_at": found[0]["generated_at"],
                "received_at": max(part["received_at"] for part in found),
            }
        )
    return assembled


@router.get(
    "/stations/{station_id:path}/customer-information",
    response_model=CustomerInformationOut,
    summary="Customer information the station reported (NotifyCustomerInformation)",
    responses=_UNKNOWN_STATION,
)
async def get_customer_information(
    ctx: Context, _: Reader, station_id: str
) -> CustomerInformationOut:
    await _known(ctx, station_id)
    parts = await ctx.services.station_reports.entries(station_id, EntryKind.CUSTOMER_INFORMATION)
    return CustomerInformationOut(station_id=station_id, items=assemble(parts))


async def _items(ctx: ApiContext, station_id: str, kind: EntryKind) -> ItemsOut:
    await _known(ctx, station_id)
    return ItemsOut(station_id=station_id, items=await _entries(ctx, station_id, kind))


@router.get(
    "/stations/{station_id:path}/display-messages",
    response_model=ItemsOut,
    summary="Display messages the station reported (NotifyDisplayMessages)",
    responses=_UNKNOWN_STATION,
)
async def get_display_messages(ctx: Context, _: Reader, station_id: str) -> ItemsOut:
    return await _items(ctx, station_id, EntryKind.DISPLAY_MESSAGES)


@router.get(
    "/stations/{station_id:path}/reservations",
    response_model=ItemsOut,
    summary="Reservation status updates (ReservationStatusUpdate)",
    responses=_UNKNOWN_STATION,
)
async def get_reservations(ctx: Context, _: Reader, station_id: str) -> ItemsOut:
    return await _items(ctx, station_id, EntryKind.RESERVATIONS)


@router.get(
    "/stations/{station_id:path}/monitors",
    response_model=ItemsOut,
    summary="Variable monitors the station reported (NotifyMonitoringReport)",
    responses=_UNKNOWN_STATION,
)
async def get_monitors(ctx: Context, _: Reader, station_id: str) -> ItemsOut:
    return await _items(ctx, station_id, EntryKind.MONITORS)


@router.get(
    "/stations/{station_id:path}/events",
    response_model=EventsOut,
    summary="Monitoring events (NotifyEvent) and the open problems",
    responses=_UNKNOWN_STATION,
)
async def get_events(
    ctx: Context, _: Reader, station_id: str, limit: HistoryLimit = 100
) -> EventsOut:
    await _known(ctx, station_id)
    reports = ctx.services.station_reports
    return EventsOut(
        station_id=station_id,
        items=await reports.history(station_id, HistoryKind.EVENTS, limit=limit),
        open_problems=await _entries(ctx, station_id, EntryKind.PROBLEMS),
    )


@router.get(
    "/stations/{station_id:path}/meter-values",
    response_model=MeterValuesOut,
    summary="2.0.1 MeterValues, per EVSE (or per transaction), newest first",
    responses=_UNKNOWN_STATION,
)
async def get_meter_values(
    ctx: Context,
    _: Reader,
    station_id: str,
    limit: HistoryLimit = 100,
    evse: Annotated[
        int | None, Query(ge=0, description="only this EVSE's readings (0: the main meter)")
    ] = None,
    transaction: Annotated[
        str | None,
        Field(max_length=36),
        Query(description="only readings taken while this transaction ran"),
    ] = None,
) -> MeterValuesOut:
    await _known(ctx, station_id)
    reports = ctx.services.station_reports
    scopes = await reports.scopes(station_id, HistoryKind.METER_VALUES)
    evse_ids = sorted(int(scope) for scope in scopes if scope.isdigit())
    if transaction is not None:
        wanted = [transaction_scope(transaction)]
    elif evse is not None:
        wanted = [str(evse)]
    else:
        wanted = [str(evse_id) for evse_id in evse_ids]
    items: list[Record] = []
    for scope in wanted:
        items += await reports.history(station_id, HistoryKind.METER_VALUES, scope, limit)
    items.sort(key=lambda record: str(record["received_at"]), reverse=True)
    return MeterValuesOut(station_id=station_id, evse_ids=evse_ids, items=items[:limit])
