"""OCPP-J RPC framing: message type ids, CallError codes per version, frame parsing.

Pure functions, no I/O. The gateway uses :func:`parse_frame` to check what a station sends
and the manager uses :func:`error_code` to pick the right CallError code for a version.

OCPP-J frames are JSON arrays:

- Call:       ``[2, "<messageId>", "<action>", {payload}]``
- CallResult: ``[3, "<messageId>", {payload}]``
- CallError:  ``[4, "<messageId>", "<errorCode>", "<errorDescription>", {errorDetails}]``
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec

OCPP16 = "ocpp1.6"
OCPP201 = "ocpp2.0.1"
SUPPORTED_VERSIONS = (OCPP201, OCPP16)
"""Subprotocols in server preference order."""

MAX_MESSAGE_ID_LENGTH = 36
UNKNOWN_MESSAGE_ID = "-1"
"""Message id of a CallError answering a frame whose own id could not be read (OCPP 2.0.1
Part 4, RpcFrameworkError); used for both versions."""


class MessageType(enum.IntEnum):
    CALL = 2
    CALL_RESULT = 3
    CALL_ERROR = 4


class RpcError(enum.Enum):
    """Version-neutral names of RPC faults; :func:`error_code` gives the wire code."""

    FORMAT_VIOLATION = "format"
    PROTOCOL_ERROR = "protocol"
    MESSAGE_TYPE_NOT_SUPPORTED = "message_type"
    NOT_IMPLEMENTED = "not_implemented"
    NOT_SUPPORTED = "not_supported"
    INTERNAL_ERROR = "internal"
    SECURITY_ERROR = "security"
    PROPERTY_CONSTRAINT = "property"
    OCCURRENCE_CONSTRAINT = "occurrence"
    TYPE_CONSTRAINT = "type"
    GENERIC = "generic"
    RPC_FRAMEWORK = "rpc_framework"


_CODES: dict[str, dict[RpcError, str]] = {
    OCPP16: {
        RpcError.FORMAT_VIOLATION: "FormationViolation",
        RpcError.PROTOCOL_ERROR: "ProtocolError",
        # 1.6 has no MessageTypeNotSupported nor RpcFrameworkError: a frame that does not
        # have the RPC structure "does not conform to the PDU structure".
        RpcError.MESSAGE_TYPE_NOT_SUPPORTED: "FormationViolation",
        RpcError.NOT_IMPLEMENTED: "NotImplemented",
        RpcError.NOT_SUPPORTED: "NotSupported",
        RpcError.INTERNAL_ERROR: "InternalError",
        RpcError.SECURITY_ERROR: "SecurityError",
        RpcError.PROPERTY_CONSTRAINT: "PropertyConstraintViolation",
        # Spelled this way in the OCPP 1.6 JSON specification.
        RpcError.OCCURRENCE_CONSTRAINT: "OccurenceConstraintViolation",
        RpcError.TYPE_CONSTRAINT: "TypeConstraintViolation",
        RpcError.GENERIC: "GenericError",
        RpcError.RPC_FRAMEWORK: "FormationViolation",
    },
    OCPP201: {
        RpcError.FORMAT_VIOLATION: "FormatViolation",
        RpcError.PROTOCOL_ERROR: "ProtocolError",
        RpcError.MESSAGE_TYPE_NOT_SUPPORTED: "MessageTypeNotSupported",
        RpcError.NOT_IMPLEMENTED: "NotImplemented",
        RpcError.NOT_SUPPORTED: "NotSupported",
        RpcError.INTERNAL_ERROR: "InternalError",
        RpcError.SECURITY_ERROR: "SecurityError",
        RpcError.PROPERTY_CONSTRAINT: "PropertyConstraintViolation",
        RpcError.OCCURRENCE_CONSTRAINT: "OccurrenceConstraintViolation",
        RpcError.TYPE_CONSTRAINT: "TypeConstraintViolation",
        RpcError.GENERIC: "GenericError",
        RpcError.RPC_FRAMEWORK: "RpcFrameworkError",
    },
}


def error_code(version: str, error: RpcError) -> str:
    """Wire error code of ``error`` in OCPP ``version``."""
    return _CODES[version][error]


@dataclass(frozen=True, slots=True)
class Call:
    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    message_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    message_id: str
    error_code: str
    error_description: str
    error_details: dict[str, Any]


Frame = Call | CallResult | CallError


@dataclass(frozen=True, slots=True)
class FrameFault(Exception):
    """A frame the receiver must reject. ``message_id`` is set when one could be read, so the
    rejection can be a CallError; otherwise the frame is unanswerable (only logged)."""

    error: RpcError
    description: str
    message_id: str | None = None
    answerable: bool = True
    """False for faulty CallResult / CallError frames: OCPP-J never answers those."""

    def __str__(self) -> str:
        return self.description


_json_decoder = msgspec.json.Decoder()
_json_encoder = msgspec.json.Encoder()


def _message_id_of(frame: list[Any]) -> str | None:
    if len(frame) >= 2 and isinstance(frame[1], str) and 0 < len(frame[1]) <= MAX_MESSAGE_ID_LENGTH:
        return frame[1]
    return None


def parse_frame(data: str | bytes) -> Frame:
    """Parse and check one OCPP-J frame. Raises :class:`FrameFault` describing the fault.

    Only RPC framing is checked here (JSON, array shape, message type, id, action type,
    payload is an object); payload content is the schema validator's job.
    """
    try:
        frame = _json_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise FrameFault(RpcError.RPC_FRAMEWORK, f"invalid JSON: {exc}") from None
    if not isinstance(frame, list) or len(frame) < 3:
        raise FrameFault(
            RpcError.RPC_FRAMEWORK,
            "frame must be a JSON array [messageTypeId, messageId, ...]",
            _message_id_of(frame) if isinstance(frame, list) else None,
            # A truncated CallResult / CallError is still an answer: never answered.
            not (isinstance(frame, list) and frame and frame[0] in (3, 4)),
        )
    message_id = _message_id_of(frame)
    type_id = frame[0]
    if not isinstance(type_id, int) or isinstance(type_id, bool):
        raise FrameFault(RpcError.RPC_FRAMEWORK, "messageTypeId must be an integer", message_id)
    if type_id not in (2, 3, 4):
        raise FrameFault(
            RpcError.MESSAGE_TYPE_NOT_SUPPORTED,
            f"messageTypeId {type_id} is not supported",
            message_id,
        )
    answerable = type_id == MessageType.CALL
    if message_id is None:
        raise FrameFault(
            RpcError.RPC_FRAMEWORK,
            f"messageId must be a non-empty string of at most {MAX_MESSAGE_ID_LENGTH} characters",
            None,
            answerable,
        )
    if type_id == MessageType.CALL:
        if len(frame) != 4:
            raise FrameFault(
                RpcError.RPC_FRAMEWORK,
                "a Call must be [2, messageId, action, payload]",
                message_id,
            )
        action, payload = frame[2], frame[3]
        if not isinstance(action, str) or not action:
            raise FrameFault(
                RpcError.FORMAT_VIOLATION, "action must be a non-empty string", message_id
            )
        if not isinstance(payload, dict):
            raise FrameFault(RpcError.FORMAT_VIOLATION, "payload must be an object", message_id)
        return Call(message_id, action, payload)
    if type_id == MessageType.CALL_RESULT:
        if len(frame) != 3 or not isinstance(frame[2], dict):
            raise FrameFault(
                RpcError.FORMAT_VIOLATION,
                "a CallResult must be [3, messageId, payload]",
                message_id,
                False,
            )
        return CallResult(message_id, frame[2])
    if (
        len(frame) != 5
        or not isinstance(frame[2], str)
        or not isinstance(frame[3], str)
        or not isinstance(frame[4], dict)
    ):
        raise FrameFault(
            RpcError.FORMAT_VIOLATION,
            "a CallError must be [4, messageId, errorCode, errorDescription, errorDetails]",
            message_id,
            False,
        )
    return CallError(message_id, frame[2], frame[3], frame[4])


def encode_call(message_id: str, action: str, payload: Any) -> str:
    return _json_encoder.encode([MessageType.CALL, message_id, action, payload]).decode()


def encode_result(message_id: str, payload: Any) -> str:
    return _json_encoder.encode([MessageType.CALL_RESULT, message_id, payload]).decode()


def encode_error(message_id: str, code: str, description: str = "", details: Any = None) -> str:
    """Encode a CallError. Descriptions are capped at 255 characters as the spec asks."""
    return _json_encoder.encode(
        [MessageType.CALL_ERROR, message_id, code, description[:255], details or {}]
    ).decode()


def json_dumps(value: Any) -> bytes:
    """Compact JSON encoding used across the project."""
    return _json_encoder.encode(value)


def json_loads(data: str | bytes) -> Any:
    return _json_decoder.decode(data)
