"""The 1.6 DataTransfer result handler: a wrapped Plug & Charge answer unwrapped into the
2.0.1 result its handler applies, every way a DataTransfer can end; and the wrapping rules
the API and the managers share (:mod:`services.pnc`, :mod:`operations.iso15118`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

from csms.envelope import OriginalCall
from csms.versions import OcppVersion
from manager.context import ResultContext
from manager.v16.results.data_transfer import handle_result, unwrapped
from ocpp_schemas import SchemaViolation
from operations.calls import CallOutcome, InvalidCall, Outcome
from operations.iso15118 import prepare, unwrap
from services.pnc import PNC_VENDOR_ID, unwrap_request, wrap
from tests.unit.test_handlers_v16 import Harness as Harness16

INSTALL = {"certificateType": "V2GRootCertificate", "certificate": "PEM"}


def result_ctx(request: dict[str, Any], **answer: Any) -> ResultContext:
    h = Harness16()
    return ResultContext(
        station_id="CP-1",
        version=OcppVersion.OCPP16,
        request=OriginalCall(message_id="c1", action="DataTransfer", payload=request),
        services=h.services,
        settings=h.settings,
        calls=h.calls,
        log=structlog.get_logger(),
        **answer,
    )


def test_an_accepted_answer_becomes_the_201_result() -> None:
    ctx = result_ctx(
        wrap("InstallCertificate", INSTALL),
        payload={"status": "Accepted", "data": json.dumps({"status": "Accepted"})},
    )
    inner = unwrapped(ctx)
    assert inner is not None
    assert (inner.request.action, inner.request.payload) == ("InstallCertificate", INSTALL)
    assert inner.payload == {"status": "Accepted"} and inner.error_code is None


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ({"payload": {"status": "UnknownMessageId"}}, "UnknownMessageId"),
        ({"payload": {"status": "Accepted", "data": '{"status": "Maybe"}'}}, "FormatViolation"),
        ({"payload": {"status": "Accepted", "data": "{no"}}, "FormatViolation"),
        ({"payload": {"status": "Accepted"}}, "FormatViolation"),
        ({"error_code": "NotImplemented"}, "NotImplemented"),
        ({"timed_out": True}, None),
    ],
    ids=["refused", "invalid", "not-json", "no-data", "call-error", "timeout"],
)
def test_a_failed_wrapped_call_is_a_failed_201_call(answer: dict[str, Any], code: str) -> None:
    inner = unwrapped(result_ctx(wrap("InstallCertificate", INSTALL), **answer))
    assert inner is not None and inner.request.action == "InstallCertificate"
    assert inner.payload is None and not inner.ok
    assert inner.error_code == code


async def test_a_refused_install_installs_nothing_and_an_accepted_one_does() -> None:
    ctx = result_ctx(wrap("InstallCertificate", INSTALL), payload={"status": "Rejected"})
    await handle_result(ctx)
    assert (await ctx.services.station_state.certificates("CP-1")).installs == []
    ctx.payload = {"status": "Accepted", "data": json.dumps({"status": "Accepted"})}
    await handle_result(ctx)
    installs = (await ctx.services.station_state.certificates("CP-1")).installs
    assert [i.certificate_type for i in installs] == ["V2GRootCertificate"]


def test_other_data_transfers_are_not_unwrapped() -> None:
    other = {"vendorId": "com.example", "messageId": "InstallCertificate", "data": "{}"}
    assert unwrapped(result_ctx(other, payload={"status": "Accepted"})) is None
    station_message = {"vendorId": PNC_VENDOR_ID, "messageId": "Authorize", "data": "{}"}
    assert unwrap_request(station_message) is None
    broken = {"vendorId": PNC_VENDOR_ID, "messageId": "InstallCertificate", "data": "[1]"}
    assert unwrap_request(broken) is None


def test_the_wrapping_follows_the_201_schema_and_the_note() -> None:
    wrapped = wrap("TriggerMessage", {"requestedMessage": "SignV2GCertificate"})
    assert wrapped == {
        "vendorId": PNC_VENDOR_ID,
        "messageId": "TriggerMessage",
        "data": '{"requestedMessage":"SignV2GCertificate"}',
    }
    with pytest.raises(SchemaViolation) as refused:
        wrap("TriggerMessage", {"requestedMessage": "Heartbeat"})
    assert refused.value.field == "requestedMessage"
    with pytest.raises(KeyError):
        wrap("Reset", {"type": "Immediate"})
    with pytest.raises(InvalidCall):
        prepare("ocpp1.6", "InstallCertificate", {"certificateType": "Nope", "certificate": "x"})
    # The same refusals for a 2.0.1 station, which gets the call itself.
    with pytest.raises(InvalidCall):
        prepare("ocpp2.0.1", "TriggerMessage", {"requestedMessage": "Heartbeat"})
    plain = prepare("ocpp2.0.1", "InstallCertificate", INSTALL)
    assert (plain.action, plain.payload, plain.wrapped) == ("InstallCertificate", INSTALL, False)


def test_only_a_call_result_has_an_iso15118_answer() -> None:
    call = prepare("ocpp1.6", "InstallCertificate", INSTALL)
    timeout = CallOutcome(Outcome.TIMEOUT, "CP-1", "ocpp1.6", "DataTransfer", "m1")
    assert unwrap(call, timeout) is None
    answered = CallOutcome(
        Outcome.RESULT,
        "CP-1",
        "ocpp1.6",
        "DataTransfer",
        "m1",
        payload={"status": "Accepted", "data": '{"status":"Accepted"}'},
    )
    answer = unwrap(call, answered)
    assert answer is not None and answer.payload == {"status": "Accepted"}
