"""OCPP-J frame parsing and per-version error codes."""

from __future__ import annotations

import json
import sys
from types import FrameType

import pytest

from csms.rpc import (
    MAX_JSON_DEPTH,
    Call,
    CallError,
    CallResult,
    FrameFault,
    RpcError,
    encode_call,
    encode_error,
    json_loads,
    parse_frame,
)
from csms.versions import OcppVersion, error_code


def test_parses_each_message_type() -> None:
    assert parse_frame('[2,"1","Heartbeat",{}]') == Call("1", "Heartbeat", {})
    assert parse_frame(b'[3,"1",{"currentTime":"x"}]') == CallResult("1", {"currentTime": "x"})
    assert parse_frame('[4,"1","NotImplemented","no",{}]') == CallError(
        "1", "NotImplemented", "no", {}
    )


@pytest.mark.parametrize(
    ("frame", "error", "message_id", "answerable"),
    [
        ("not json", RpcError.RPC_FRAMEWORK, None, True),
        ('{"a":1}', RpcError.RPC_FRAMEWORK, None, True),
        ("[2]", RpcError.RPC_FRAMEWORK, None, True),
        ('["2","1","Heartbeat",{}]', RpcError.RPC_FRAMEWORK, "1", True),
        ('[7,"9","Heartbeat",{}]', RpcError.MESSAGE_TYPE_NOT_SUPPORTED, "9", True),
        ('[2,5,"Heartbeat",{}]', RpcError.RPC_FRAMEWORK, None, True),
        ('[2,"' + "x" * 37 + '","Heartbeat",{}]', RpcError.RPC_FRAMEWORK, None, True),
        ('[2,"1","Heartbeat"]', RpcError.RPC_FRAMEWORK, "1", True),
        ('[2,"1","Heartbeat",{},1]', RpcError.RPC_FRAMEWORK, "1", True),
        ('[2,"1",3,{}]', RpcError.FORMAT_VIOLATION, "1", True),
        ('[2,"1","Heartbeat",[]]', RpcError.FORMAT_VIOLATION, "1", True),
        ('[3,"1",[]]', RpcError.FORMAT_VIOLATION, "1", False),
        ('[4,"1","X"]', RpcError.FORMAT_VIOLATION, "1", False),
    ],
)
def test_faults_name_the_error_and_id(
    frame: str, error: RpcError, message_id: str | None, answerable: bool
) -> None:
    with pytest.raises(FrameFault) as caught:
        parse_frame(frame)
    assert caught.value.error is error
    assert caught.value.message_id == message_id
    assert caught.value.answerable is answerable
    assert str(caught.value)


def test_error_codes_differ_per_version() -> None:
    assert error_code(OcppVersion.OCPP16, RpcError.FORMAT_VIOLATION) == "FormationViolation"
    assert error_code(OcppVersion.OCPP201, RpcError.FORMAT_VIOLATION) == "FormatViolation"
    assert (
        error_code(OcppVersion.OCPP16, RpcError.OCCURRENCE_CONSTRAINT)
        == "OccurenceConstraintViolation"
    )
    assert (
        error_code(OcppVersion.OCPP201, RpcError.OCCURRENCE_CONSTRAINT)
        == "OccurrenceConstraintViolation"
    )
    assert (
        error_code(OcppVersion.OCPP201, RpcError.MESSAGE_TYPE_NOT_SUPPORTED)
        == "MessageTypeNotSupported"
    )
    assert error_code(OcppVersion.OCPP201, RpcError.RPC_FRAMEWORK) == "RpcFrameworkError"
    for version in (OcppVersion.OCPP16, OcppVersion.OCPP201):
        assert {error_code(version, e) for e in RpcError} <= _allowed(version)


def _allowed(version: str) -> set[str]:
    common = {
        "GenericError",
        "InternalError",
        "NotImplemented",
        "NotSupported",
        "PropertyConstraintViolation",
        "ProtocolError",
        "SecurityError",
        "TypeConstraintViolation",
    }
    if version == OcppVersion.OCPP16:
        return common | {"FormationViolation", "OccurenceConstraintViolation"}
    return common | {
        "FormatViolation",
        "MessageTypeNotSupported",
        "OccurrenceConstraintViolation",
        "RpcFrameworkError",
    }


def test_encoders_round_trip() -> None:
    assert json_loads(encode_call("a", "Reset", {"type": "Soft"})) == [
        2,
        "a",
        "Reset",
        {"type": "Soft"},
    ]
    error = json_loads(encode_error("a", "InternalError", "d" * 300))
    assert error[:3] == [4, "a", "InternalError"]
    assert len(error[3]) == 255
    assert error[4] == {}


# -- text MQTT v5 refuses: ids and actions are checked before anything is published -------

# Code points an MQTT v5 UTF-8 string must not hold (MQTT 5.0 §1.5.4; Mosquitto drops the
# connection of a client that sends one): controls, noncharacters.
FORBIDDEN = [
    "\x00",
    "\x01",
    "\x1f",
    "\x7f",
    "\x80",
    "\x9f",
    "\ufdd0",
    "\ufdef",
    "\ufffe",
    "\uffff",
    "\U0001fffe",
    "\U0010ffff",
]


@pytest.mark.parametrize("char", FORBIDDEN)
def test_call_with_forbidden_character_in_id_is_answered_with_unknown_id(char: str) -> None:
    frame = json.dumps([2, f"id{char}", "Heartbeat", {}])
    with pytest.raises(FrameFault) as caught:
        parse_frame(frame)
    assert caught.value.error is RpcError.RPC_FRAMEWORK
    assert caught.value.message_id is None  # answered with UNKNOWN_MESSAGE_ID
    assert caught.value.answerable


@pytest.mark.parametrize("char", FORBIDDEN)
def test_call_with_forbidden_character_in_action_is_answered_with_its_id(char: str) -> None:
    with pytest.raises(FrameFault) as caught:
        parse_frame(json.dumps([2, "a1", f"Heart{char}beat", {}]))
    assert caught.value.error is RpcError.FORMAT_VIOLATION
    assert caught.value.message_id == "a1"
    assert caught.value.answerable


@pytest.mark.parametrize("char", FORBIDDEN)
@pytest.mark.parametrize("template", ["[3, {id}, {{}}]", '[4, {id}, "GenericError", "", {{}}]'])
def test_answers_with_forbidden_character_in_id_are_never_answered(
    char: str, template: str
) -> None:
    with pytest.raises(FrameFault) as caught:
        parse_frame(template.format(id=json.dumps(f"m{char}")))
    assert caught.value.message_id is None
    assert not caught.value.answerable


def test_lone_surrogate_in_id_is_refused() -> None:
    # Not valid JSON text once decoded, whichever way it reaches the parser.
    for frame in ('[2, "a\\ud800", "Heartbeat", {}]', '[2, "a\ud800", "Heartbeat", {}]'):
        with pytest.raises(FrameFault) as caught:
            parse_frame(frame)
        assert caught.value.message_id is None


@pytest.mark.parametrize(
    "action",
    ["Heart beat", "Heart-beat", "Boot.Notification", "1Heartbeat", "A" * 65, "Hé", "\u200b"],
)
def test_action_must_be_a_plausible_action_name(action: str) -> None:
    with pytest.raises(FrameFault) as caught:
        parse_frame(json.dumps([2, "a1", action, {}]))
    assert caught.value.error is RpcError.FORMAT_VIOLATION
    assert caught.value.message_id == "a1"


@pytest.mark.parametrize(
    "action", ["Heartbeat", "Get15118EVCertificate", "heartbeat", "NoSuchAction", "A" * 64]
)
def test_action_names_of_every_shape_ocpp_uses_pass(action: str) -> None:
    # Unknown but well-formed names reach the CSMS, which answers NotImplemented.
    assert parse_frame(json.dumps([2, "a1", action, {}])) == Call("a1", action, {})


@pytest.mark.parametrize(
    "message_id", ["1", "x" * 36, "019a-é-ü", "id with spaces", '"quoted"', "-1", "\u00a0"]
)
def test_message_ids_of_printable_text_pass(message_id: str) -> None:
    assert parse_frame(json.dumps([2, message_id, "Heartbeat", {}])).message_id == message_id


# -- nesting depth ------------------------------------------------------------------------


def nested(depth: int, message_id: str = "d1") -> str:
    return f'[2,"{message_id}","DataTransfer",{{"data":' + "[" * depth + "]" * depth + "}]"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH - 1, 990, 5_000, 100_000])
def test_deep_nesting_is_a_format_violation_with_the_id(depth: int) -> None:
    # The frame array and the payload object are two levels of their own.
    frame = nested(depth)
    if depth + 2 <= MAX_JSON_DEPTH:
        assert isinstance(parse_frame(frame), Call)
        return
    with pytest.raises(FrameFault) as caught:
        parse_frame(frame)
    assert caught.value.error is RpcError.FORMAT_VIOLATION
    assert caught.value.message_id == "d1"
    assert caught.value.answerable
    assert "nest" in str(caught.value)


def test_deep_nesting_refused_even_with_little_stack_left() -> None:
    # A parser deep in an event loop has less stack than a test: never a RecursionError.
    def at_depth(levels: int) -> FrameFault:
        if levels:
            return at_depth(levels - 1)
        with pytest.raises(FrameFault) as caught:
            parse_frame(nested(990))
        return caught.value

    frame: FrameType | None = sys._getframe()
    used = 0
    while frame is not None:
        frame, used = frame.f_back, used + 1
    fault = at_depth(sys.getrecursionlimit() - used - 20)
    assert fault.error is RpcError.FORMAT_VIOLATION and fault.message_id == "d1"


def test_deep_answers_are_dropped_and_deep_garbage_has_no_id() -> None:
    with pytest.raises(FrameFault) as caught:
        parse_frame('[3,"m1",{"a":' + "[" * 2000 + "]" * 2000 + "}]")
    assert (caught.value.message_id, caught.value.answerable) == ("m1", False)
    with pytest.raises(FrameFault) as caught:
        parse_frame("[" * 100_000)
    assert caught.value.message_id is None


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = "[{" * 5_000
    frame = json.dumps([2, "s1", "DataTransfer", {"data": text, "list": [[1], [2], {"a": [3]}]}])
    assert parse_frame(frame) == Call(
        "s1", "DataTransfer", {"data": text, "list": [[1], [2], {"a": [3]}]}
    )
    escaped = json.dumps([2, "s2", "DataTransfer", {"data": '\\"' + "[" * 100}])
    assert isinstance(parse_frame(escaped), Call)
    assert isinstance(parse_frame(escaped.encode()), Call)


def test_wide_but_shallow_payloads_pass() -> None:
    values = [{"sampledValue": [{"value": n}]} for n in range(2_000)]
    frame = json.dumps([2, "w1", "MeterValues", {"meterValue": values}])
    assert parse_frame(frame).payload == {"meterValue": values}  # type: ignore[union-attr]
