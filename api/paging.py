"""Shared query parameters and error mapping of the listing routes."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Query

from api.errors import ApiError
from services.models import MAX_PAGE_SIZE, Page

__all__ = ["Cursor", "Limit", "listing"]

_T = TypeVar("_T")

Cursor = Annotated[
    str | None,
    Query(max_length=2048, description="next_cursor of the previous page; omit for the first"),
]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="items per page at most")]


async def listing(page: Awaitable[Page[_T]]) -> Page[_T]:
    """Await a store listing, turning its ``ValueError`` (a cursor it did not make, a bound
    it cannot read) into a 400 naming the parameter."""
    try:
        return await page
    except ValueError as exc:
        if "cursor" in str(exc):
            raise ApiError(
                400,
                "invalid_cursor",
                "the cursor is not one this listing returned",
                {"field": "cursor", "in": "query"},
            ) from None
        raise ApiError(400, "invalid_parameter", str(exc), {"in": "query"}) from None
