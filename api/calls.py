"""``POST /v1/stations/{id}/calls/{Action}``: send any CSMS-initiated call, get its outcome.

The station's OCPP version comes from its registry record. The payload is checked against
the action's OCA request schema before anything is sent (422 naming the field), then sent
through the operations layer's CallSender, which waits for the gateway's outcome:

==============================  =====================================================
station answered (CallResult)   200 ``{"outcome": "result", "payload": ...}``
station answered (CallError)    200 ``{"outcome": "error", "error_code": ...}``
station Rejected                403 ``station_rejected``, nothing sent
no gateway holds the station    409 ``station_offline``, at once
gateway could not send it       409 ``call_undelivered`` (queue full, connection gone)
station silent past timeout     504 with the outcome (``timeout``)
nothing back before our wait    504 with the outcome (``no_outcome``: unknown)
==============================  =====================================================
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import JSONResponse

from api.actions import ActionKind, classify
from api.auth import Operator
from api.context import API_PREFIX, ApiContext, Context
from api.errors import ApiError, ErrorBody
from api.models import CallOutcomeOut
from api.stations import station_not_found
from csms.versions import OcppVersion
from operations.calls import CallOutcome, InvalidCall, Outcome
from services.models import RegistrationStatus

__all__ = ["MAX_CALL_WAIT", "callable_station", "outcome_response", "router"]

_log = structlog.get_logger("api.calls")

MAX_CALL_WAIT = 300.0
"""Largest ``?timeout=`` in seconds."""

router = APIRouter(prefix=API_PREFIX, tags=["calls"])


async def callable_station(ctx: ApiContext, station_id: str) -> OcppVersion:
    """The OCPP version to call ``station_id`` with; ApiError 404 (unknown), 409 (never
    connected) or 403 (Rejected: it takes no calls) when it cannot be called."""
    record = await ctx.services.stations.get(station_id)
    if record is None:
        raise station_not_found(station_id)
    try:
        version = OcppVersion(record.ocpp_version or "")
    except ValueError:
        raise ApiError(
            409,
            "station_offline",
            f"station {station_id!r} has never connected: its OCPP version is unknown",
            {"field": "station_id", "in": "path"},
        ) from None
    if record.registration is RegistrationStatus.REJECTED:
        # A Rejected station answers no CSMS call (2.0.1 B03, 1.6 4.2): say so at once.
        raise ApiError(
            403,
            "station_rejected",
            f"station {station_id!r} is Rejected: it takes no calls until it is registered",
            {"field": "station_id", "in": "path", "registration": record.registration.value},
        )
    return version


@router.post(
    "/stations/{station_id:path}/calls/{action}",
    response_model=CallOutcomeOut,
    summary="Send a CSMS-initiated OCPP call and wait for its outcome",
    responses={
        403: {"model": ErrorBody, "description": "key scope, or the station is Rejected"},
        404: {"model": ErrorBody, "description": "unknown station or action"},
        409: {"model": ErrorBody, "description": "station offline, or call undelivered"},
        422: {"model": ErrorBody, "description": "payload refused by the schema"},
        504: {"model": CallOutcomeOut, "description": "timeout or no outcome in time"},
    },
)
async def send_call(
    ctx: Context,
    principal: Operator,
    station_id: str,
    action: Annotated[
        str,
        Path(pattern=r"^[A-Za-z][A-Za-z0-9]{0,63}$", description="OCPP action, e.g. Reset"),
    ],
    payload: Annotated[
        dict[str, Any] | None, Body(description="the OCPP request payload (JSON object)")
    ] = None,
    timeout: Annotated[  # noqa: ASYNC109 (the caller's own deadline, bounded)
        float | None,
        Query(gt=0, le=MAX_CALL_WAIT, description="seconds to wait for the outcome"),
    ] = None,
) -> JSONResponse:
    version = await callable_station(ctx, station_id)
    kind = classify(version, action)
    if kind is ActionKind.UNKNOWN:
        raise ApiError(
            404,
            "unknown_action",
            f"{version.value} has no action {action!r}",
            {"field": "action", "in": "path", "version": version.value},
        )
    if kind is ActionKind.STATION:
        raise ApiError(
            422,
            "not_a_csms_action",
            f"{action} is sent by stations, not by the CSMS ({version.value})",
            {"field": "action", "in": "path", "version": version.value},
        )
    started = time.perf_counter()
    try:
        outcome = await ctx.sender.send(
            station_id,
            version.value,
            action,
            payload if payload is not None else {},
            timeout=timeout or ctx.call_wait,
            meta={"api_key": principal.key_id},
        )
    except InvalidCall as invalid:
        raise ApiError(
            422,
            "invalid_payload",
            str(invalid),
            {"field": invalid.field, "in": "body", "rule": invalid.rule},
        ) from None
    ctx.metrics.calls.labels(version.value, action, outcome.outcome.value).inc()
    ctx.metrics.call_seconds.labels(outcome.outcome.value).observe(time.perf_counter() - started)
    _log.info(
        "api call",
        station=station_id,
        version=version.value,
        action=action,
        outcome=outcome.outcome.value,
        message_id=outcome.message_id,
        key=principal.key_id,
    )
    return outcome_response(station_id, outcome)


def outcome_response(station_id: str, outcome: CallOutcome) -> JSONResponse:
    """The HTTP answer for a call's outcome (see the module docstring's table)."""
    body = CallOutcomeOut.of(outcome)
    if outcome.outcome is Outcome.OFFLINE:
        raise ApiError(
            409,
            "station_offline",
            f"station {station_id!r} is not connected to any gateway",
            {"field": "station_id", "in": "path"},
        )
    if outcome.outcome is Outcome.UNDELIVERED:
        raise ApiError(
            409,
            "call_undelivered",
            f"the call could not be sent: {outcome.error_description or 'undelivered'}",
            {"reason": outcome.error_description, "message_id": outcome.message_id},
        )
    status = 504 if outcome.outcome in (Outcome.TIMEOUT, Outcome.NO_OUTCOME) else 200
    return JSONResponse(body.model_dump(mode="json"), status_code=status)
