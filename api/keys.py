"""API keys (admin scope): create (the key is shown once), list, show, revoke."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Path

from api.auth import Admin
from api.context import API_PREFIX, Context
from api.errors import ApiError, ErrorBody
from api.models import ApiKeyCreated, ApiKeyIn, ApiKeyOut, ApiKeyPage
from api.paging import Cursor, Limit, listing
from services.api_keys import issue_key

__all__ = ["router"]

_log = structlog.get_logger("api.keys")

router = APIRouter(prefix=API_PREFIX, tags=["api keys"])

KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="key id (16 hex digits)")]


@router.post(
    "/api-keys", response_model=ApiKeyCreated, status_code=201, summary="Create an API key"
)
async def create_key(ctx: Context, principal: Admin, body: ApiKeyIn) -> ApiKeyCreated:
    issued = issue_key(body.name, body.scope, ctx.clock())
    await ctx.services.api_keys.put(issued.record)
    _log.info(
        "api key created",
        key_id=issued.record.key_id,
        scope=body.scope.value,
        by=principal.key_id,
    )
    return ApiKeyCreated(**ApiKeyOut.of(issued.record).model_dump(), key=issued.key)


@router.get("/api-keys", response_model=ApiKeyPage, summary="List API keys (never secrets)")
async def list_keys(
    ctx: Context, _: Admin, cursor: Cursor = None, limit: Limit = 100
) -> ApiKeyPage:
    page = await listing(ctx.services.api_keys.list_keys(cursor=cursor, limit=limit))
    return ApiKeyPage(
        items=[ApiKeyOut.of(record) for record in page.items], next_cursor=page.next_cursor
    )


def _not_found(key_id: str) -> ApiError:
    return ApiError(
        404, "api_key_not_found", f"no API key {key_id}", {"field": "key_id", "in": "path"}
    )


@router.get(
    "/api-keys/{key_id}",
    response_model=ApiKeyOut,
    summary="One API key",
    responses={404: {"model": ErrorBody}},
)
async def get_key(ctx: Context, _: Admin, key_id: KeyId) -> ApiKeyOut:
    record = await ctx.services.api_keys.get(key_id)
    if record is None:
        raise _not_found(key_id)
    return ApiKeyOut.of(record)


@router.delete(
    "/api-keys/{key_id}",
    response_model=ApiKeyOut,
    summary="Revoke an API key (at once, on every replica)",
    responses={404: {"model": ErrorBody}},
)
async def revoke_key(ctx: Context, principal: Admin, key_id: KeyId) -> ApiKeyOut:
    record = await ctx.services.api_keys.revoke(key_id, ctx.clock())
    if record is None:
        raise _not_found(key_id)
    _log.info("api key revoked", key_id=key_id, by=principal.key_id)
    return ApiKeyOut.of(record)
