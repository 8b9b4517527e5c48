"""Stations: listing with filters, detail with connectors and running transactions, counts.

Station ids may contain ``/`` (percent-encode it as ``%2F``): the id is the rest of the
path.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import Reader
from api.context import API_PREFIX, Context
from api.errors import ApiError, ErrorBody
from api.models import (
    StationCountsOut,
    StationDetail,
    StationOut,
    StationPage,
    StatsOut,
)
from api.paging import Cursor, Limit, listing
from services.models import RegistrationStatus

__all__ = ["router"]

router = APIRouter(prefix=API_PREFIX, tags=["stations"])


@router.get("/stations", response_model=StationPage, summary="List stations")
async def list_stations(
    ctx: Context,
    _: Reader,
    cursor: Cursor = None,
    limit: Limit = 100,
    online: Annotated[bool | None, Query(description="only online (true) or offline")] = None,
    registration: Annotated[
        RegistrationStatus | None, Query(description="only this registration status")
    ] = None,
    prefix: Annotated[
        str | None, Query(max_length=48, description="only ids starting with this")
    ] = None,
) -> StationPage:
    page = await listing(
        ctx.services.stations.list_stations(
            cursor=cursor, limit=limit, online=online, registration=registration, prefix=prefix
        )
    )
    return StationPage(
        items=[StationOut.of(record) for record in page.items], next_cursor=page.next_cursor
    )


@router.get("/stats", response_model=StatsOut, summary="Station counts for a dashboard")
async def stats(ctx: Context, _: Reader) -> StatsOut:
    counts = await ctx.services.stations.station_counts()
    return StatsOut(stations=StationCountsOut.of(counts))


@router.get(
    "/stations/{station_id:path}",
    response_model=StationDetail,
    summary="One station: record, connector statuses, active transactions",
    responses={404: {"model": ErrorBody, "description": "unknown station"}},
)
async def get_station(ctx: Context, _: Reader, station_id: str) -> StationDetail:
    record = await ctx.services.stations.get(station_id)
    if record is None:
        raise station_not_found(station_id)
    connectors, active = await asyncio.gather(
        ctx.services.stations.connector_statuses(station_id),
        ctx.services.transactions.active(station_id),
    )
    return StationDetail.detail(record, connectors, active)


def station_not_found(station_id: str) -> ApiError:
    return ApiError(
        404,
        "station_not_found",
        f"no station {station_id!r} in the registry",
        {"field": "station_id", "in": "path"},
    )
