"""Transactions: listing newest first with filters, detail with meter readings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import Reader
from api.context import API_PREFIX, Context
from api.errors import ApiError, ErrorBody
from api.models import TransactionDetail, TransactionOut, TransactionPage
from api.paging import Cursor, Limit, listing
from services.models import TransactionState
from services.rules import parse_time

__all__ = ["router"]

router = APIRouter(prefix=API_PREFIX, tags=["transactions"])

_TIME = "ISO 8601 date-time, e.g. 2026-01-15T12:00:00Z"


def _check_time(name: str, value: str | None) -> None:
    if value is not None and parse_time(value) is None:
        raise ApiError(
            400,
            "invalid_parameter",
            f"{name} must be an {_TIME}",
            {"field": name, "in": "query", "rule": "format"},
        )


@router.get("/transactions", response_model=TransactionPage, summary="List transactions")
async def list_transactions(
    ctx: Context,
    _: Reader,
    cursor: Cursor = None,
    limit: Limit = 100,
    station: Annotated[str | None, Query(max_length=48, description="station id")] = None,
    state: Annotated[TransactionState | None, Query(description="Active or Ended")] = None,
    token: Annotated[str | None, Query(max_length=36, description="idToken / idTag")] = None,
    started_after: Annotated[str | None, Query(description=f"start >= this, {_TIME}")] = None,
    started_before: Annotated[str | None, Query(description=f"start < this, {_TIME}")] = None,
) -> TransactionPage:
    _check_time("started_after", started_after)
    _check_time("started_before", started_before)
    page = await listing(
        ctx.services.transactions.list_transactions(
            cursor=cursor,
            limit=limit,
            station_id=station,
            state=state,
            id_token=token,
            started_after=started_after,
            started_before=started_before,
        )
    )
    return TransactionPage(
        items=[TransactionOut.of(tx) for tx in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/transactions/{station_id:path}/{transaction_id}",
    response_model=TransactionDetail,
    summary="One transaction with its meter readings",
    responses={404: {"model": ErrorBody, "description": "unknown transaction"}},
)
async def get_transaction(
    ctx: Context, _: Reader, station_id: str, transaction_id: str
) -> TransactionDetail:
    tx = await ctx.services.transactions.get(station_id, transaction_id)
    if tx is None:
        raise ApiError(
            404,
            "transaction_not_found",
            f"station {station_id!r} has no transaction {transaction_id!r}",
            {"field": "transaction_id", "in": "path"},
        )
    readings = await ctx.services.transactions.readings(station_id, transaction_id)
    return TransactionDetail.with_readings(tx, readings)
