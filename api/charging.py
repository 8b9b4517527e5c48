"""Task-level routes, one shape for both versions: remote start and stop
(:mod:`operations.charging`), reset, unlock, availability, trigger (:mod:`operations.tasks`).

``POST /v1/stations/{id}/remote-start`` answers with the transaction it started, once the
station reports it (2.0.1 ``remoteStartId`` ↔ TransactionEvent; 1.6 idTag and connector ↔
StartTransaction), or says the start was accepted but no transaction appeared in time.
``POST /v1/stations/{id}/transactions/{tx}/stop`` sends the version's stop request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.auth import Operator
from api.calls import MAX_CALL_WAIT, callable_station, outcome_response
from api.context import API_PREFIX, ApiContext, Context
from api.errors import ApiError, ErrorBody
from api.models import CallOutcomeOut
from operations import tasks
from operations.calls import CallOutcome, InvalidCall, Outcome
from operations.charging import StartStatus, TransactionUnknown, remote_start, remote_stop

__all__ = [
    "AvailabilityIn",
    "RemoteStartIn",
    "RemoteStartOut",
    "ResetIn",
    "TriggerIn",
    "UnlockIn",
    "router",
]

router = APIRouter(prefix=API_PREFIX, tags=["charging"])

_DENIED: dict[int | str, dict[str, Any]] = {
    403: {
        "model": ErrorBody,
        "description": "key scope, or the station's action rules deny the call (action_denied)",
    },
}


class RemoteStartIn(BaseModel):
    id_token: str = Field(min_length=1, max_length=36, description="the idToken / 1.6 idTag")
    token_type: str = Field(
        default="Central", description="2.0.1 IdTokenEnumType (Central: issued by the CSMS)"
    )
    evse_id: int | None = Field(default=None, ge=1, description="2.0.1 EVSE (default: any)")
    connector_id: int | None = Field(
        default=None, ge=1, description="1.6 connector (default: the station picks)"
    )
    wait: float = Field(
        default=60.0,
        ge=0,
        le=MAX_CALL_WAIT,
        description="seconds to wait for the transaction after the station accepted",
    )


class RemoteStartOut(BaseModel):
    status: StartStatus
    transaction_id: str | None = None
    remote_start_id: int | None = None
    call: CallOutcomeOut


@router.post(
    "/stations/{station_id:path}/remote-start",
    response_model=RemoteStartOut,
    summary="Start a transaction remotely and wait for its transaction id",
    responses={
        **_DENIED,
        404: {"model": ErrorBody, "description": "no such station"},
        409: {"model": ErrorBody, "description": "station offline, or call undelivered"},
        422: {"model": ErrorBody, "description": "payload refused by the schema"},
        504: {"model": RemoteStartOut, "description": "no answer from the station in time"},
    },
)
async def start(
    ctx: Context,
    _: Operator,
    station_id: str,
    body: Annotated[RemoteStartIn, Body()],
) -> JSONResponse:
    version = await callable_station(ctx, station_id)
    try:
        started = await remote_start(
            ctx.sender,
            ctx.services,
            station_id,
            version.value,
            id_token=body.id_token,
            token_type=body.token_type,
            evse_id=body.evse_id,
            connector_id=body.connector_id,
            wait=body.wait,
            call_timeout=ctx.call_wait,
        )
    except InvalidCall as invalid:
        raise ApiError(
            422, "invalid_payload", str(invalid), {"field": invalid.field, "in": "body"}
        ) from None
    outcome = started.outcome
    if started.status is StartStatus.FAILED and outcome.outcome in (
        Outcome.OFFLINE,
        Outcome.UNDELIVERED,
    ):
        return outcome_response(station_id, outcome)
    answer = RemoteStartOut(
        status=started.status,
        transaction_id=started.transaction_id,
        remote_start_id=started.remote_start_id,
        call=CallOutcomeOut.of(outcome),
    )
    late = outcome.outcome in (Outcome.TIMEOUT, Outcome.NO_OUTCOME)
    return JSONResponse(answer.model_dump(mode="json"), status_code=504 if late else 200)


@router.post(
    "/stations/{station_id:path}/transactions/{transaction_id}/stop",
    response_model=CallOutcomeOut,
    summary="Ask the station to stop one of its active transactions",
    responses={
        **_DENIED,
        404: {"model": ErrorBody, "description": "no such active transaction"},
        409: {"model": ErrorBody, "description": "station offline, or call undelivered"},
        504: {"model": CallOutcomeOut, "description": "no answer from the station in time"},
    },
)
async def stop(ctx: Context, _: Operator, station_id: str, transaction_id: str) -> JSONResponse:
    version = await callable_station(ctx, station_id)
    try:
        outcome = await remote_stop(
            ctx.sender,
            ctx.services,
            station_id,
            version.value,
            transaction_id,
            call_timeout=ctx.call_wait,
        )
    except TransactionUnknown as unknown:
        raise ApiError(
            404,
            "transaction_not_found",
            str(unknown),
            {"field": "transaction_id", "in": "path"},
        ) from None
    return outcome_response(station_id, outcome)


class ResetIn(BaseModel):
    immediate: bool = Field(
        default=True, description="reboot now (1.6 Hard), or once idle (1.6 Soft, 2.0.1 OnIdle)"
    )


class UnlockIn(BaseModel):
    connector_id: int = Field(ge=1)
    evse_id: int | None = Field(default=None, ge=1, description="required for 2.0.1 stations")


class AvailabilityIn(BaseModel):
    operative: bool
    evse_id: int | None = Field(default=None, ge=0, description="default: the whole station")
    connector_id: int | None = Field(default=None, ge=0)


class TriggerIn(BaseModel):
    message: str = Field(
        min_length=1, description="the version's MessageTriggerEnumType, e.g. StatusNotification"
    )
    evse_id: int | None = Field(default=None, ge=1)
    connector_id: int | None = Field(default=None, ge=1)


_TASK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_DENIED,
    404: {"model": ErrorBody, "description": "no such station"},
    409: {"model": ErrorBody, "description": "station offline, or call undelivered"},
    422: {"model": ErrorBody, "description": "payload refused by the schema"},
    504: {"model": CallOutcomeOut, "description": "no answer from the station in time"},
}


async def _task(
    ctx: ApiContext, station_id: str, send: Callable[[str], Awaitable[CallOutcome]]
) -> JSONResponse:
    """Run one task for a callable station and answer with its outcome."""
    version = await callable_station(ctx, station_id)
    try:
        outcome = await send(version.value)
    except InvalidCall as invalid:
        raise ApiError(
            422, "invalid_payload", str(invalid), {"field": invalid.field, "in": "body"}
        ) from None
    return outcome_response(station_id, outcome)


@router.post(
    "/stations/{station_id:path}/reset",
    response_model=CallOutcomeOut,
    summary="Reset (reboot) a station, now or once idle",
    responses=_TASK_RESPONSES,
)
async def reset_station(
    ctx: Context, _: Operator, station_id: str, body: Annotated[ResetIn, Body()]
) -> JSONResponse:
    return await _task(
        ctx,
        station_id,
        lambda version: tasks.reset(
            ctx.sender, station_id, version, immediate=body.immediate, timeout=ctx.call_wait
        ),
    )


@router.post(
    "/stations/{station_id:path}/unlock",
    response_model=CallOutcomeOut,
    summary="Unlock a connector",
    responses=_TASK_RESPONSES,
)
async def unlock_connector(
    ctx: Context, _: Operator, station_id: str, body: Annotated[UnlockIn, Body()]
) -> JSONResponse:
    return await _task(
        ctx,
        station_id,
        lambda version: tasks.unlock(
            ctx.sender,
            station_id,
            version,
            connector_id=body.connector_id,
            evse_id=body.evse_id,
            timeout=ctx.call_wait,
        ),
    )


@router.post(
    "/stations/{station_id:path}/availability",
    response_model=CallOutcomeOut,
    summary="Make a station, EVSE or connector operative or inoperative",
    responses=_TASK_RESPONSES,
)
async def change_availability(
    ctx: Context, _: Operator, station_id: str, body: Annotated[AvailabilityIn, Body()]
) -> JSONResponse:
    return await _task(
        ctx,
        station_id,
        lambda version: tasks.availability(
            ctx.sender,
            station_id,
            version,
            operative=body.operative,
            evse_id=body.evse_id,
            connector_id=body.connector_id,
            timeout=ctx.call_wait,
        ),
    )


@router.post(
    "/stations/{station_id:path}/trigger",
    response_model=CallOutcomeOut,
    summary="Ask a station to send a message now (TriggerMessage)",
    responses=_TASK_RESPONSES,
)
async def trigger_message(
    ctx: Context, _: Operator, station_id: str, body: Annotated[TriggerIn, Body()]
) -> JSONResponse:
    return await _task(
        ctx,
        station_id,
        lambda version: tasks.trigger(
            ctx.sender,
            station_id,
            version,
            message=body.message,
            evse_id=body.evse_id,
            connector_id=body.connector_id,
            timeout=ctx.call_wait,
        ),
    )
