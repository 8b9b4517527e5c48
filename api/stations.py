"""Stations: listing with filters, detail with connectors and running transactions, counts
(read scope); registering, changing and deleting them (admin scope) through
:mod:`operations.stations`, whose rules ``csms station add`` follows too.

Station ids may contain ``/`` (percent-encode it as ``%2F``): the id is the rest of the
path. Credentials never leave the API, except a generated password, in the answer to the
request that generated it.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
import structlog
from fastapi import APIRouter, Query

from api.auth import Admin, Reader
from api.context import API_PREFIX, Context
from api.errors import ApiError, ErrorBody
from api.models import (
    StationChangeIn,
    StationCountsOut,
    StationDetail,
    StationIn,
    StationOut,
    StationPage,
    StationSavedOut,
    StatsOut,
)
from api.paging import Cursor, Limit, listing
from operations import stations as registry
from operations.stations import (
    Refusal,
    StationChange,
    StationExists,
    StationNotFound,
    StationOnline,
    StationRefused,
    StationSaved,
)
from services.models import RegistrationStatus

__all__ = ["router"]

_log = structlog.get_logger("api.stations")

router = APIRouter(prefix=API_PREFIX, tags=["stations"])

_REFUSED: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "a credential rule refuses the change"},
}
_HINTS = {
    Refusal.PASSWORD_UNUSABLE: "allowed_versions narrows the versions it must suit",
    Refusal.PASSWORD_WITHOUT_BASIC_AUTH: "set security_profile 1 (ws) or 2 (wss)",
    Refusal.PASSWORD_WITH_CERTIFICATE: "leave the password out",
    Refusal.PASSWORD_REQUIRED: "give a password, or generate_password: true",
    Refusal.TWO_PASSWORDS: "leave one out",
}


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


@router.post(
    "/stations",
    status_code=201,
    response_model=StationSavedOut,
    summary="Register a station",
    responses={409: {"model": ErrorBody, "description": "registered already"}, **_REFUSED},
)
async def register_station(ctx: Context, principal: Admin, body: StationIn) -> StationSavedOut:
    try:
        saved = await registry.register(ctx.services.stations, body.station_id, _change(body))
    except StationExists:
        raise ApiError(
            409,
            "station_exists",
            f"station {body.station_id!r} is registered already: PATCH it to change it",
            {"field": "station_id", "in": "body"},
        ) from None
    except StationRefused as exc:
        raise _refused(exc) from None
    return _saved(saved, "station registered", principal.key_id)


@router.patch(
    "/stations/{station_id:path}",
    response_model=StationSavedOut,
    summary="Change a station's registration, credentials or versions",
    responses={404: {"model": ErrorBody, "description": "unknown station"}, **_REFUSED},
)
async def change_station(
    ctx: Context, principal: Admin, station_id: str, body: StationChangeIn
) -> StationSavedOut:
    try:
        saved = await registry.update(ctx.services.stations, station_id, _change(body))
    except StationNotFound:
        raise station_not_found(station_id) from None
    except StationRefused as exc:
        raise _refused(exc) from None
    return _saved(saved, "station changed", principal.key_id)


@router.delete(
    "/stations/{station_id:path}",
    status_code=204,
    summary="Delete a station (its transactions stay)",
    responses={
        404: {"model": ErrorBody, "description": "unknown station"},
        409: {"model": ErrorBody, "description": "the station is online (see force)"},
    },
)
async def delete_station(
    ctx: Context,
    principal: Admin,
    station_id: str,
    force: Annotated[
        bool,
        Query(
            description="delete an online station too: its socket stays open until it ends, "
            "its next connection is refused"
        ),
    ] = False,
) -> None:
    try:
        record = await registry.delete(ctx.services.stations, station_id, force=force)
        # What it reported about itself and its action rules go with it (its transactions
        # stay, for billing); a station registered again under this id starts afresh.
        await ctx.services.station_state.forget(station_id)
        await ctx.services.station_reports.forget(station_id)
        await ctx.services.action_rules.delete(station_id)
    except StationNotFound:
        raise station_not_found(station_id) from None
    except StationOnline as exc:
        raise ApiError(
            409,
            "station_online",
            f"station {station_id!r} is online: add ?force=true to delete it anyway (its "
            "connection stays open until it ends; its next one is refused)",
            {"field": "station_id", "in": "path", "gateway": exc.record.gateway},
        ) from None
    _log.info(
        "station deleted",
        station=station_id,
        online=record.online,
        gateway=record.gateway,
        by=principal.key_id,
    )


def _change(body: StationChangeIn) -> StationChange:
    """The operation's change: the fields the body gave (null password or certificate
    identity: remove it)."""
    given = body.model_fields_set
    return StationChange(
        registration=RegistrationStatus(body.registration) if body.registration else None,
        security_profile=body.security_profile,
        password=body.password if "password" in given else msgspec.UNSET,
        generate_password=body.generate_password,
        certificate_identity=(
            body.certificate_identity if "certificate_identity" in given else msgspec.UNSET
        ),
        allowed_versions=body.allowed_versions,
    )


def _refused(exc: StationRefused) -> ApiError:
    details: dict[str, object] = {"field": exc.field, "in": "body", "profile": exc.profile}
    if exc.version is not None:
        details["version"] = exc.version
    return ApiError(422, exc.refusal.value, f"{exc} ({_HINTS[exc.refusal]})", details)


def _saved(saved: StationSaved, event: str, by: str) -> StationSavedOut:
    record = saved.record
    _log.info(
        event,
        station=record.station_id,
        registration=record.registration.value,
        profile=record.security_profile,
        password_changed=saved.password_changed,
        by=by,
    )
    return StationSavedOut.saved(record, saved.generated_password)


def station_not_found(station_id: str) -> ApiError:
    return ApiError(
        404,
        "station_not_found",
        f"no station {station_id!r} in the registry",
        {"field": "station_id", "in": "path"},
    )
