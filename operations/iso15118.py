"""ISO 15118 certificate management calls to any station: the 2.0.1 message itself for a
2.x station, the same message wrapped in a 1.6 DataTransfer for a 1.6 charge point (OCA
application note "Using ISO 15118 Plug & Charge with OCPP 1.6", :mod:`services.pnc`).

:func:`prepare` turns the operator's 2.0.1 request into what goes on the wire (checked
against the 2.0.1 schema either way, so both versions refuse the same requests);
:func:`unwrap` turns the station's answer back into the 2.0.1 response. Sending and waiting
stay the :class:`~operations.calls.CallSender`'s, with its outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from csms.versions import spec
from ocpp_schemas import SchemaViolation
from operations.calls import CallOutcome, InvalidCall, Outcome, check_call
from services.pnc import CSMS_MESSAGES, unwrap_response, wrap

__all__ = ["CSMS_MESSAGES", "Iso15118Answer", "Iso15118Call", "prepare", "unwrap"]

DATA_TRANSFER = "DataTransfer"


@dataclass(frozen=True, slots=True)
class Iso15118Call:
    """One ISO 15118 message as it goes to a station."""

    message_id: str
    """The 2.0.1 action (the DataTransfer's messageId when wrapped)."""
    version: str
    action: str
    """What is sent: ``DataTransfer`` (1.6) or ``message_id`` itself (2.x)."""
    payload: dict[str, Any]
    wrapped: bool


@dataclass(frozen=True, slots=True)
class Iso15118Answer:
    """The 2.0.1 response a station's CallResult carried."""

    message_id: str
    wrapped: bool
    status: str | None
    """The DataTransfer's status (Accepted, Rejected, UnknownVendorId, UnknownMessageId);
    None for a 2.x station."""
    payload: dict[str, Any] | None
    """The 2.0.1 response; None when the DataTransfer was not Accepted or its data was no
    valid 2.0.1 response (``error`` says why)."""
    error: str | None = None


def prepare(version: str, message_id: str, payload: dict[str, Any]) -> Iso15118Call:
    """What to send for ``message_id`` to a station of ``version``. Raises ``KeyError``
    for a message that is not one of :data:`CSMS_MESSAGES` and :class:`InvalidCall` for a
    payload the 2.0.1 schema (or the note: a TriggerMessage only for SignV2GCertificate)
    refuses."""
    if message_id not in CSMS_MESSAGES:
        raise KeyError(message_id)
    try:
        wrapped = wrap(message_id, payload)
    except SchemaViolation as violation:
        raise InvalidCall(violation.message, field=violation.field, rule=violation.rule) from None
    if spec(version).generation >= 2:
        check_call(version, message_id, payload)
        return Iso15118Call(message_id, version, message_id, payload, wrapped=False)
    return Iso15118Call(message_id, version, DATA_TRANSFER, wrapped, wrapped=True)


def unwrap(call: Iso15118Call, outcome: CallOutcome) -> Iso15118Answer | None:
    """The 2.0.1 response in the station's CallResult; None for any other outcome."""
    if outcome.outcome is not Outcome.RESULT or outcome.payload is None:
        return None
    if not call.wrapped:
        return Iso15118Answer(call.message_id, False, None, outcome.payload)
    status = outcome.payload.get("status")
    if status != "Accepted":
        return Iso15118Answer(call.message_id, True, status, None)
    try:
        response = unwrap_response(call.message_id, outcome.payload.get("data"))
    except SchemaViolation as violation:
        return Iso15118Answer(call.message_id, True, status, None, error=violation.message)
    return Iso15118Answer(call.message_id, True, status, response)
