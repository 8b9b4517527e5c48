"""Send any CSMS-initiated call to a station and await its outcome.

:class:`CallSender` owns one bus connection's consumer. It subscribes a reply topic of its own
(``{prefix}/reply/{origin}``), sends each call through the :class:`~operations.CallMaker`
with ``reply_to`` set to it, and resolves the caller's wait with the gateway's envelope for
that call: the station's CallResult or CallError, or the gateway's own timeout or
undelivered outcome. The gateway also publishes every outcome on the shared ``in`` topic, so
the managers' result handlers run (and record it) whether or not anybody waits.

Every wait ends with an outcome, the originator never hangs:

- **offline**: no gateway holds the station (the broker reports no subscriber for its
  ``out`` topic), known at once;
- **result** / **error**: the station answered;
- **timeout**: the station did not answer within the gateway's ``call_timeout``;
- **undelivered**: the gateway could not send it (queue full, the connection closed or was
  replaced);
- **no outcome**: nothing came back before the caller's own deadline (the gateway that held
  the station died, or the call waits behind others): what became of it is unknown.

A call that breaks its request schema raises :class:`InvalidCall` before anything is sent; a
bus that is down raises :class:`~csms.bus.BusUnavailable`. :meth:`CallSender.submit` sends
without waiting: the outcome is then read back from the call records
(:mod:`services.call_records`), which the managers fill in. A call the station's action rules
deny (a sender made with ``rules``) raises :class:`~services.action_rules.ActionDenied`,
before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import msgspec
import structlog

from csms.bus import Bus, NoSubscribers
from csms.envelope import Envelope, Kind, decode_envelope
from csms.errors import InvalidRequest
from csms.topics import Topics
from ocpp_schemas import Direction, SchemaViolation, validate
from operations.call_maker import CallMaker
from services.action_rules import ActionRuleReader, check_csms_call

__all__ = ["CallOutcome", "CallSender", "InvalidCall", "Outcome", "check_call"]

_log = structlog.get_logger("operations.calls")

_OUTCOME_KINDS = {
    Kind.RESULT: "result",
    Kind.ERROR: "error",
    Kind.TIMEOUT: "timeout",
    Kind.UNDELIVERED: "undelivered",
}


class Outcome(enum.StrEnum):
    """What became of a CSMS call."""

    RESULT = "result"
    """The station answered with a CallResult (``payload``)."""
    ERROR = "error"
    """The station answered with a CallError (``error_code``, ``error_description``)."""
    TIMEOUT = "timeout"
    """The station did not answer within the gateway's call timeout."""
    UNDELIVERED = "undelivered"
    """The gateway could not send the call (``error_description`` says why)."""
    OFFLINE = "offline"
    """No gateway holds the station: nothing was sent."""
    NO_OUTCOME = "no_outcome"
    """Nothing came back before the caller's deadline: the outcome is unknown."""


class InvalidCall(InvalidRequest):
    """The call cannot be sent as asked: unknown action or a payload its schema refuses.

    ``field`` and ``rule`` name the failing part (empty for an unknown action).
    """

    def __init__(self, message: str, *, field: str = "", rule: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule


@contextlib.contextmanager
def _invalid_calls(version: str, action: str) -> Iterator[None]:
    """Turn the CallMaker's refusals of a call (schema, unknown action) into InvalidCall."""
    try:
        yield
    except SchemaViolation as violation:
        raise InvalidCall(violation.message, field=violation.field, rule=violation.rule) from None
    except KeyError:
        raise InvalidCall(f"{action!r} is not a CSMS-initiated action of {version}") from None


def check_call(version: str, action: str, payload: dict[str, Any]) -> None:
    """Raise :class:`InvalidCall` for a call that would be refused before sending, so a
    caller can record the call before publishing it and never record one that cannot go."""
    with _invalid_calls(version, action):
        validate(version, action, Direction.REQUEST, payload)


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """The outcome of one CSMS call, for a caller that waited for it."""

    outcome: Outcome
    station_id: str
    version: str
    action: str
    message_id: str | None
    """The OCPP message id used; None when nothing was sent (offline)."""
    payload: dict[str, Any] | None = None
    error_code: str | None = None
    error_description: str | None = None
    error_details: Any = None
    sent_at: float | None = None
    """Unix time the gateway wrote the call to the station's socket, if it did."""
    finished_at: float = 0.0

    @property
    def answered(self) -> bool:
        """True when the station answered (CallResult or CallError)."""
        return self.outcome in (Outcome.RESULT, Outcome.ERROR)


class CallSender:
    """Sends CSMS calls and awaits their outcomes; one per bus connection (it consumes the
    bus's messages). ``async with CallSender(bus, topics, origin="api-1") as sender:``."""

    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        *,
        origin: str,
        default_timeout: float = 65.0,
        rules: ActionRuleReader | None = None,
    ) -> None:
        self._bus = bus
        self._topics = topics
        self._origin = origin
        self._reply_topic = topics.reply(f"{origin}-{uuid.uuid4().hex[:8]}")
        self._calls = CallMaker(bus, topics, origin=origin, rules=rules)
        self._default_timeout = default_timeout
        self._rules = rules
        self._waiting: dict[str, asyncio.Future[Envelope]] = {}
        self._reader: asyncio.Task[None] | None = None

    @property
    def reply_topic(self) -> str:
        return self._reply_topic

    async def __aenter__(self) -> Self:
        await self._bus.subscribe(self._reply_topic)
        self._reader = asyncio.create_task(self._read(), name=f"calls:{self._origin}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        with contextlib.suppress(Exception):
            await self._bus.unsubscribe(self._reply_topic)
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    async def check_allowed(self, station_id: str, version: str, action: str) -> None:
        """Raise :class:`~services.action_rules.ActionDenied` when the station's action rules
        refuse this call (``send`` and ``submit`` are refused too, by the :class:`CallMaker`
        they publish with; a caller that records calls checks it first). Every originator
        sending through a sender made with ``rules`` is covered: API calls, task routes,
        remote start and stop, rotations."""
        if self._rules is not None:
            await check_csms_call(self._rules, station_id, version, action)

    async def send(
        self,
        station_id: str,
        version: str,
        action: str,
        payload: dict[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the caller's deadline is the point)
        meta: dict[str, str] | None = None,
        message_id: str | None = None,
    ) -> CallOutcome:
        """Send ``action`` to the station and return its outcome (see the module docstring).

        ``timeout`` is the caller's own deadline (default ``default_timeout``): it should
        exceed the gateway's ``call_timeout``, or answers that come are reported as
        :attr:`Outcome.NO_OUTCOME`. ``message_id`` (default: a new UUID) lets the caller
        record the call under its id before it is sent.
        """
        if self._reader is None:
            raise RuntimeError("use 'async with CallSender(...)' before send()")
        message_id = message_id or str(uuid.uuid4())
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        try:
            try:
                with _invalid_calls(version, action):
                    await self._calls.call(
                        station_id,
                        version,
                        action,
                        payload,
                        meta=meta,
                        reply_to=self._reply_topic,
                        message_id=message_id,
                    )
            except NoSubscribers:
                return CallOutcome(
                    Outcome.OFFLINE,
                    station_id,
                    version,
                    action,
                    None,
                    error_description="no gateway holds the station",
                    finished_at=time.time(),
                )
            try:
                async with asyncio.timeout(timeout or self._default_timeout):
                    envelope = await future
            except TimeoutError:
                return CallOutcome(
                    Outcome.NO_OUTCOME,
                    station_id,
                    version,
                    action,
                    message_id,
                    error_description="no outcome before the caller's deadline",
                    finished_at=time.time(),
                )
        finally:
            self._waiting.pop(message_id, None)
        return _outcome_of(envelope, station_id, version, action, message_id)

    async def submit(
        self,
        station_id: str,
        version: str,
        action: str,
        payload: dict[str, Any],
        *,
        meta: dict[str, str] | None = None,
        message_id: str | None = None,
    ) -> str:
        """Send ``action`` without waiting; returns the message id once the call is published.

        The outcome goes only to the shared ``in`` topic, where the managers handle (and
        record) it. Raises :class:`InvalidCall`, :class:`~csms.bus.NoSubscribers` (no gateway
        holds the station: nothing was sent) or :class:`~csms.bus.BusUnavailable`.
        """
        with _invalid_calls(version, action):
            return await self._calls.call(
                station_id, version, action, payload, meta=meta, message_id=message_id
            )

    async def _read(self) -> None:
        async for message in self._bus.messages():
            if message.topic != self._reply_topic:
                continue
            try:
                envelope = decode_envelope(message.payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                _log.warning("undecodable outcome dropped", error=str(exc))
                continue
            request = envelope.request
            message_id = request.message_id if request is not None else envelope.message_id
            future = self._waiting.get(message_id)
            if future is not None and not future.done():
                future.set_result(envelope)


def _outcome_of(
    envelope: Envelope, station_id: str, version: str, action: str, message_id: str
) -> CallOutcome:
    kind = _OUTCOME_KINDS.get(envelope.kind)
    outcome = Outcome(kind) if kind is not None else Outcome.NO_OUTCOME
    request = envelope.request
    return CallOutcome(
        outcome,
        station_id,
        version,
        action,
        message_id,
        payload=envelope.payload if isinstance(envelope.payload, dict) else None,
        error_code=envelope.error_code,
        error_description=envelope.error_description,
        error_details=envelope.error_details,
        sent_at=request.sent_at if request is not None else None,
        finished_at=envelope.at or time.time(),
    )
