"""``GET /v1/stations/{id}/messages``: a station's OCPP frames, both directions.

A page of the message log (:mod:`services.message_log`), newest first by default
(``order=asc``: oldest first), filtered by time (``since``, ``until``), ``action`` and
``direction``, with cursor pagination like every listing. ``?follow=true`` streams the
station's new entries as Server-Sent Events instead (``event: message``, ``id`` the entry's
id, ``data`` the entry's JSON; a comment every :data:`KEEPALIVE` seconds keeps proxies from
closing an idle stream). On Redis every follower of a process shares one blocking reader.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api.auth import Reader
from api.context import API_PREFIX, ApiContext, Context
from api.errors import ApiError, ErrorBody
from api.paging import Cursor, Limit, listing
from api.stations import station_not_found
from services.message_log import (
    Direction,
    FrameType,
    Handling,
    LogEntry,
    MessageQuery,
    iso_time,
)

__all__ = ["KEEPALIVE", "MessageOut", "MessagePage", "router"]

KEEPALIVE = 15.0
"""Seconds between keep-alive comments of an idle follow stream."""
_ACTION = r"^[A-Za-z][A-Za-z0-9]{0,63}$"

router = APIRouter(prefix=API_PREFIX, tags=["message log"])


class MessageOut(BaseModel):
    """One OCPP frame of the station, as the managers saw it."""

    id: str = Field(description="entry id, in the order the entries were written")
    time: str = Field(
        description="ISO 8601 UTC: when the gateway received the frame, the manager sent "
        "the answer, or the gateway sent the CSMS call (else made its outcome)"
    )
    direction: Direction = Field(description="in: from the station; out: to it")
    type: FrameType
    action: str | None = None
    message_id: str
    payload: Any = Field(default=None, description="the payload, secrets <redacted>")
    error_code: str | None = None
    error_description: str | None = None
    error_details: Any = None
    outcome: Handling | None = Field(
        default=None, description="for answers and CSMS calls: what became of them"
    )
    version: str

    @classmethod
    def of(cls, entry: LogEntry) -> MessageOut:
        return cls(
            id=entry.id,
            time=iso_time(entry.at),
            direction=entry.direction,
            type=entry.type,
            action=entry.action,
            message_id=entry.message_id,
            payload=_decoded(entry.payload),
            error_code=entry.error_code,
            error_description=entry.error_description,
            error_details=_decoded(entry.error_details),
            outcome=entry.outcome,
            version=entry.version,
        )


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None


def _decoded(raw: msgspec.Raw) -> Any:
    return msgspec.json.decode(raw) if raw else None


def _unix(moment: dt.datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


@router.get(
    "/stations/{station_id:path}/messages",
    response_model=MessagePage,
    summary="A station's OCPP frames, both directions (newest first; ?follow=true: live, SSE)",
    responses={
        404: {"model": ErrorBody, "description": "unknown station"},
        409: {"model": ErrorBody, "description": "the message log is off (message_log)"},
    },
)
async def list_messages(
    ctx: Context,
    _: Reader,
    station_id: str,
    cursor: Cursor = None,
    limit: Limit = 100,
    order: Annotated[
        Literal["desc", "asc"], Query(description="desc: newest first; asc: oldest first")
    ] = "desc",
    since: Annotated[
        dt.datetime | None, Query(description="only frames at or after this time (ISO 8601)")
    ] = None,
    until: Annotated[
        dt.datetime | None, Query(description="only frames at or before this time (ISO 8601)")
    ] = None,
    action: Annotated[str | None, Query(pattern=_ACTION, description="only this action")] = None,
    direction: Annotated[
        Direction | None, Query(description="only frames from (in) or to (out) the station")
    ] = None,
    follow: Annotated[
        bool,
        # Left out of the OpenAPI document: its answer is an endless text/event-stream.
        Query(include_in_schema=False),
    ] = False,
) -> Any:
    if await ctx.services.stations.get(station_id) is None:
        raise station_not_found(station_id)
    log = ctx.services.message_log
    if not log.enabled:
        raise ApiError(
            409,
            "message_log_off",
            "the message log is off (setting message_log = false)",
            {"setting": "message_log"},
        )
    if follow:
        wanted = MessageQuery(limit=1, action=action, direction=direction)
        return StreamingResponse(
            _stream(ctx, station_id, wanted),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    page = await listing(
        log.list_messages(
            station_id,
            cursor=cursor,
            limit=limit,
            order=order,
            since=_unix(since),
            until=_unix(until),
            action=action,
            direction=direction,
        )
    )
    return MessagePage(items=[MessageOut.of(e) for e in page.items], next_cursor=page.next_cursor)


async def _stream(ctx: ApiContext, station_id: str, wanted: MessageQuery) -> AsyncIterator[bytes]:
    """The follow stream: a first comment at once (the client knows it is connected), then
    each new entry that passes the filters."""
    async with ctx.services.message_log.follow(station_id) as follower:
        yield b": following " + json.dumps(station_id).encode() + b"\n\n"
        while True:
            entry = await follower.get(KEEPALIVE)
            if entry is None:
                yield b": keep-alive\n\n"
                continue
            if not wanted.wants(entry):
                continue
            data = MessageOut.of(entry).model_dump_json()
            yield f"id: {entry.id}\nevent: message\ndata: {data}\n\n".encode()
