"""The routing core: RPC error codes per version, handler faults, the result path."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from csms.bus.memory import MemoryBroker
from csms.config import Settings
from csms.envelope import Envelope, Kind, OriginalCall
from csms.rpc import RpcError
from csms.topics import Topics
from csms.versions import OcppVersion
from manager.context import CallContext, OcppError, ResultContext
from manager.router import Deps, Router
from operations.call_maker import CallMaker
from services import Services, StoreUnavailable
from services.memory import (
    MemoryIdempotencyStore,
    MemoryStationRegistry,
    MemoryTokenStore,
    MemoryTransactionStore,
)
from services.tariff import ConfiguredTariff

NOW = "2026-01-01T00:00:00.000Z"


def make_deps() -> Deps:
    services = Services(
        stations=MemoryStationRegistry(),
        tokens=MemoryTokenStore(),
        transactions=MemoryTransactionStore(),
        tariff=ConfiguredTariff(),
        idempotency=MemoryIdempotencyStore(),
    )
    return Deps(
        services=services,
        settings=Settings(),
        calls=CallMaker(MemoryBroker().client(), Topics(), origin="test"),
    )


def call(version: str, action: str, payload: Any, message_id: str = "m1") -> Envelope:
    return Envelope(
        kind=Kind.CALL,
        station="CP/1",
        version=version,
        message_id=message_id,
        action=action,
        payload=payload,
        gateway="gw-1",
        connection="conn-1",
    )


class Recorder:
    """A handler that answers a fixed payload and remembers its contexts."""

    def __init__(self, response: Any = None, exc: BaseException | None = None) -> None:
        self.response = response
        self.exc = exc
        self.contexts: list[CallContext] = []
        self.payloads: list[dict[str, Any]] = []

    async def __call__(self, ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
        self.contexts.append(ctx)
        self.payloads.append(payload)
        if self.exc is not None:
            raise self.exc
        assert isinstance(self.response, dict)
        return self.response


def ok_response(version: str, action: str) -> dict[str, Any]:
    responses: dict[tuple[str, str], dict[str, Any]] = {
        (OcppVersion.OCPP16, "Heartbeat"): {"currentTime": NOW},
        (OcppVersion.OCPP201, "Heartbeat"): {"currentTime": NOW},
        (OcppVersion.OCPP16, "Authorize"): {"idTagInfo": {"status": "Accepted"}},
        (OcppVersion.OCPP201, "Authorize"): {"idTokenInfo": {"status": "Accepted"}},
        (OcppVersion.OCPP16, "MeterValues"): {},
        (OcppVersion.OCPP201, "NotifyEVChargingNeeds"): {"status": "Accepted"},
    }
    return responses[(version, action)]


def router_for(version: str, **handlers: Recorder) -> Router:
    return Router(version, handlers, {})


# -- action routing --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [OcppVersion.OCPP16, OcppVersion.OCPP201])
async def test_unknown_action_is_not_implemented(version: str) -> None:
    router = router_for(version, Heartbeat=Recorder(ok_response(version, "Heartbeat")))
    answer = await router.handle_call(call(version, "FlyToTheMoon", {}), make_deps())
    assert answer.kind is Kind.ERROR
    assert answer.error_code == "NotImplemented"
    assert "FlyToTheMoon" in (answer.error_description or "")
    assert (answer.station, answer.version, answer.message_id) == ("CP/1", version, "m1")


@pytest.mark.parametrize(
    ("version", "action", "payload"),
    [
        # CSMS -> station actions a station wrongly sends.
        (OcppVersion.OCPP16, "Reset", {"type": "Hard"}),
        (OcppVersion.OCPP201, "Reset", {"type": "Immediate"}),
        # Station -> CSMS actions nobody registered a handler for.
        (OcppVersion.OCPP16, "Authorize", {"idTag": "A"}),
        (OcppVersion.OCPP201, "Authorize", {"idToken": {"idToken": "A", "type": "Central"}}),
    ],
)
async def test_known_action_without_handler_is_not_supported(
    version: str, action: str, payload: dict[str, Any]
) -> None:
    router = router_for(version, Heartbeat=Recorder(ok_response(version, "Heartbeat")))
    answer = await router.handle_call(call(version, action, payload), make_deps())
    assert answer.kind is Kind.ERROR
    assert answer.error_code == "NotSupported"


def test_registry_with_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="Heartbeet"):
        Router(OcppVersion.OCPP16, {"Heartbeet": Recorder({})}, {})


# -- schema violations -----------------------------------------------------------------------

LONG = "x" * 300

VIOLATIONS = [
    # version, action, payload, code, field, rule
    (OcppVersion.OCPP16, "Authorize", {}, "OccurenceConstraintViolation", "idTag", "required"),
    (OcppVersion.OCPP201, "Authorize", {}, "OccurrenceConstraintViolation", "idToken", "required"),
    (OcppVersion.OCPP16, "Authorize", {"idTag": 1}, "TypeConstraintViolation", "idTag", "type"),
    (
        OcppVersion.OCPP201,
        "Authorize",
        {"idToken": {"idToken": 7, "type": "Central"}},
        "TypeConstraintViolation",
        "idToken.idToken",
        "type",
    ),
    (
        OcppVersion.OCPP16,
        "Authorize",
        {"idTag": LONG},
        "PropertyConstraintViolation",
        "idTag",
        "maxLength",
    ),
    (
        OcppVersion.OCPP201,
        "Authorize",
        {"idToken": {"idToken": "A", "type": "Nope"}},
        "PropertyConstraintViolation",
        "idToken.type",
        "enum",
    ),
    (
        OcppVersion.OCPP16,
        "MeterValues",
        {"connectorId": 1, "meterValue": [{"timestamp": "yesterday", "sampledValue": []}]},
        "PropertyConstraintViolation",
        "meterValue[0].timestamp",
        "format",
    ),
    (
        OcppVersion.OCPP201,
        "NotifyEVChargingNeeds",
        {
            "evseId": 1,
            "chargingNeeds": {
                "requestedEnergyTransfer": "DC",
                "dcChargingParameters": {
                    "evMaxCurrent": 1,
                    "evMaxVoltage": 1,
                    "stateOfCharge": 150,
                },
            },
        },
        "PropertyConstraintViolation",
        "chargingNeeds.dcChargingParameters.stateOfCharge",
        "maximum",
    ),
    (
        OcppVersion.OCPP16,
        "MeterValues",
        {"connectorId": 1, "meterValue": []},
        "OccurenceConstraintViolation",
        "meterValue",
        "minItems",
    ),
    (
        OcppVersion.OCPP16,
        "Heartbeat",
        {"surprise": True},
        "FormationViolation",
        "",
        "additionalProperties",
    ),
    (
        OcppVersion.OCPP201,
        "Heartbeat",
        {"surprise": True},
        "FormatViolation",
        "",
        "additionalProperties",
    ),
]


@pytest.mark.parametrize(("version", "action", "payload", "code", "field", "rule"), VIOLATIONS)
async def test_schema_violation_code_names_the_field(
    version: str, action: str, payload: dict[str, Any], code: str, field: str, rule: str
) -> None:
    handler = Recorder(ok_response(version, action))
    router = Router(version, {action: handler}, {})
    answer = await router.handle_call(call(version, action, payload), make_deps())
    assert answer.kind is Kind.ERROR
    assert answer.error_code == code
    assert answer.error_details == {"field": field, "rule": rule}
    assert answer.error_description
    assert len(answer.error_description) <= 255
    if field:
        assert field in answer.error_description
    assert handler.contexts == []


async def test_valid_call_reaches_handler_with_context() -> None:
    handler = Recorder(ok_response(OcppVersion.OCPP201, "Authorize"))
    router = Router(OcppVersion.OCPP201, {"Authorize": handler}, {})
    deps = make_deps()
    payload = {"idToken": {"idToken": "A", "type": "Central"}}
    answer = await router.handle_call(call(OcppVersion.OCPP201, "Authorize", payload), deps)
    assert answer.kind is Kind.RESULT
    assert answer.payload == {"idTokenInfo": {"status": "Accepted"}}
    assert (answer.station, answer.version, answer.message_id) == (
        "CP/1",
        OcppVersion.OCPP201,
        "m1",
    )
    assert (answer.gateway, answer.connection) == ("gw-1", "conn-1")
    (ctx,) = handler.contexts
    assert (ctx.station_id, ctx.version, ctx.action, ctx.message_id) == (
        "CP/1",
        OcppVersion.OCPP201,
        "Authorize",
        "m1",
    )
    assert ctx.services is deps.services and ctx.calls is deps.calls
    assert (ctx.gateway, ctx.connection) == ("gw-1", "conn-1")
    assert handler.payloads == [payload]


# -- handler faults --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [OcppVersion.OCPP16, OcppVersion.OCPP201])
async def test_ocpp_error_becomes_its_call_error(version: str) -> None:
    handler = Recorder(
        exc=OcppError(RpcError.OCCURRENCE_CONSTRAINT, "no such connector", {"field": "x"})
    )
    router = Router(version, {"Heartbeat": handler}, {})
    answer = await router.handle_call(call(version, "Heartbeat", {}), make_deps())
    assert answer.kind is Kind.ERROR
    assert answer.error_code == (
        "OccurenceConstraintViolation"
        if version == OcppVersion.OCPP16
        else "OccurrenceConstraintViolation"
    )
    assert answer.error_description == "no such connector"
    assert answer.error_details == {"field": "x"}


async def test_handler_exception_is_internal_error_and_logged() -> None:
    router = Router(OcppVersion.OCPP16, {"Heartbeat": Recorder(exc=RuntimeError("boom"))}, {})
    with capture_logs() as logs:
        answer = await router.handle_call(call(OcppVersion.OCPP16, "Heartbeat", {}), make_deps())
    assert answer.kind is Kind.ERROR
    assert answer.error_code == "InternalError"
    assert answer.error_description == "internal error"
    assert "boom" not in (answer.error_description or "")
    (entry,) = [e for e in logs if e["log_level"] == "error"]
    assert entry["station"] == "CP/1"
    assert entry["action"] == "Heartbeat"
    assert entry.get("exc_info")


async def test_store_unavailable_is_internal_error_storage() -> None:
    router = Router(
        OcppVersion.OCPP201, {"Heartbeat": Recorder(exc=StoreUnavailable("redis down"))}, {}
    )
    with capture_logs() as logs:
        answer = await router.handle_call(call(OcppVersion.OCPP201, "Heartbeat", {}), make_deps())
    assert answer.error_code == "InternalError"
    assert answer.error_description == "storage temporarily unavailable"
    assert any(e["log_level"] == "warning" for e in logs)


async def test_invalid_handler_response_is_internal_error_naming_field() -> None:
    router = Router(OcppVersion.OCPP16, {"Heartbeat": Recorder({"currentTime": 12})}, {})
    with capture_logs() as logs:
        answer = await router.handle_call(call(OcppVersion.OCPP16, "Heartbeat", {}), make_deps())
    assert answer.kind is Kind.ERROR
    assert answer.error_code == "InternalError"
    (entry,) = [e for e in logs if e["log_level"] == "error"]
    assert entry["field"] == "currentTime"


async def test_long_ocpp_error_description_is_capped() -> None:
    handler = Recorder(exc=OcppError(RpcError.GENERIC, "y" * 1000))
    router = Router(OcppVersion.OCPP201, {"Heartbeat": handler}, {})
    answer = await router.handle_call(call(OcppVersion.OCPP201, "Heartbeat", {}), make_deps())
    assert answer.error_code == "GenericError"
    assert len(answer.error_description or "") == 255


# -- answers to CSMS calls -------------------------------------------------------------------


class ResultRecorder:
    def __init__(self, exc: BaseException | None = None) -> None:
        self.contexts: list[ResultContext] = []
        self.exc = exc

    async def __call__(self, ctx: ResultContext) -> None:
        self.contexts.append(ctx)
        if self.exc is not None:
            raise self.exc


RESET = OriginalCall(
    message_id="csms-1", action="Reset", payload={"type": "Immediate"}, meta={"who": "api"}
)


def answer(kind: Kind, **fields: Any) -> Envelope:
    return Envelope(
        kind=kind,
        station="CP/1",
        version=OcppVersion.OCPP201,
        message_id="csms-1",
        request=RESET,
        **fields,
    )


async def test_result_reaches_result_handler_with_original_request() -> None:
    handler = ResultRecorder()
    router = Router(OcppVersion.OCPP201, {}, {"Reset": handler})
    deps = make_deps()
    assert await router.handle_result(answer(Kind.RESULT, payload={"status": "Accepted"}), deps)
    (ctx,) = handler.contexts
    assert ctx.request == RESET
    assert ctx.request.meta == {"who": "api"}
    assert ctx.payload == {"status": "Accepted"} and ctx.ok
    assert ctx.error_code is None and not ctx.timed_out and ctx.undelivered is None
    assert ctx.station_id == "CP/1" and ctx.version == OcppVersion.OCPP201
    assert ctx.calls is deps.calls


@pytest.mark.parametrize(
    ("version", "code"),
    [(OcppVersion.OCPP16, "FormationViolation"), (OcppVersion.OCPP201, "FormatViolation")],
)
async def test_invalid_result_payload_reaches_handler_as_format_error(
    version: str, code: str
) -> None:
    handler = ResultRecorder()
    router = Router(version, {}, {"Reset": handler})
    envelope = Envelope(
        kind=Kind.RESULT,
        station="CP/1",
        version=version,
        message_id="csms-1",
        payload={"status": "Maybe"},
        request=RESET,
    )
    with capture_logs() as logs:
        await router.handle_result(envelope, make_deps())
    (ctx,) = handler.contexts
    assert ctx.payload is None and not ctx.ok
    assert ctx.error_code == code
    (entry,) = [e for e in logs if e["log_level"] == "warning"]
    assert entry["field"] == "status"


async def test_call_error_reaches_result_handler() -> None:
    handler = ResultRecorder()
    router = Router(OcppVersion.OCPP201, {}, {"Reset": handler})
    envelope = answer(Kind.ERROR, error_code="NotSupported", error_description="nope")
    await router.handle_result(envelope, make_deps())
    (ctx,) = handler.contexts
    assert ctx.payload is None
    assert (ctx.error_code, ctx.error_description) == ("NotSupported", "nope")


async def test_timeout_reaches_result_handler() -> None:
    handler = ResultRecorder()
    router = Router(OcppVersion.OCPP201, {}, {"Reset": handler})
    await router.handle_result(answer(Kind.TIMEOUT), make_deps())
    (ctx,) = handler.contexts
    assert ctx.timed_out and ctx.payload is None and ctx.undelivered is None
    assert ctx.request == RESET


async def test_undelivered_reaches_result_handler_with_reason() -> None:
    handler = ResultRecorder()
    router = Router(OcppVersion.OCPP201, {}, {"Reset": handler})
    envelope = answer(Kind.UNDELIVERED, error_description="queue full")
    await router.handle_result(envelope, make_deps())
    (ctx,) = handler.contexts
    assert ctx.undelivered == "queue full"
    assert not ctx.timed_out and ctx.payload is None


async def test_result_without_handler_is_dropped_quietly() -> None:
    router = Router(OcppVersion.OCPP201, {}, {})
    with capture_logs() as logs:
        ran = await router.handle_result(
            answer(Kind.RESULT, payload={"status": "Accepted"}), make_deps()
        )
    assert not ran
    assert [e["log_level"] for e in logs] == ["info"]


async def test_result_handler_exception_is_logged_not_raised() -> None:
    router = Router(OcppVersion.OCPP201, {}, {"Reset": ResultRecorder(exc=RuntimeError("boom"))})
    with capture_logs() as logs:
        ran = await router.handle_result(
            answer(Kind.RESULT, payload={"status": "Accepted"}), make_deps()
        )
    assert not ran
    assert any(e["log_level"] == "error" and e["station"] == "CP/1" for e in logs)


async def test_answer_without_request_is_dropped() -> None:
    handler = ResultRecorder()
    router = Router(OcppVersion.OCPP201, {}, {"Reset": handler})
    envelope = Envelope(
        kind=Kind.RESULT, station="CP/1", version=OcppVersion.OCPP201, message_id="x", payload={}
    )
    assert not await router.handle_result(envelope, make_deps())
    assert handler.contexts == []
