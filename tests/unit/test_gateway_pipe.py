"""The gateway pipe's correlation and framing rules, driven synchronously with fake clocks.

Events take ``now`` on a monotonic clock (``T0`` onwards: deadlines); envelope timestamps
come from the pipe's wall clock, a :class:`WallClock` the tests set (``WALL``: Unix time).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from csms.envelope import Envelope, Kind, OriginalCall
from csms.versions import OcppVersion
from gateway.pipe import (
    CSMS_LATE,
    CSMS_UNAVAILABLE,
    QUEUE_FULL,
    STATION_DISCONNECTED,
    Action,
    ConnectionState,
    Disconnect,
    Limits,
    Pipe,
    Publish,
    Report,
    SendToStation,
)

T0 = 1_000_000.0
"""Monotonic seconds: what events bring as ``now``."""
WALL = 1_700_000_000.0
"""Unix time: what the pipe's wall clock reads unless a test moves it."""
LIMITS = Limits(call_timeout=10, call_queue_size=2, answer_timeout=5, max_frame_bytes=1024)


class WallClock:
    """A wall clock that reads ``at`` until the test sets it."""

    def __init__(self, at: float = WALL) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def make_pipe(version: str = OcppVersion.OCPP201, wall: WallClock | None = None) -> Pipe:
    return Pipe(
        "CP-1",
        version,
        connection="c1",
        gateway="g1",
        limits=LIMITS,
        wall_clock=wall or WallClock(),
    )


def csms_call(
    message_id: str = "m1",
    action: str = "Reset",
    payload: Any = None,
    *,
    version: str = OcppVersion.OCPP201,
    reply_to: str | None = None,
    meta: dict[str, str] | None = None,
) -> Envelope:
    return Envelope(
        kind=Kind.CALL,
        station="CP-1",
        version=version,
        message_id=message_id,
        action=action,
        payload={"type": "Immediate"} if payload is None else payload,
        meta=meta or {"origin": "test"},
        reply_to=reply_to,
    )


def csms_answer(message_id: str, kind: Kind = Kind.RESULT, **fields: Any) -> Envelope:
    return Envelope(
        kind=kind, station="CP-1", version=OcppVersion.OCPP201, message_id=message_id, **fields
    )


def sent(actions: list[Action]) -> list[list[Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, SendToStation)]


def published(actions: list[Action]) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish)]


def reports(actions: list[Action]) -> list[Report]:
    return [a for a in actions if isinstance(a, Report)]


# -- station → CSMS ----------------------------------------------------------------------


def test_station_call_is_published_and_remembered() -> None:
    pipe = make_pipe()
    actions = pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0)
    [publish] = published(actions)
    assert publish.reply_to is None
    env = publish.envelope
    assert (env.kind, env.station, env.version, env.message_id) == (
        Kind.CALL,
        "CP-1",
        OcppVersion.OCPP201,
        "s1",
    )
    assert (env.action, env.payload, env.gateway, env.connection, env.at) == (
        "Heartbeat",
        {},
        "g1",
        "c1",
        WALL,
    )
    assert sent(actions) == []
    assert pipe.pending_station_calls == {"s1"}
    assert pipe.next_deadline() == T0 + 5


def test_csms_answer_goes_to_station_once() -> None:
    pipe = make_pipe()
    pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0)
    actions = pipe.receive_bus_envelope(
        csms_answer("s1", payload={"currentTime": "2024-01-01T00:00:00Z"}), T0 + 1
    )
    assert sent(actions) == [[3, "s1", {"currentTime": "2024-01-01T00:00:00Z"}]]
    assert pipe.pending_station_calls == frozenset()
    assert pipe.next_deadline() is None
    # A duplicate (QoS 1 redelivery) or late answer is dropped.
    again = pipe.receive_bus_envelope(csms_answer("s1", payload={}), T0 + 2)
    assert sent(again) == []
    assert reports(again)


def test_csms_error_answer_goes_to_station() -> None:
    pipe = make_pipe()
    pipe.receive_station_frame('[2,"s1","Authorize",{}]', T0)
    actions = pipe.receive_bus_envelope(
        csms_answer(
            "s1",
            Kind.ERROR,
            error_code="FormatViolation",
            error_description="idToken missing",
            error_details={"field": "idToken"},
        ),
        T0,
    )
    assert sent(actions) == [[4, "s1", "FormatViolation", "idToken missing", {"field": "idToken"}]]


def test_answer_for_unknown_station_call_is_dropped() -> None:
    pipe = make_pipe()
    actions = pipe.receive_bus_envelope(csms_answer("nope", payload={}), T0)
    assert sent(actions) == [] and reports(actions)


def test_csms_late_gets_internal_error_from_pipe() -> None:
    pipe = make_pipe()
    pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0)
    assert sent(pipe.tick(T0 + 4.9)) == []
    actions = pipe.tick(T0 + 5)
    assert sent(actions) == [[4, "s1", "InternalError", CSMS_LATE, {}]]
    assert pipe.next_deadline() is None
    # The CSMS's late answer is then dropped: exactly one answer per Call.
    assert sent(pipe.receive_bus_envelope(csms_answer("s1", payload={}), T0 + 6)) == []


def test_publish_failure_answers_station_promptly() -> None:
    pipe = make_pipe(OcppVersion.OCPP16)
    [publish] = published(pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0))
    actions = pipe.publish_failed(publish.envelope, T0)
    assert sent(actions) == [[4, "s1", "InternalError", CSMS_UNAVAILABLE, {}]]
    assert pipe.pending_station_calls == frozenset()
    assert pipe.tick(T0 + 100) == []


def test_station_retry_of_pending_call_is_not_published_again_and_answered_once() -> None:
    pipe = make_pipe()
    assert len(published(pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0))) == 1
    actions = pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0 + 3)
    assert published(actions) == [] and sent(actions) == []
    [report] = reports(actions)
    assert report.fields["message_id"] == "s1"
    # The first copy's entry and deadline stay.
    assert pipe.pending_station_calls == frozenset({"s1"})
    assert pipe.next_deadline() == T0 + 5
    assert sent(pipe.receive_bus_envelope(csms_answer("s1", payload={}), T0 + 4)) == [[3, "s1", {}]]
    assert sent(pipe.receive_bus_envelope(csms_answer("s1", payload={}), T0 + 4)) == []


def test_many_resends_of_a_pending_call_publish_once_and_get_one_answer() -> None:
    pipe = Pipe(
        "CP-1",
        OcppVersion.OCPP201,
        connection="c",
        gateway="g",
        limits=Limits(answer_timeout=5, message_rate=None),
    )
    actions: list[Action] = []
    for n in range(10_000):
        actions += pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0 + n / 10_000)
    assert len(published(actions)) == 1
    assert sent(actions) == []
    assert pipe.pending_station_calls == frozenset({"s1"})
    # Nobody answers: the pipe's own answer at the first copy's deadline, once.
    late = pipe.tick(T0 + 5)
    assert [frame[:3] for frame in sent(late)] == [[4, "s1", "InternalError"]]
    assert sent(pipe.tick(T0 + 60)) == []


def test_call_id_may_be_used_again_once_answered_or_timed_out() -> None:
    pipe = make_pipe()
    pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0)
    pipe.receive_bus_envelope(csms_answer("s1", payload={}), T0 + 1)
    # Answered: the same id again is a new Call and reaches the CSMS.
    assert len(published(pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0 + 2))) == 1
    assert sent(pipe.tick(T0 + 7))[0][:3] == [4, "s1", "InternalError"]
    # Timed out: a retry after the station got its InternalError is processed too.
    retry = pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0 + 8)
    assert len(published(retry)) == 1
    assert pipe.next_deadline() == T0 + 8 + 5
    assert sent(pipe.receive_bus_envelope(csms_answer("s1", payload={}), T0 + 9)) == [[3, "s1", {}]]


def test_resend_of_a_pending_call_over_the_rate_gets_no_second_answer() -> None:
    pipe = Pipe(
        "CP-1",
        OcppVersion.OCPP201,
        connection="c",
        gateway="g",
        limits=Limits(message_rate=1, message_burst=1, flood_close_after=None),
    )
    assert published(pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0))
    resent = pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0)
    assert sent(resent) == [] and published(resent) == []
    # Another id over the rate is refused as usual.
    [[_, mid, code, _, _]] = sent(pipe.receive_station_frame('[2,"s2","Heartbeat",{}]', T0))
    assert (mid, code) == ("s2", "GenericError")
    assert sent(pipe.receive_bus_envelope(csms_answer("s1", payload={}), T0)) == [[3, "s1", {}]]


def test_retry_after_publish_failure_is_published() -> None:
    pipe = make_pipe()
    [publish] = published(pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0))
    assert sent(pipe.publish_failed(publish.envelope, T0))[0][:3] == [4, "s1", "InternalError"]
    assert len(published(pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0 + 1))) == 1


def test_too_many_unanswered_station_calls_are_refused() -> None:
    pipe = Pipe(
        "CP-1",
        OcppVersion.OCPP201,
        connection="c",
        gateway="g",
        limits=Limits(max_station_calls=2),
    )
    pipe.receive_station_frame('[2,"a","Heartbeat",{}]', T0)
    pipe.receive_station_frame('[2,"b","Heartbeat",{}]', T0)
    actions = pipe.receive_station_frame('[2,"c","Heartbeat",{}]', T0)
    assert published(actions) == []
    [[_, mid, code, _desc, _]] = sent(actions)
    assert (mid, code) == ("c", "RpcFrameworkError")


# -- CSMS → station ----------------------------------------------------------------------


def test_csms_call_sent_and_result_published_with_original_request() -> None:
    pipe = make_pipe()
    actions = pipe.receive_bus_envelope(csms_call(meta={"origin": "api", "req": "7"}), T0)
    assert sent(actions) == [[2, "m1", "Reset", {"type": "Immediate"}]]
    assert pipe.in_flight == "m1"
    assert pipe.next_deadline() == T0 + 10
    actions = pipe.receive_station_frame('[3,"m1",{"status":"Accepted"}]', T0 + 2)
    [publish] = published(actions)
    env = publish.envelope
    assert publish.reply_to is None
    assert (env.kind, env.message_id, env.action, env.payload) == (
        Kind.RESULT,
        "m1",
        "Reset",
        {"status": "Accepted"},
    )
    assert env.request == OriginalCall(
        message_id="m1",
        action="Reset",
        payload={"type": "Immediate"},
        meta={"origin": "api", "req": "7"},
        sent_at=WALL,
    )
    assert env.meta == {"origin": "api", "req": "7"}
    assert (env.gateway, env.connection) == ("g1", "c1")
    assert pipe.in_flight is None


def test_csms_call_error_answer_published_with_request_and_reply_to() -> None:
    pipe = make_pipe()
    pipe.receive_bus_envelope(csms_call(reply_to="api/replies/1"), T0)
    actions = pipe.receive_station_frame('[4,"m1","NotSupported","no reset",{"x":1}]', T0 + 1)
    [publish] = published(actions)
    assert publish.reply_to == "api/replies/1"
    env = publish.envelope
    assert (env.kind, env.error_code, env.error_description, env.error_details) == (
        Kind.ERROR,
        "NotSupported",
        "no reset",
        {"x": 1},
    )
    assert env.request is not None and env.request.action == "Reset"


def test_only_one_csms_call_in_flight_others_queue_in_order() -> None:
    wall = WallClock()
    pipe = make_pipe(wall=wall)
    assert sent(pipe.receive_bus_envelope(csms_call("m1"), T0)) == [
        [2, "m1", "Reset", {"type": "Immediate"}]
    ]
    assert pipe.receive_bus_envelope(csms_call("m2", "GetVariables", {"a": 1}), T0) == []
    assert pipe.receive_bus_envelope(csms_call("m3", "GetVariables", {"a": 2}), T0) == []
    assert pipe.queued == 2
    actions = pipe.receive_station_frame('[3,"m1",{}]', T0 + 1)
    assert [p.envelope.message_id for p in published(actions)] == ["m1"]
    assert sent(actions) == [[2, "m2", "GetVariables", {"a": 1}]]
    wall.at = WALL + 2
    actions = pipe.receive_station_frame('[3,"m2",{}]', T0 + 2)
    assert sent(actions) == [[2, "m3", "GetVariables", {"a": 2}]]
    # sent_at records when each call was written, not when it was queued or answered.
    wall.at = WALL + 3
    actions = pipe.receive_station_frame('[3,"m3",{}]', T0 + 3)
    [publish] = published(actions)
    assert publish.envelope.request is not None
    assert publish.envelope.request.sent_at == WALL + 2
    assert publish.envelope.at == WALL + 3


def test_full_queue_gives_undelivered_not_silence() -> None:
    pipe = make_pipe()
    pipe.receive_bus_envelope(csms_call("m1"), T0)
    pipe.receive_bus_envelope(csms_call("m2"), T0)
    pipe.receive_bus_envelope(csms_call("m3"), T0)
    actions = pipe.receive_bus_envelope(
        csms_call("m4", "ClearCache", {}, reply_to="r/4", meta={"k": "v"}), T0
    )
    [publish] = published(actions)
    assert publish.reply_to == "r/4"
    env = publish.envelope
    assert (env.kind, env.message_id, env.error_description, env.meta) == (
        Kind.UNDELIVERED,
        "m4",
        QUEUE_FULL,
        {"k": "v"},
    )
    assert env.request == OriginalCall(
        message_id="m4", action="ClearCache", payload={}, meta={"k": "v"}
    )
    assert sent(actions) == []
    assert pipe.queued == 2


def test_unanswered_csms_call_times_out_then_next_is_sent() -> None:
    pipe = make_pipe()
    pipe.receive_bus_envelope(csms_call("m1", reply_to="r/1"), T0)
    pipe.receive_bus_envelope(csms_call("m2", "ClearCache", {}), T0 + 1)
    assert pipe.tick(T0 + 9.99) == []
    actions = pipe.tick(T0 + 10)
    [publish] = published(actions)
    assert publish.reply_to == "r/1"
    env = publish.envelope
    assert (env.kind, env.message_id) == (Kind.TIMEOUT, "m1")
    assert env.request is not None and env.request.sent_at == WALL
    assert env.error_description and "did not answer" in env.error_description
    assert sent(actions) == [[2, "m2", "ClearCache", {}]]
    assert pipe.next_deadline() == T0 + 20
    # The station's late answer to m1 is dropped, and does not complete m2.
    late = pipe.receive_station_frame('[3,"m1",{}]', T0 + 11)
    assert published(late) == [] and reports(late)
    assert pipe.in_flight == "m2"


def test_answer_with_unknown_id_is_ignored() -> None:
    pipe = make_pipe()
    pipe.receive_bus_envelope(csms_call("m1"), T0)
    actions = pipe.receive_station_frame('[3,"other",{}]', T0)
    assert published(actions) == [] and sent(actions) == []
    assert reports(actions)[0].level == "warning"
    assert pipe.in_flight == "m1"


def test_redelivered_csms_call_is_not_sent_twice() -> None:
    pipe = make_pipe()
    pipe.receive_bus_envelope(csms_call("m1"), T0)
    pipe.receive_bus_envelope(csms_call("m2"), T0)
    assert sent(pipe.receive_bus_envelope(csms_call("m1"), T0)) == []
    assert pipe.receive_bus_envelope(csms_call("m2"), T0)[0] == Report(
        "info", "duplicate CSMS call dropped", {"message_id": "m2"}
    )
    pipe.receive_station_frame('[3,"m1",{}]', T0)
    # m1 finished: a late redelivery still is not sent again.
    actions = pipe.receive_bus_envelope(csms_call("m1"), T0)
    assert sent(actions) == [] and published(actions) == []
    assert pipe.queued == 0 and pipe.in_flight == "m2"


def test_invalid_csms_call_is_undelivered() -> None:
    pipe = make_pipe()
    actions = pipe.receive_bus_envelope(csms_call("m1", payload=[1, 2]), T0)
    [publish] = published(actions)
    assert publish.envelope.kind is Kind.UNDELIVERED
    assert sent(actions) == []


def test_envelope_of_other_version_is_dropped() -> None:
    pipe = make_pipe(OcppVersion.OCPP16)
    actions = pipe.receive_bus_envelope(csms_call("m1", version=OcppVersion.OCPP201), T0)
    assert sent(actions) == [] and published(actions) == [] and reports(actions)


def test_directions_are_independent() -> None:
    pipe = make_pipe()
    pipe.receive_bus_envelope(csms_call("m1"), T0)
    # The station sends its own Call while the CSMS call is in flight: published at once.
    actions = pipe.receive_station_frame('[2,"s1","TransactionEvent",{}]', T0 + 1)
    assert [p.envelope.kind for p in published(actions)] == [Kind.CALL]
    # CSMS answers the station while its own call is still in flight.
    assert sent(pipe.receive_bus_envelope(csms_answer("s1", payload={}), T0 + 2)) == [[3, "s1", {}]]
    assert pipe.in_flight == "m1"
    actions = pipe.receive_station_frame('[3,"m1",{}]', T0 + 3)
    assert published(actions)[0].envelope.kind is Kind.RESULT


def test_close_turns_in_flight_and_queued_calls_into_undelivered() -> None:
    pipe = make_pipe()
    pipe.receive_bus_envelope(csms_call("m1", reply_to="r/1"), T0)
    pipe.receive_bus_envelope(csms_call("m2"), T0)
    pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0)
    actions = pipe.close(T0 + 1)
    outcomes = [(p.envelope.kind, p.envelope.message_id, p.reply_to) for p in published(actions)]
    assert outcomes == [(Kind.UNDELIVERED, "m1", "r/1"), (Kind.UNDELIVERED, "m2", None)]
    first, second = (p.envelope for p in published(actions))
    assert first.error_description == STATION_DISCONNECTED
    assert first.request is not None and first.request.sent_at == WALL
    assert second.request is not None and second.request.sent_at is None
    assert pipe.closed and pipe.next_deadline() is None
    assert pipe.close(T0 + 2) == []
    assert pipe.tick(T0 + 100) == []
    assert pipe.receive_station_frame('[2,"s2","Heartbeat",{}]', T0) == []
    # A call reaching a closed pipe is still never dropped silently.
    [late] = published(pipe.receive_bus_envelope(csms_call("m9"), T0 + 3))
    assert late.envelope.kind is Kind.UNDELIVERED


def test_close_reason_is_used() -> None:
    pipe = make_pipe()
    pipe.receive_bus_envelope(csms_call("m1"), T0)
    [publish] = published(pipe.close(T0, "replaced by a newer connection"))
    assert publish.envelope.error_description == "replaced by a newer connection"


# -- clocks ------------------------------------------------------------------------------


def test_deadlines_follow_the_monotonic_clock_whatever_the_wall_clock_does() -> None:
    wall = WallClock()
    pipe = make_pipe(wall=wall)
    pipe.receive_bus_envelope(csms_call("m1"), T0)
    pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0)
    assert pipe.next_deadline() == T0 + 5
    # The wall clock is set back an hour, then a day ahead: no deadline moves or fires.
    wall.at = WALL - 3600
    assert pipe.tick(T0 + 4.9) == []
    wall.at = WALL + 86_400
    assert pipe.tick(T0 + 4.9) == []
    assert sent(pipe.tick(T0 + 5)) == [[4, "s1", "InternalError", CSMS_LATE, {}]]
    [timeout] = published(pipe.tick(T0 + 10))
    assert timeout.envelope.kind is Kind.TIMEOUT
    # Timestamps are wall-clock readings: when the call was written, when it timed out.
    assert timeout.envelope.request is not None
    assert (timeout.envelope.request.sent_at, timeout.envelope.at) == (WALL, WALL + 86_400)


def test_the_rate_limit_runs_on_the_monotonic_clock() -> None:
    wall = WallClock()
    limits = Limits(message_rate=1, message_burst=1, flood_close_after=None)
    pipe = Pipe(
        "CP-1", OcppVersion.OCPP201, connection="c", gateway="g", limits=limits, wall_clock=wall
    )
    assert published(pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0))
    wall.at = WALL + 3600  # a wall-clock jump refills nothing
    [[_, _, code, _, details]] = sent(pipe.receive_station_frame('[2,"s2","Heartbeat",{}]', T0))
    assert code == "GenericError" and details["retryAfterSeconds"] == 1.0
    assert published(pipe.receive_station_frame('[2,"s3","Heartbeat",{}]', T0 + 1))


# -- lifecycle -----------------------------------------------------------------------------


def test_a_retired_pipe_gives_up_its_calls_with_the_reason_then_closes_quietly() -> None:
    pipe = make_pipe()
    assert pipe.state is ConnectionState.OPEN and not pipe.closed
    pipe.receive_bus_envelope(csms_call("m1"), T0)
    pipe.receive_bus_envelope(csms_call("m2"), T0)
    actions = pipe.retire(T0 + 1, "replaced by a newer connection")
    assert [p.envelope.error_description for p in published(actions)] == [
        "replaced by a newer connection"
    ] * 2
    assert pipe.state is ConnectionState.RETIRED and pipe.closed
    assert pipe.retire_reason == "replaced by a newer connection"
    assert pipe.retire(T0 + 2, "again") == []
    assert pipe.receive_station_frame('[2,"s1","Heartbeat",{}]', T0 + 2) == []
    # The socket's end changes the state and nothing else; the reason stays.
    assert pipe.close(T0 + 3) == []
    assert pipe.state is ConnectionState.CLOSED
    assert pipe.retire_reason == "replaced by a newer connection"
    [late] = published(pipe.receive_bus_envelope(csms_call("m9"), T0 + 4))
    assert late.envelope.kind is Kind.UNDELIVERED


def test_a_flooding_pipe_is_disconnecting_until_replaced_or_closed() -> None:
    limits = Limits(message_rate=1, message_burst=1, flood_close_after=1.0)
    pipe = Pipe("CP-1", OcppVersion.OCPP201, connection="c", gateway="g", limits=limits)
    pipe.receive_bus_envelope(csms_call("m1"), T0)
    actions: list[Action] = []
    for n in range(40):
        actions = pipe.receive_station_frame(f'[2,"s{n}","Heartbeat",{{}}]', T0 + n * 0.05)
        if pipe.disconnecting:
            break
    assert pipe.state is ConnectionState.DISCONNECTING and not pipe.closed
    assert [a for a in actions if isinstance(a, Disconnect)]
    # No more station frames; the CSMS call in flight still ends with an outcome.
    assert pipe.receive_station_frame('[3,"m1",{}]', T0 + 3) == []
    [outcome] = published(pipe.retire(T0 + 3, "replaced by a newer connection"))
    assert outcome.envelope.kind is Kind.UNDELIVERED
    assert pipe.state is ConnectionState.RETIRED
    pipe.close(T0 + 4)
    assert pipe.state is ConnectionState.CLOSED and not pipe.disconnecting


# -- framing faults ----------------------------------------------------------------------

FAULTS = [
    # (frame, message id answered, 1.6 code, 2.0.1 code)
    ("not json", "-1", "FormationViolation", "RpcFrameworkError"),
    ('{"a": 1}', "-1", "FormationViolation", "RpcFrameworkError"),
    ('[2, "x"]', "x", "FormationViolation", "RpcFrameworkError"),
    ('[2, 17, "Heartbeat", {}]', "-1", "FormationViolation", "RpcFrameworkError"),
    ('["2", "x", "Heartbeat", {}]', "x", "FormationViolation", "RpcFrameworkError"),
    ('[7, "x", "Heartbeat", {}]', "x", "FormationViolation", "MessageTypeNotSupported"),
    ('[2, "x", "Heartbeat", {}, 5]', "x", "FormationViolation", "RpcFrameworkError"),
    ('[2, "x", 5, {}]', "x", "FormationViolation", "FormatViolation"),
    ('[2, "x", "Heartbeat", []]', "x", "FormationViolation", "FormatViolation"),
    (f'[2, "{"y" * 37}", "Heartbeat", {{}}]', "-1", "FormationViolation", "RpcFrameworkError"),
    # Text MQTT v5 refuses in an id: the id cannot be used, even in the answer.
    ('[2, "a\\u0000", "Heartbeat", {}]', "-1", "FormationViolation", "RpcFrameworkError"),
    ('[2, "a\\u0085", "Heartbeat", {}]', "-1", "FormationViolation", "RpcFrameworkError"),
    ('[2, "a\\uffff", "Heartbeat", {}]', "-1", "FormationViolation", "RpcFrameworkError"),
    ('[2, "a\\udbff\\udfff", "Heartbeat", {}]', "-1", "FormationViolation", "RpcFrameworkError"),
    # ... or in an action: answered with the frame's id.
    ('[2, "x", "Heart\\u001bbeat", {}]', "x", "FormationViolation", "FormatViolation"),
    ('[2, "x", "Heart\\ufdd0beat", {}]', "x", "FormationViolation", "FormatViolation"),
    ('[2, "x", "Heart beat", {}]', "x", "FormationViolation", "FormatViolation"),
    # Nesting far deeper than any OCPP message.
    (
        '[2, "x", "DataTransfer", {"d": ' + "[" * 400 + "]" * 400 + "}]",
        "x",
        "FormationViolation",
        "FormatViolation",
    ),
]


@pytest.mark.parametrize("version", [OcppVersion.OCPP16, OcppVersion.OCPP201])
@pytest.mark.parametrize(("frame", "message_id", "code16", "code201"), FAULTS)
def test_framing_faults_get_version_specific_call_error(
    version: str, frame: str, message_id: str, code16: str, code201: str
) -> None:
    pipe = make_pipe(version)
    actions = pipe.receive_station_frame(frame, T0)
    [[type_id, mid, code, description, details]] = sent(actions)
    assert (type_id, mid, details) == (4, message_id, {})
    assert code == (code16 if version == OcppVersion.OCPP16 else code201)
    assert description
    assert published(actions) == []
    assert pipe.pending_station_calls == frozenset()


@pytest.mark.parametrize(
    "frame",
    ['[3, "x"]', '[3, "x", 5]', '[4, "x", "E"]', '[4, "x", "E", "d", []]', "[3, 17, {}]"],
)
def test_malformed_answers_are_reported_never_answered(frame: str) -> None:
    pipe = make_pipe()
    pipe.receive_bus_envelope(csms_call("x"), T0)
    actions = pipe.receive_station_frame(frame, T0)
    assert sent(actions) == [] and published(actions) == []
    assert reports(actions)
    assert pipe.in_flight == "x"


@pytest.mark.parametrize(
    ("version", "code"),
    [(OcppVersion.OCPP16, "FormationViolation"), (OcppVersion.OCPP201, "RpcFrameworkError")],
)
def test_binary_call_is_answered_with_its_id(version: str, code: str) -> None:
    pipe = make_pipe(version)
    actions = pipe.receive_station_frame(b'[2,"b1","Heartbeat",{}]', T0)
    [[_, mid, got, description, _]] = sent(actions)
    assert (mid, got) == ("b1", code)
    assert "text frames" in description
    assert published(actions) == []


@pytest.mark.parametrize(
    "frame",
    ['[3, "m\\u0001", {}]', '[4, "m\\uffff", "GenericError", "", {}]', '[3, "m\\u007f"]'],
)
def test_answers_with_unusable_ids_are_reported_never_answered(frame: str) -> None:
    pipe = make_pipe()
    pipe.receive_bus_envelope(csms_call("m1"), T0)
    actions = pipe.receive_station_frame(frame, T0)
    assert sent(actions) == [] and published(actions) == []
    [report] = reports(actions)
    assert "message_id" not in report.fields
    assert pipe.in_flight == "m1"


def test_oversized_call_with_unusable_id_is_answered_with_unknown_id() -> None:
    pipe = make_pipe()
    frame = '[2, "big\x01", "DataTransfer", {"data": "' + "x" * 2000 + '"}]'
    [[_, mid, code, _, _]] = sent(pipe.receive_station_frame(frame, T0))
    assert (mid, code) == ("-1", "FormatViolation")


def test_binary_garbage_and_binary_answers() -> None:
    pipe = make_pipe()
    [[_, mid, _, _, _]] = sent(pipe.receive_station_frame(b"\xff\x00", T0))
    assert mid == "-1"
    assert sent(pipe.receive_station_frame(b'[3,"m1",{}]', T0)) == []


@pytest.mark.parametrize(
    ("version", "code"),
    [(OcppVersion.OCPP16, "FormationViolation"), (OcppVersion.OCPP201, "FormatViolation")],
)
def test_oversized_call_is_answered_with_format_violation(version: str, code: str) -> None:
    pipe = make_pipe(version)
    frame = '[2, "big1", "DataTransfer", {"data": "' + "x" * 2000 + '"}]'
    actions = pipe.receive_station_frame(frame, T0)
    [[_, mid, got, description, _]] = sent(actions)
    assert (mid, got) == ("big1", code)
    assert "exceeds the limit of 1024" in description
    assert published(actions) == []


def test_oversized_frames_counted_in_utf8_bytes() -> None:
    pipe = make_pipe()
    # 600 characters but 1200 bytes in UTF-8.
    frame = '[2,"u1","DataTransfer",{"data":"' + "é" * 600 + '"}]'
    assert sent(pipe.receive_station_frame(frame, T0))[0][1] == "u1"
    # Just under the limit in bytes: handled normally.
    ok = '[2,"u2","DataTransfer",{"data":"' + "é" * 400 + '"}]'
    assert published(pipe.receive_station_frame(ok, T0))


def test_oversized_unreadable_or_answer_frames() -> None:
    pipe = make_pipe()
    [[_, mid, _, _, _]] = sent(pipe.receive_station_frame("x" * 2000, T0))
    assert mid == "-1"
    assert sent(pipe.receive_station_frame('[3, "m1", {"d": "' + "x" * 2000 + '"}]', T0)) == []


def test_unsupported_version_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Pipe("CP", "ocpp1.5", connection="c", gateway="g")


def test_limits_come_from_settings() -> None:
    from pydantic import ValidationError

    from csms.config import Settings

    limits = Limits.from_settings(Settings(max_station_calls=3, call_queue_size=5))
    assert (limits.max_station_calls, limits.call_queue_size) == (3, 5)
    with pytest.raises(ValidationError, match="max_station_calls"):
        Settings(max_station_calls=0)
