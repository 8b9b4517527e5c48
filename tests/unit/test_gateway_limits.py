"""Limits against hostile input as pure logic: token bucket, address limiter, log throttle,
and the pipe's message-rate rule, all driven with a fake clock."""

from __future__ import annotations

import json
from typing import Any

import pytest

from csms.config import Settings
from csms.envelope import Envelope, Kind
from csms.versions import OcppVersion
from gateway.limits import AddressLimiter, LogThrottle, TokenBucket, address_key
from gateway.pipe import (
    FLOODING,
    RATE_LIMITED,
    Action,
    Disconnect,
    Limits,
    Pipe,
    Publish,
    Report,
    SendToStation,
)

T0 = 1_000_000.0

# -- token bucket ---------------------------------------------------------------------------


def test_bucket_starts_full_and_allows_a_burst() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=T0)
    assert [bucket.take(T0) for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_rate_up_to_burst() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=T0)
    for _ in range(3):
        bucket.take(T0)
    assert bucket.wait_time(T0) == pytest.approx(0.5)
    assert not bucket.take(T0 + 0.49)
    assert bucket.take(T0 + 0.5)
    assert bucket.level(T0 + 100) == 3.0  # never above burst


def test_bucket_sustained_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=T0)
    # 1000 attempts over 10 s at 100/s: burst + 10/s get through.
    admitted = sum(bucket.take(T0 + n / 100) for n in range(1000))
    assert 5 + 99 <= admitted <= 5 + 101


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=T0)
    assert bucket.take(T0)
    assert not bucket.take(T0 - 50)
    assert bucket.take(T0 + 1)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_bucket_rejects_bad_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, T0)


# -- address limiter ------------------------------------------------------------------------


def test_address_limiter_counts_per_address() -> None:
    limiter = AddressLimiter(2)
    assert limiter.acquire("10.0.0.1")
    assert limiter.acquire("10.0.0.1")
    assert not limiter.acquire("10.0.0.1")
    assert limiter.acquire("10.0.0.2")
    assert (limiter.count("10.0.0.1"), limiter.total, len(limiter)) == (2, 3, 2)
    limiter.release("10.0.0.1")
    assert limiter.acquire("10.0.0.1")


def test_address_limiter_forgets_idle_addresses_and_never_goes_negative() -> None:
    limiter = AddressLimiter(1)
    assert limiter.acquire("a")
    limiter.release("a")
    assert len(limiter) == 0
    limiter.release("a")  # a stray release must not leave credit behind
    assert limiter.acquire("a")
    assert not limiter.acquire("a")


def test_address_limiter_without_limit_only_counts() -> None:
    limiter = AddressLimiter(None)
    assert all(limiter.acquire("a") for _ in range(1000))
    assert limiter.count("a") == 1000
    with pytest.raises(ValueError):
        AddressLimiter(0)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("/run/csms.sock", "/run/csms.sock"),
    ],
)
def test_address_key(host: str, key: str) -> None:
    assert address_key(host) == key


# -- log throttle ---------------------------------------------------------------------------


def test_log_throttle_lets_one_through_per_interval_and_counts_the_rest() -> None:
    throttle = LogThrottle(interval=10, max_keys=8)
    assert throttle.allow("k", T0) == 0
    assert [throttle.allow("k", T0 + n) for n in range(1, 10)] == [None] * 9
    assert throttle.suppressed == 9
    assert throttle.allow("other", T0 + 1) == 0  # keys are independent
    assert throttle.allow("k", T0 + 10) == 9
    assert throttle.suppressed == 0
    throttle.allow("k", T0 + 11)
    assert throttle.forget("k") == 1


def test_log_throttle_memory_is_bounded() -> None:
    throttle = LogThrottle(interval=10, max_keys=100)
    for n in range(10_000):
        throttle.allow(("refused", f"10.0.{n // 256}.{n % 256}"), T0)
    assert len(throttle) == 100
    # The newest keys are the ones remembered.
    assert throttle.allow(("refused", "10.0.39.15"), T0 + 1) is None


# -- the pipe's message rate ----------------------------------------------------------------

RATE = Limits(message_rate=2, message_burst=3, flood_close_after=5, answer_timeout=1000)


def make_pipe(version: str = OcppVersion.OCPP201, limits: Limits = RATE) -> Pipe:
    return Pipe("CP-1", version, connection="c1", gateway="g1", limits=limits)


def call(n: int | str) -> str:
    return f'[2,"s{n}","Heartbeat",{{}}]'


def sent(actions: list[Action]) -> list[list[Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, SendToStation)]


def published(actions: list[Action]) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish)]


def warnings(actions: list[Action]) -> list[str]:
    return [a.event for a in actions if isinstance(a, Report) and a.level == "warning"]


@pytest.mark.parametrize("version", [OcppVersion.OCPP201, OcppVersion.OCPP16])
def test_call_over_the_rate_gets_generic_error_and_is_not_published(version: str) -> None:
    pipe = make_pipe(version)
    for n in range(3):
        assert published(pipe.receive_station_frame(call(n), T0))
    actions = pipe.receive_station_frame(call(3), T0)
    assert not published(actions)
    [error] = sent(actions)
    assert error[:4] == [4, "s3", "GenericError", RATE_LIMITED]
    assert error[4] == {
        "limit": "messageRate",
        "ratePerSecond": 2,
        "burst": 3,
        "retryAfterSeconds": 0.5,
    }
    assert warnings(actions) == ["station over the message rate limit"]
    assert "s3" not in pipe.pending_station_calls
    # Tokens come back at the configured rate.
    assert published(pipe.receive_station_frame(call(4), T0 + 0.5))


def test_only_the_first_refusal_of_a_breach_is_a_warning() -> None:
    pipe = make_pipe()
    for n in range(3):
        pipe.receive_station_frame(call(n), T0)
    events = [warnings(pipe.receive_station_frame(call(n), T0 + 0.01)) for n in range(3, 10)]
    assert events[0] == ["station over the message rate limit"]
    assert all(e == [] for e in events[1:])


def test_answer_to_the_csms_call_in_flight_is_never_refused() -> None:
    pipe = make_pipe()
    pipe.receive_bus_envelope(
        Envelope(
            kind=Kind.CALL,
            station="CP-1",
            version=OcppVersion.OCPP201,
            message_id="m1",
            action="Reset",
            payload={"type": "Immediate"},
        ),
        T0,
    )
    for n in range(5):
        pipe.receive_station_frame(call(n), T0)
    actions = pipe.receive_station_frame('[3,"m1",{"status":"Accepted"}]', T0)
    [outcome] = published(actions)
    assert outcome.envelope.kind is Kind.RESULT
    assert outcome.envelope.payload == {"status": "Accepted"}
    assert pipe.in_flight is None
    # A stray answer over the rate counts as a refusal but changes nothing else.
    assert not published(pipe.receive_station_frame('[3,"zz",{}]', T0))


def test_sustained_flood_disconnects_with_1008() -> None:
    pipe = make_pipe()
    now, actions = T0, []
    for n in range(1000):
        now = T0 + n * 0.05  # 20 frames/s against 2/s allowed
        actions = pipe.receive_station_frame(call(n), now)
        if any(isinstance(a, Disconnect) for a in actions):
            break
    # The burst (3) and refill carry the station to T0 + 0.15; refusals run from there.
    assert now - T0 == pytest.approx(0.15 + 5, abs=0.01)
    assert [a for a in actions if isinstance(a, Disconnect)] == [Disconnect(1008, FLOODING)]
    assert not sent(actions) and not published(actions)
    assert warnings(actions) == ["station flooding: disconnecting"]
    assert pipe.disconnecting
    # Frames still in the socket's buffer are ignored; the socket close then closes the pipe.
    assert pipe.receive_station_frame(call("late"), now) == []
    assert pipe.close(now) == []


def test_flood_of_garbage_disconnects_too_and_faults_are_still_answered() -> None:
    pipe = make_pipe(limits=Limits(message_rate=1, message_burst=1, flood_close_after=1))
    first = pipe.receive_station_frame("garbage", T0)
    assert sent(first)[0][2] == "RpcFrameworkError"
    over = pipe.receive_station_frame("garbage", T0 + 0.1)
    assert sent(over)[0][2] == "RpcFrameworkError"
    assert warnings(over) == ["malformed frame rejected", "station over the message rate limit"]
    closing: list[Action] = []
    for n in range(2, 12):  # binary garbage at 10 frames/s against 1/s allowed
        closing = pipe.receive_station_frame(b"\x00" * 10, T0 + n / 10)
        if pipe.disconnecting:
            break
    assert closing[-1] == Disconnect(1008, FLOODING)
    assert pipe.disconnecting


def test_a_pause_ends_the_breach_and_restarts_the_flood_clock() -> None:
    pipe = make_pipe()
    for n in range(4):  # three admitted, one refused at T0
        pipe.receive_station_frame(call(n), T0)
    # Refused now and then, never for long: no disconnect however long this goes on.
    seen: list[Action] = []
    for n in range(20):
        now = T0 + 1.5 * (n + 1)
        for letter in "abcd":
            seen += pipe.receive_station_frame(call(f"{letter}{n}"), now)
    assert not any(isinstance(a, Disconnect) for a in seen)
    assert not pipe.disconnecting
    ended = [a for a in seen if isinstance(a, Report) and a.event.startswith("station back under")]
    assert len(ended) == 20 and all(a.fields["refused"] >= 1 for a in ended)
    assert warnings(seen).count("station over the message rate limit") == 20


def test_end_of_breach_is_reported_with_the_next_frame() -> None:
    pipe = make_pipe()
    for n in range(5):
        pipe.receive_station_frame(call(n), T0 + n * 0.01)
    actions = pipe.receive_station_frame(call("calm"), T0 + 10)
    assert published(actions)
    [ended] = [a for a in actions if isinstance(a, Report)]
    assert (ended.level, ended.event, ended.fields["refused"]) == (
        "info",
        "station back under the message rate limit",
        2,
    )


def test_no_rate_limit_and_no_flood_close_when_unset() -> None:
    pipe = make_pipe(limits=Limits(message_rate=None, answer_timeout=1000, max_station_calls=5000))
    assert all(published(pipe.receive_station_frame(call(n), T0)) for n in range(2000))
    never = make_pipe(limits=Limits(message_rate=1, message_burst=1, flood_close_after=None))
    for n in range(1000):
        assert not any(
            isinstance(a, Disconnect) for a in never.receive_station_frame(call(n), T0 + n * 0.01)
        )


def test_limits_from_settings() -> None:
    limits = Limits.from_settings(Settings(message_rate=5, message_burst=7, flood_close_after=None))
    assert (limits.message_rate, limits.message_burst, limits.flood_close_after) == (5, 7, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("handshake_timeout", 0),
        ("message_rate", 0),
        ("message_burst", 0),
        ("flood_close_after", -1),
        ("max_connections_per_address", 0),
        ("max_connections", 0),
    ],
)
def test_limit_settings_are_validated(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})
