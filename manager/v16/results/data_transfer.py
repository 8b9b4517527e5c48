"""OCPP 1.6 DataTransfer answer: a CSMS-sent ISO 15118 Plug & Charge message (OCA application
note "Using ISO 15118 Plug & Charge with OCPP 1.6") is applied like its 2.0.1 original.

The original DataTransfer request (attached by the gateway) names the wrapped 2.0.1 action
(messageId) and carries its request (data); the station's answer carries the 2.0.1 response
in ``data`` when its status is Accepted. Both are unwrapped into a 2.0.1-shaped result and
handed to the 2.0.1 result handler of that action, so installed certificates, installs,
deletions and signed certificates land in the station's certificates exactly as a 2.0.1
station's do. A DataTransfer refused (Rejected, UnknownVendorId, UnknownMessageId) or whose
data breaks the 2.0.1 response schema counts as a failed call of the wrapped action, with
that status as its error code. Any other DataTransfer answer is only logged.
"""

from __future__ import annotations

import dataclasses

import msgspec

from manager.context import ResultContext, ResultHandler
from manager.v201.results import (
    certificate_signed,
    delete_certificate,
    get_installed_certificate_ids,
    install_certificate,
)
from ocpp_schemas import SchemaViolation
from services.pnc import unwrap_request, unwrap_response

ACTION = "DataTransfer"

WRAPPED_RESULTS: dict[str, ResultHandler] = {
    certificate_signed.ACTION: certificate_signed.handle_result,
    delete_certificate.ACTION: delete_certificate.handle_result,
    get_installed_certificate_ids.ACTION: get_installed_certificate_ids.handle_result,
    install_certificate.ACTION: install_certificate.handle_result,
}
"""Wrapped actions whose answers change the station's state (TriggerMessage's does not)."""


def unwrapped(ctx: ResultContext) -> ResultContext | None:
    """The 2.0.1-shaped result of a wrapped Plug & Charge call, None for other DataTransfers."""
    inner = unwrap_request(ctx.request.payload)
    if inner is None:
        return None
    message_id, request = inner
    result = dataclasses.replace(
        ctx,
        request=msgspec.structs.replace(ctx.request, action=message_id, payload=request),
        log=ctx.log.bind(wrapped=message_id),
        payload=None,
    )
    if ctx.payload is None:
        return result  # CallError, timeout, undelivered: as they came
    status = ctx.payload["status"]
    if status != "Accepted":
        result.error_code = status
        result.error_description = f"DataTransfer answered {status}"
        return result
    try:
        result.payload = unwrap_response(message_id, ctx.payload.get("data"))
    except SchemaViolation as violation:
        result.error_code = "FormatViolation"
        result.error_description = violation.message[:255]
    return result


async def handle_result(ctx: ResultContext) -> None:
    """Apply a wrapped call's answer with the 2.0.1 handler of its action."""
    inner = unwrapped(ctx)
    if inner is None:
        ctx.log.info("data_transfer_answered", status=ctx.payload and ctx.payload["status"])
        return
    handler = WRAPPED_RESULTS.get(inner.request.action)
    if handler is None:
        inner.log.info(
            "wrapped_call_answered",
            status=inner.payload.get("status") if inner.payload else inner.error_code,
        )
        return
    await handler(inner)
