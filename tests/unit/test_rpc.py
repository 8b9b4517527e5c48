"""OCPP-J frame parsing and per-version error codes."""

from __future__ import annotations

import pytest

from csms.rpc import (
    OCPP16,
    OCPP201,
    Call,
    CallError,
    CallResult,
    FrameFault,
    RpcError,
    encode_call,
    encode_error,
    error_code,
    json_loads,
    parse_frame,
)


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
    assert error_code(OCPP16, RpcError.FORMAT_VIOLATION) == "FormationViolation"
    assert error_code(OCPP201, RpcError.FORMAT_VIOLATION) == "FormatViolation"
    assert error_code(OCPP16, RpcError.OCCURRENCE_CONSTRAINT) == "OccurenceConstraintViolation"
    assert error_code(OCPP201, RpcError.OCCURRENCE_CONSTRAINT) == "OccurrenceConstraintViolation"
    assert error_code(OCPP201, RpcError.MESSAGE_TYPE_NOT_SUPPORTED) == "MessageTypeNotSupported"
    assert error_code(OCPP201, RpcError.RPC_FRAMEWORK) == "RpcFrameworkError"
    for version in (OCPP16, OCPP201):
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
    if version == OCPP16:
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
