"""Tokens (idTokens / idTags): list (read), provision or replace (operate), delete (operate).

Listing and deleting need a token store that is a :class:`~services.interfaces.
TokenDirectory` (the built-in ones are); an operator's own TokenStore plug-in may only
authorize and provision, and then those routes answer 501.
"""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Path, Query

from api.auth import Operator, Reader
from api.context import API_PREFIX, Context
from api.errors import ApiError, ErrorBody
from api.models import TokenIn, TokenOut, TokenPage
from api.paging import Cursor, Limit, listing
from services.interfaces import TokenDirectory
from services.models import AuthorizationStatus, TokenRecord

__all__ = ["router"]

_log = structlog.get_logger("api.tokens")

router = APIRouter(prefix=API_PREFIX, tags=["tokens"])

IdToken = Annotated[
    str, Path(min_length=1, max_length=36, description="the idToken (1.6: idTag) value")
]


def _directory(ctx: Context) -> TokenDirectory:
    tokens = ctx.services.tokens
    if not isinstance(tokens, TokenDirectory):
        raise ApiError(
            501,
            "not_supported",
            "the configured token store cannot list or delete tokens",
            {"token_store": type(tokens).__name__},
        )
    return tokens


@router.get(
    "/tokens",
    response_model=TokenPage,
    summary="List tokens",
    responses={501: {"model": ErrorBody, "description": "token store cannot list"}},
)
async def list_tokens(
    ctx: Context,
    _: Reader,
    cursor: Cursor = None,
    limit: Limit = 100,
    prefix: Annotated[str | None, Query(max_length=36, description="ids starting with")] = None,
) -> TokenPage:
    page = await listing(_directory(ctx).list_tokens(cursor=cursor, limit=limit, prefix=prefix))
    return TokenPage(
        items=[TokenOut.of(record) for record in page.items], next_cursor=page.next_cursor
    )


@router.put("/tokens/{id_token}", response_model=TokenOut, summary="Provision or replace a token")
async def put_token(
    ctx: Context, principal: Operator, id_token: IdToken, body: TokenIn
) -> TokenOut:
    record = TokenRecord(
        id_token=id_token,
        status=AuthorizationStatus(body.status),
        token_type=body.token_type,
        expiry=body.expiry,
        group_id=body.group_id,
    )
    await ctx.services.tokens.put(record)
    _log.info("token provisioned", id_token=id_token, status=body.status, by=principal.key_id)
    return TokenOut.of(record)


@router.delete(
    "/tokens/{id_token}",
    status_code=204,
    summary="Delete a token",
    responses={
        404: {"model": ErrorBody, "description": "unknown token"},
        501: {"model": ErrorBody, "description": "token store cannot delete"},
    },
)
async def delete_token(ctx: Context, principal: Operator, id_token: IdToken) -> None:
    if not await _directory(ctx).delete(id_token):
        raise ApiError(
            404, "token_not_found", f"no token {id_token!r}", {"field": "id_token", "in": "path"}
        )
    _log.info("token deleted", id_token=id_token, by=principal.key_id)
