"""``POST /v1/stations/{id}/iso15118/{messageId}``: ISO 15118 certificate management for
stations of either version, in 2.0.1 terms.

The body is the 2.0.1 request of ``messageId`` (CertificateSigned, InstallCertificate,
DeleteCertificate, GetInstalledCertificateIds, TriggerMessage for SignV2GCertificate),
checked against the 2.0.1 schema (422 naming the field; 404 for another messageId). A 1.6
charge point gets it wrapped in a DataTransfer (vendorId
``org.openchargealliance.iso15118pnc``, OCA application note "Using ISO 15118 Plug & Charge
with OCPP 1.6"); a 2.0.1 station gets the 2.0.1 call itself. Sending, waiting,
``?wait=false``, the call record and the HTTP statuses are those of
``/v1/stations/{id}/calls/{Action}`` (:mod:`api.calls`); the answer adds ``iso15118``: the
DataTransfer's status (Accepted, Rejected, UnknownVendorId, UnknownMessageId) and the
station's 2.0.1 response, unwrapped and checked against the 2.0.1 response schema. The
managers apply the answer to the station's certificates (``/v1/stations/{id}/certificates``)
as they do a 2.0.1 station's.
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.auth import Operator
from api.calls import (
    MAX_CALL_WAIT,
    callable_station,
    outcome_response,
    pending_response,
    send_recorded,
)
from api.context import API_PREFIX, ApiContext, Context
from api.errors import ApiError, ErrorBody
from api.models import CallOutcomeOut
from operations.calls import InvalidCall
from operations.iso15118 import CSMS_MESSAGES, Iso15118Call, prepare, unwrap
from services.call_records import CallRecord, CallState

__all__ = ["Iso15118AnswerOut", "Iso15118OutcomeOut", "router"]

_log = structlog.get_logger("api.iso15118")

router = APIRouter(prefix=API_PREFIX, tags=["iso15118"])


class Iso15118AnswerOut(BaseModel):
    message_id: str = Field(description="the 2.0.1 action sent (the DataTransfer's messageId)")
    wrapped: bool = Field(description="true: sent to a 1.6 charge point in a DataTransfer")
    status: str | None = Field(
        default=None,
        description="the DataTransfer's status (Accepted, Rejected, UnknownVendorId, "
        "UnknownMessageId); null for a 2.0.1 station",
    )
    payload: dict[str, Any] | None = Field(
        default=None, description="the station's 2.0.1 response, unwrapped and validated"
    )
    error: str | None = Field(
        default=None, description="why an Accepted DataTransfer's data is no valid response"
    )


class Iso15118OutcomeOut(CallOutcomeOut):
    """A call's outcome as ``/calls`` reports it (``action`` and ``payload`` as sent on the
    wire), plus the ISO 15118 answer when the station answered with a CallResult."""

    iso15118: Iso15118AnswerOut | None = None


@router.post(
    "/stations/{station_id:path}/iso15118/{message_id}",
    response_model=Iso15118OutcomeOut,
    summary="Send an ISO 15118 certificate message (2.0.1 payload; wrapped for 1.6 stations)",
    responses={
        202: {"model": Iso15118OutcomeOut, "description": "wait=false: sent, outcome pending"},
        403: {"model": ErrorBody, "description": "key scope, Rejected station, action rules"},
        404: {"model": ErrorBody, "description": "unknown station or messageId"},
        409: {"model": ErrorBody, "description": "station offline, or call undelivered"},
        422: {"model": ErrorBody, "description": "payload refused by the 2.0.1 schema"},
        504: {"model": Iso15118OutcomeOut, "description": "timeout or no outcome in time"},
    },
)
async def send_iso15118(
    ctx: Context,
    principal: Operator,
    station_id: str,
    message_id: Annotated[
        str,
        Path(pattern=r"^[A-Za-z][A-Za-z0-9]{0,63}$", description="e.g. InstallCertificate"),
    ],
    payload: Annotated[
        dict[str, Any] | None, Body(description="the OCPP 2.0.1 request payload")
    ] = None,
    timeout: Annotated[  # noqa: ASYNC109 (the caller's own deadline, bounded)
        float | None, Query(gt=0, le=MAX_CALL_WAIT, description="seconds to wait")
    ] = None,
    wait: Annotated[
        bool, Query(description="false: answer 202 at once, read the outcome at Location")
    ] = True,
) -> JSONResponse:
    version = await callable_station(ctx, station_id)
    try:
        call = prepare(version.value, message_id, payload if payload is not None else {})
    except KeyError:
        raise ApiError(
            404,
            "unknown_message",
            f"{message_id!r} is not an ISO 15118 message the CSMS sends; one of "
            + ", ".join(sorted(CSMS_MESSAGES)),
            {"field": "message_id", "in": "path"},
        ) from None
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
        call.version,
        call.action,
        call.payload,
        meta={"api_key": principal.key_id, "iso15118": call.message_id},
        timeout=timeout,
        wait=wait,
    )
    record, outcome = sent.record, sent.outcome
    if outcome is None:
        _observe(ctx, record, CallState.PENDING, call)
        return pending_response(Iso15118OutcomeOut.of_record(record), record)
    _observe(ctx, record, CallState(outcome.outcome.value), call)
    plain = outcome_response(station_id, outcome)  # raises 409 for offline / undelivered
    body = Iso15118OutcomeOut(**CallOutcomeOut.of(outcome).model_dump())
    answer = unwrap(call, outcome)
    if answer is not None:
        body.iso15118 = Iso15118AnswerOut(
            message_id=answer.message_id,
            wrapped=answer.wrapped,
            status=answer.status,
            payload=answer.payload,
            error=answer.error,
        )
    return JSONResponse(body.model_dump(mode="json"), status_code=plain.status_code)


def _observe(ctx: ApiContext, record: CallRecord, state: CallState, call: Iso15118Call) -> None:
    ctx.metrics.calls.labels(record.version, record.action, state.value).inc()
    _log.info(
        "api iso15118 call",
        station=record.station_id,
        version=record.version,
        message=call.message_id,
        wrapped=call.wrapped,
        outcome=state.value,
        message_id=record.message_id,
    )
