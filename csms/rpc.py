"""OCPP-J RPC framing: message type ids, version-neutral RPC faults, frame parsing.

Pure functions, no I/O. The gateway uses :func:`parse_frame` to check what a station sends
and the manager use :func:`csms.versions.error_code` to pick a fault's CallError code for a version.

OCPP-J frames are JSON arrays:

- Call:       ``[2, "<messageId>", "<action>", {payload}]``
- CallResult: ``[3, "<messageId>", {payload}]``
- CallError:  ``[4, "<messageId>", "<errorCode>", "<errorDescription>", {errorDetails}]``

What the parser refuses, and with which fault (the wire code per version is in
:func:`csms.versions.error_code`):

- Not JSON, not an array of the right length, a message type id that is not an integer, a
  message id that cannot be used: :attr:`RpcError.RPC_FRAMEWORK` (2.0.1 RpcFrameworkError,
  "not a valid RPC request, e.g. the messageId could not be read"; 1.6 FormationViolation,
  "does not conform to the PDU structure"). A Call whose id cannot be used is answered with
  :data:`UNKNOWN_MESSAGE_ID`.
- Message ids: the specs make them strings of at most 36 characters. Ids holding control
  characters (U+0000-U+001F, U+007F-U+009F), Unicode noncharacters (U+FDD0-U+FDEF and the
  last two code points of every plane) or lone surrogates are refused too: the id travels on
  to the bus, and MQTT v5 forbids those code points in its strings (a broker drops the
  connection of a client sending one, which would cut off every station of a gateway).
- Actions: the specs define the action as the message name without its ``Request`` suffix
  (``BootNotification``). Every name of OCPP 1.6, 2.0.1 and 2.1 is ASCII letters and digits
  starting with a letter, well under 64 characters, so :data:`ACTION_PATTERN` is enforced.
  Names of that shape that no handler knows still reach the CSMS, which answers
  NotImplemented; anything else (other characters, empty, not a string) cannot be an action
  of any version and gets :attr:`RpcError.FORMAT_VIOLATION` with the frame's id: 1.6
  FormationViolation ("not conform the PDU structure for Action"), and 2.0.1 FormatViolation,
  the same code the router answers a Call without an action with, so a station sees one
  code for every unusable action field.
- JSON nested deeper than :data:`MAX_JSON_DEPTH`: :attr:`RpcError.FORMAT_VIOLATION`, with
  the message id when it can be read. No OCPP message comes near that depth; the bound keeps
  recursive decoders and validators downstream far from Python's recursion limit.
- A CallResult or CallError with any of these faults is never answered (OCPP-J has no
  answer to an answer); the fault says so with ``answerable=False``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from csms.errors import ProtocolFault

__all__ = [
    "ACTION_PATTERN",
    "MAX_ACTION_LENGTH",
    "MAX_JSON_DEPTH",
    "MAX_MESSAGE_ID_LENGTH",
    "UNKNOWN_MESSAGE_ID",
    "Call",
    "CallError",
    "CallResult",
    "Frame",
    "FrameFault",
    "MessageType",
    "RpcError",
    "encode_call",
    "encode_error",
    "encode_result",
    "json_dumps",
    "json_loads",
    "parse_frame",
    "read_head",
    "valid_action",
    "valid_message_id",
]

MAX_MESSAGE_ID_LENGTH = 36
UNKNOWN_MESSAGE_ID = "-1"
"""Message id of a CallError answering a frame whose own id could not be read (OCPP 2.0.1
Part 4, RpcFrameworkError); used for both versions."""

MAX_ACTION_LENGTH = 64
ACTION_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9]{0," + str(MAX_ACTION_LENGTH - 1) + "}")
"""What a Call's action must fully match (see the module docstring)."""

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in a frame, the frame's own array counted
(a Call's payload object is level 2). OCPP messages stay under 10."""

_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(
    f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17)
)
_FORBIDDEN_TEXT = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff{_NONCHARACTERS}]")
"""Code points an MQTT v5 UTF-8 string must not hold (MQTT 5.0, 1.5.4): controls,
noncharacters, surrogates (which UTF-8 cannot encode)."""

_FRAME_HEAD = re.compile(
    r'\s*\[\s*(\d{1,9})\s*,\s*"([^"\\]{1,' + str(MAX_MESSAGE_ID_LENGTH) + r'})"'
)
"""Type id and message id at the head of a frame that could not be decoded as a whole."""
_HEAD_CHARS = 128


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


class FrameFault(ProtocolFault):
    """A frame the receiver must reject. ``message_id`` is set when one could be read, so the
    rejection can be a CallError; otherwise the frame is unanswerable (only logged).
    ``answerable`` is False for faulty CallResult / CallError frames: OCPP-J never answers
    those."""

    def __init__(
        self,
        error: RpcError,
        description: str,
        message_id: str | None = None,
        answerable: bool = True,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.message_id = message_id
        self.answerable = answerable

    def __str__(self) -> str:
        return self.description


_json_decoder = msgspec.json.Decoder()
_json_encoder = msgspec.json.Encoder()


def valid_message_id(value: object) -> str | None:
    """``value`` if it can be used as a message id (see the module docstring), else None."""
    if (
        isinstance(value, str)
        and 0 < len(value) <= MAX_MESSAGE_ID_LENGTH
        and _FORBIDDEN_TEXT.search(value) is None
    ):
        return value
    return None


def valid_action(value: object) -> str | None:
    """``value`` if it has the shape of an OCPP action name, else None."""
    if isinstance(value, str) and ACTION_PATTERN.fullmatch(value):
        return value
    return None


def read_head(data: str | bytes) -> tuple[int | None, str | None]:
    """Message type id and usable message id read from the first characters of a frame too
    large or too deep to be decoded as a whole (None for what cannot be read)."""
    head = data[:_HEAD_CHARS]
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    match = _FRAME_HEAD.match(text)
    if match is None:
        return None, None
    return int(match.group(1)), valid_message_id(match.group(2))


def _message_id_of(frame: list[Any]) -> str | None:
    return valid_message_id(frame[1]) if len(frame) >= 2 else None


_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_OBJECTS_AS_ARRAYS = bytes.maketrans(b"{}", b"[]")


def _nested_too_deep(data: str | bytes) -> bool:
    """Whether valid JSON ``data`` nests arrays and objects deeper than MAX_JSON_DEPTH.

    Cheap for the frames that matter: nothing to do with few brackets; otherwise strings are
    cut out and the brackets left are matched innermost first, one level per pass, at C
    speed, stopping as soon as none are left.
    """
    if isinstance(data, str):
        if data.count("[") + data.count("{") <= MAX_JSON_DEPTH:
            return False
        raw = data.encode("utf-8", "surrogatepass")
    else:
        if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
            return False
        raw = data
    if b"\\" in raw:
        raw = _ESCAPE.sub(b"", raw)  # escaped quotes no longer end strings
    # Outside strings once split on quotes (valid JSON): the even pieces.
    brackets = b"".join(raw.split(b'"')[::2]).translate(_OBJECTS_AS_ARRAYS, _NOT_BRACKETS)
    for _ in range(MAX_JSON_DEPTH):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


def _too_deep(message_id: str | None, type_id: object) -> FrameFault:
    return FrameFault(
        RpcError.FORMAT_VIOLATION,
        f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
        message_id,
        type_id not in (MessageType.CALL_RESULT, MessageType.CALL_ERROR),
    )


def parse_frame(data: str | bytes) -> Frame:
    """Parse and check one OCPP-J frame. Raises :class:`FrameFault` describing the fault.

    Only RPC framing is checked here (JSON, nesting depth, array shape, message type, id,
    action, payload is an object); payload content is the schema validator's job. The
    module docstring lists the faults and the CallError codes chosen for them.
    """
    try:
        frame = _json_decoder.decode(data)
    except RecursionError:
        # Nested deeper than the interpreter's stack allows: far beyond MAX_JSON_DEPTH.
        type_id, message_id = read_head(data)
        raise _too_deep(message_id, type_id) from None
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise FrameFault(RpcError.RPC_FRAMEWORK, f"invalid JSON: {exc}") from None
    if _nested_too_deep(data):
        if isinstance(frame, list) and frame:
            raise _too_deep(_message_id_of(frame), frame[0])
        raise _too_deep(None, None)
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
            f"messageId must be a non-empty string of at most {MAX_MESSAGE_ID_LENGTH} "
            "characters, without control characters or noncharacters",
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
        if valid_action(action) is None:
            raise FrameFault(
                RpcError.FORMAT_VIOLATION,
                f"action must be an OCPP action name: ASCII letters and digits, starting with "
                f"a letter, at most {MAX_ACTION_LENGTH} characters",
                message_id,
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
