"""The live stream of state-change events: ``GET /v1/events`` (docs/events.md).

Server-Sent Events by default: one SSE event per log event (``id:`` its log id, ``event:``
its kind, ``data:`` the event as JSON), a ``: keep-alive`` comment after
:data:`KEEPALIVE_SECONDS` without one, and an ``event: truncated`` first when the reader's
cursor is older than what the log keeps. Resumable: a reconnecting client sends its last
id as ``Last-Event-ID`` (browsers' EventSource does) or ``?after=``, and gets every event
after it exactly once. Without a cursor the stream starts at the newest event (new events
only). ``?follow=false`` answers one JSON page instead, for scripts and first paints.

A stream ends when the client goes (Starlette cancels it on the disconnect) and when the
server begins to stop (:func:`api.server.stopping`), so a shutdown never waits for it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
import structlog
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api.auth import Reader
from api.context import API_PREFIX, Context
from api.errors import ApiError
from api.server import stopping
from services.events import Event, EventKind, EventLog
from services.interfaces import StoreUnavailable
from services.models import MAX_PAGE_SIZE

__all__ = ["KEEPALIVE_SECONDS", "EventOut", "EventsPage", "router", "sse_event"]

_log = structlog.get_logger("api.events")

router = APIRouter(prefix=API_PREFIX, tags=["events"])

KEEPALIVE_SECONDS = 15.0
"""Longest silence on a live stream: proxies and load balancers keep an idle connection."""
STREAM_BATCH = 100
"""Events read from the log at a time while streaming."""

_EVENT_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
_KINDS = frozenset(kind.value for kind in EventKind)


class EventOut(BaseModel):
    """One state-change event (docs/events.md describes ``data`` per kind)."""

    id: str = Field(description="log id, ordered; resume after it with after= / Last-Event-ID")
    kind: str = Field(description="station.connected, transaction.ended, ...")
    at: str = Field(description="when it happened (ISO 8601 UTC)")
    station_id: str | None
    data: dict[str, Any]
    key: str | None = Field(description="names the fact: a repeated event has the same key")
    v: int = Field(description="schema version of the event")

    @classmethod
    def of(cls, event: Event) -> EventOut:
        return cls.model_validate(msgspec.structs.asdict(event))


class EventsPage(BaseModel):
    items: list[EventOut] = Field(description="oldest first")
    last_id: str | None = Field(
        description="pass back as after= for the next page (also past filtered-out events)"
    )
    truncated: bool = Field(
        description="the cursor was older than the oldest event kept: some are gone"
    )


def sse_event(event: Event) -> str:
    """One log event as an SSE message."""
    body = msgspec.json.encode(msgspec.structs.asdict(event)).decode()
    return f"id: {event.id}\nevent: {event.kind}\ndata: {body}\n\n"


def _kinds(value: str | None) -> frozenset[str] | None:
    if value is None or value.strip() in ("", "*"):
        return None
    kinds = frozenset(part.strip() for part in value.split(",") if part.strip())
    if "*" in kinds:
        return None
    unknown = sorted(kinds - _KINDS)
    if unknown:
        raise ApiError(
            400,
            "invalid_parameter",
            f"unknown event kind {unknown[0]!r}; kinds are {', '.join(sorted(_KINDS))} or *",
            {"field": "kinds", "in": "query", "rule": "enum"},
        )
    return kinds


def _cursor(after: str | None, last_event_id: str | None) -> str | None:
    """``Last-Event-ID`` (a reconnecting EventSource) wins over ``?after=``."""
    for value, field, where in (
        (last_event_id, "Last-Event-ID", "header"),
        (after, "after", "query"),
    ):
        if value is None or value == "":
            continue
        if not _EVENT_ID.match(value):
            raise ApiError(
                400,
                "invalid_parameter",
                f"{field} must be an event id such as 1768478400000-0",
                {"field": field, "in": where, "rule": "pattern"},
            )
        return value
    return None


async def _next_page(
    log: EventLog,
    cursor: str | None,
    kinds: frozenset[str] | None,
    station_id: str | None,
    stop: asyncio.Event,
) -> Any:
    """The next long-poll page, or None once the server is stopping."""
    waiting = asyncio.ensure_future(
        log.wait(cursor, KEEPALIVE_SECONDS, limit=STREAM_BATCH, kinds=kinds, station_id=station_id)
    )
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((waiting, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not waiting.done():
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    if stop.is_set():
        return None
    return waiting.result()


async def _stream(
    log: EventLog,
    cursor: str | None,
    kinds: frozenset[str] | None,
    station_id: str | None,
    stop: asyncio.Event,
) -> AsyncIterator[str]:
    # Sent at once: the client knows the stream is open before the first event.
    yield ": connected\n\n"
    try:
        while True:
            page = await _next_page(log, cursor, kinds, station_id, stop)
            if page is None:
                return
            if page.truncated:
                lost = msgspec.json.encode({"after": cursor, "reason": "older events are gone"})
                yield f"event: truncated\ndata: {lost.decode()}\n\n"
            if page.events:
                yield "".join(sse_event(event) for event in page.events)
            else:
                yield ": keep-alive\n\n"
            cursor = page.last_id
    except StoreUnavailable as exc:
        # The client reconnects with its Last-Event-ID once the store is back.
        _log.warning("event stream ended: store unavailable", error=str(exc))


@router.get(
    "/events",
    summary="State-change events: a live Server-Sent Events stream, or one JSON page",
    response_model=EventsPage,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "follow=true (default): id / event / data per event, keep-alive "
            "comments; follow=false: one page as JSON",
        }
    },
)
async def events(
    request: Request,
    ctx: Context,
    _: Reader,
    kinds: Annotated[
        str | None,
        Query(
            max_length=1000, description="comma-separated kinds (station.booted, ...), * for all"
        ),
    ] = None,
    station_id: Annotated[str | None, Query(max_length=48, description="one station's")] = None,
    after: Annotated[
        str | None, Query(max_length=41, description="events after this id (Last-Event-ID wins)")
    ] = None,
    follow: Annotated[bool, Query(description="false: one JSON page instead of a stream")] = True,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="follow=false: events at most")
    ] = 100,
    last_event_id: Annotated[str | None, Header(max_length=41)] = None,
) -> Any:
    log = ctx.services.events
    wanted = _kinds(kinds)
    cursor = _cursor(after, last_event_id)
    if not follow:
        page = await log.read(cursor, limit=limit, kinds=wanted, station_id=station_id)
        return EventsPage(
            items=[EventOut.of(event) for event in page.events],
            last_id=page.last_id,
            truncated=page.truncated,
        )
    if cursor is None:
        # Read before answering: a store outage is still a 503 here.
        cursor = await log.latest_id()
    return StreamingResponse(
        _stream(log, cursor, wanted, station_id, stopping(request.app)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
