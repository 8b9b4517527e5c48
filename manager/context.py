"""What a handler gets: the call's facts, the services, settings and a CallMaker.

Handlers are plain async functions, one module per action per version:

- station Calls: ``async def handle(ctx: CallContext, payload: dict) -> dict`` returning the
  response payload (validated against the response schema before it is sent);
- answers to CSMS calls: ``async def handle_result(ctx: ResultContext) -> None``.

A handler signals an OCPP-level refusal by raising :class:`OcppError`; any other exception
becomes an InternalError for that one station and a log line.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from csms.config import Settings
from csms.envelope import OriginalCall
from csms.errors import CsmsError
from csms.rpc import RpcError
from services import Services

__all__ = [
    "CallContext",
    "CallHandler",
    "OcppError",
    "ResultContext",
    "ResultHandler",
    "iso",
    "utc_now",
]

if TYPE_CHECKING:
    from operations.call_maker import CallMaker


class OcppError(CsmsError):
    """Raised by a handler to answer with a CallError of the given kind."""

    def __init__(self, error: RpcError, description: str, details: dict[str, Any] | None = None):
        super().__init__(description)
        self.error = error
        self.description = description
        self.details = details or {}


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    """OCPP date-time: ISO 8601 UTC with a ``Z`` and millisecond precision."""
    if moment.tzinfo is not dt.UTC:
        moment = moment.astimezone(dt.UTC)
    # Several per message: slicing off "+00:00" is half the cost of the general route.
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(slots=True)
class CallContext:
    """One station Call being handled."""

    station_id: str
    version: str
    message_id: str
    action: str
    services: Services
    settings: Settings
    calls: CallMaker
    log: structlog.typing.FilteringBoundLogger
    connection: str | None = None
    gateway: str | None = None
    received_at: dt.datetime = field(default_factory=utc_now)
    meta: dict[str, str] = field(default_factory=dict)
    """The envelope's metadata as the gateway stamped it (see ``csms.envelope.ADMITTED_AS``)."""

    def now_iso(self) -> str:
        return iso(self.received_at)


@dataclass(slots=True)
class ResultContext:
    """The station's answer (or its absence) to one CSMS-initiated call."""

    station_id: str
    version: str
    request: OriginalCall
    """The call being answered: action, payload and the originator's metadata."""
    services: Services
    settings: Settings
    calls: CallMaker
    log: structlog.typing.FilteringBoundLogger
    payload: dict[str, Any] | None = None
    """CallResult payload (validated against the action's response schema), else None."""
    error_code: str | None = None
    """Set when the station answered with a CallError."""
    error_description: str | None = None
    timed_out: bool = False
    """True when the station did not answer within the gateway's call timeout."""
    undelivered: str | None = None
    """Reason the gateway could not send the call (queue full, station gone), else None."""

    @property
    def ok(self) -> bool:
        return self.payload is not None


CallHandler = Callable[[CallContext, dict[str, Any]], Awaitable[dict[str, Any]]]
ResultHandler = Callable[[ResultContext], Awaitable[None]]
