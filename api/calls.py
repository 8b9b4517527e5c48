"""``POST /v1/stations/{id}/calls/{Action}``: send any CSMS-initiated call, get its outcome.

The station's OCPP version comes from its registry record. The payload is checked against
the action's OCA request schema before anything is sent (422 naming the field), then sent
through the operations layer's CallSender, which waits for the gateway's outcome:

==============================  =====================================================
station answered (CallResult)   200 ``{"outcome": "result", "payload": ...}``
station answered (CallError)    200 ``{"outcome": "error", "error_code": ...}``
station Rejected                403 ``station_rejected``, nothing sent
action rules deny the call      403 ``action_denied``, nothing sent
no gateway holds the station    409 ``station_offline``, at once
gateway could not send it       409 ``call_undelivered`` (queue full, connection gone)
station silent past timeout     504 with the outcome (``timeout``)
nothing back before our wait    504 with the outcome (``no_outcome``: unknown)
==============================  =====================================================

``?wait=false`` validates the same way, sends, and answers 202 at once with the outcome
``pending`` and ``Location: /v1/calls/{message_id}``. Every call sent here is recorded
(:mod:`services.call_records`) before it is published, and the managers record its outcome
from the shared ``in`` topic, so ``GET /v1/calls/{message_id}`` reads it on any replica, and
``GET /v1/stations/{id}/calls`` lists a station's recent calls.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
import structlog
from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.actions import ActionKind, classify
from api.auth import Operator, Reader
from api.context import API_PREFIX, ApiContext, Context
from api.errors import ApiError, ErrorBody
from api.models import CallOutcomeOut, CallPage
from api.paging import Cursor, Limit, listing
from api.stations import station_not_found
from csms.bus import NoSubscribers
from csms.versions import OcppVersion
from operations.calls import CallOutcome, InvalidCall, Outcome, check_call
from services.call_records import CallRecord, CallState, redact
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


_ACTION = r"^[A-Za-z][A-Za-z0-9]{0,63}$"


@router.post(
    "/stations/{station_id:path}/calls/{action}",
    response_model=CallOutcomeOut,
    summary="Send a CSMS-initiated OCPP call and wait for its outcome (or not: ?wait=false)",
    responses={
        202: {"model": CallOutcomeOut, "description": "wait=false: sent, outcome pending"},
        403: {
            "model": ErrorBody,
            "description": "key scope, the station is Rejected, or its action rules deny the "
            "call (action_denied)",
        },
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
    action: Annotated[str, Path(pattern=_ACTION, description="OCPP action, e.g. Reset")],
    payload: Annotated[
        dict[str, Any] | None, Body(description="the OCPP request payload (JSON object)")
    ] = None,
    timeout: Annotated[  # noqa: ASYNC109 (the caller's own deadline, bounded)
        float | None,
        Query(
            gt=0,
            le=MAX_CALL_WAIT,
            description="seconds to wait for the outcome (wait=false: after which a pending "
            "call reads as no_outcome)",
        ),
    ] = None,
    wait: Annotated[
        bool, Query(description="false: answer 202 at once, read the outcome at Location")
    ] = True,
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
    body = payload if payload is not None else {}
    try:
        check_call(version.value, action, body)
    except InvalidCall as invalid:
        raise ApiError(
            422,
            "invalid_payload",
            str(invalid),
            {"field": invalid.field, "in": "body", "rule": invalid.rule},
        ) from None
    sent = await send_recorded(
        ctx,
        station_id,
        version.value,
        action,
        body,
        meta={"api_key": principal.key_id},
        timeout=timeout,
        wait=wait,
    )
    if sent.outcome is None:
        _observe(ctx, sent.record, CallState.PENDING, principal.key_id)
        return pending_response(CallOutcomeOut.of_record(sent.record), sent.record)
    ctx.metrics.call_seconds.labels(sent.outcome.outcome.value).observe(sent.seconds)
    _observe(ctx, sent.record, CallState(sent.outcome.outcome.value), principal.key_id)
    return outcome_response(station_id, sent.outcome)


@dataclass(frozen=True, slots=True)
class SentCall:
    """What :func:`send_recorded` did: the call's record and, unless it was only submitted,
    its outcome, with the seconds from publishing to the outcome recorded."""

    record: CallRecord
    outcome: CallOutcome | None
    seconds: float


async def send_recorded(
    ctx: ApiContext,
    station_id: str,
    version: str,
    action: str,
    payload: dict[str, Any],
    *,
    meta: dict[str, str],
    timeout: float | None,  # noqa: ASYNC109 (the caller's own deadline, bounded)
    wait: bool,
) -> SentCall:
    """Send a checked call the way every route that sends one does, in this order: the
    station's action rules (a denied call, 403 action_denied, is never sent, so never
    recorded), the pending record (an outcome a manager records always comes after it),
    then send and await the outcome (``wait``) or only submit it. An outcome is recorded as
    soon as this replica has it; a station no gateway holds is an offline outcome."""
    await ctx.sender.check_allowed(station_id, version, action)
    deadline = timeout or ctx.call_wait
    requested_at = time.time()
    record = CallRecord(
        message_id=str(uuid.uuid4()),
        station_id=station_id,
        version=version,
        action=action,
        request=redact(action, payload),
        requested_at=requested_at,
        deadline=requested_at + deadline,
    )
    await ctx.services.call_records.begin(record)
    started = time.perf_counter()
    if wait:
        outcome = await ctx.sender.send(
            station_id,
            version,
            action,
            payload,
            timeout=deadline,
            meta=meta,
            message_id=record.message_id,
        )
    else:
        try:
            await ctx.sender.submit(
                station_id, version, action, payload, meta=meta, message_id=record.message_id
            )
        except NoSubscribers:
            outcome = _offline_outcome(station_id, version, action)
        else:
            return SentCall(record, None, time.perf_counter() - started)
    await _record_outcome(ctx, record, outcome)
    return SentCall(record, outcome, time.perf_counter() - started)


def pending_response(body: BaseModel, record: CallRecord) -> JSONResponse:
    """202 for a call sent without waiting: its outcome is read at ``Location``."""
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"{API_PREFIX}/calls/{quote(record.message_id, safe='')}"},
    )


def _offline_outcome(station_id: str, version: str, action: str) -> CallOutcome:
    """The outcome of a call no gateway could take (nothing was sent)."""
    return CallOutcome(
        Outcome.OFFLINE,
        station_id,
        version,
        action,
        None,
        error_description="no gateway holds the station",
        finished_at=time.time(),
    )


def _observe(ctx: ApiContext, record: CallRecord, state: CallState, key_id: str) -> None:
    ctx.metrics.calls.labels(record.version, record.action, state.value).inc()
    _log.info(
        "api call",
        station=record.station_id,
        version=record.version,
        action=record.action,
        outcome=state.value,
        message_id=record.message_id,
        key=key_id,
    )


async def _record_outcome(ctx: ApiContext, record: CallRecord, outcome: CallOutcome) -> None:
    """Store what this replica learnt (the managers store the gateway's outcomes too): so
    the answer is readable the moment the caller has it. ``no_outcome`` is no fact to
    store; a store failure only costs that head start."""
    if outcome.outcome is Outcome.NO_OUTCOME:
        return
    final = msgspec.structs.replace(
        record,
        outcome=CallState(outcome.outcome.value),
        payload=outcome.payload,
        error_code=outcome.error_code,
        error_description=outcome.error_description,
        error_details=outcome.error_details,
        sent_at=outcome.sent_at,
        finished_at=outcome.finished_at,
    )
    try:
        await ctx.services.call_records.finish(final)
    except Exception as exc:
        _log.warning(
            "call outcome not recorded",
            station=record.station_id,
            message_id=record.message_id,
            error=str(exc),
        )


@router.get(
    "/calls/{message_id}",
    response_model=CallOutcomeOut,
    summary="A CSMS call's outcome, pending or final (calls sent through any replica)",
    responses={404: {"model": ErrorBody, "description": "unknown call, or expired"}},
)
async def get_call(
    ctx: Context,
    _: Reader,
    message_id: Annotated[str, Path(min_length=1, max_length=128, description="its message id")],
) -> CallOutcomeOut:
    record = await ctx.services.call_records.get(message_id)
    if record is None:
        raise ApiError(
            404,
            "call_not_found",
            f"no call {message_id!r} is recorded (unknown, or older than call_record_ttl)",
            {"field": "message_id", "in": "path"},
        )
    return CallOutcomeOut.of_record(record)


@router.get(
    "/stations/{station_id:path}/calls",
    response_model=CallPage,
    summary="A station's recent CSMS calls, newest first",
    responses={404: {"model": ErrorBody, "description": "unknown station"}},
)
async def list_calls(
    ctx: Context,
    _: Reader,
    station_id: str,
    cursor: Cursor = None,
    limit: Limit = 100,
    action: Annotated[str | None, Query(pattern=_ACTION, description="only this action")] = None,
    outcome: Annotated[CallState | None, Query(description="only calls with this outcome")] = None,
) -> CallPage:
    if await ctx.services.stations.get(station_id) is None:
        raise station_not_found(station_id)
    page = await listing(
        ctx.services.call_records.list_calls(
            station_id, cursor=cursor, limit=limit, action=action, outcome=outcome
        )
    )
    return CallPage(
        items=[CallOutcomeOut.of_record(record) for record in page.items],
        next_cursor=page.next_cursor,
    )


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
