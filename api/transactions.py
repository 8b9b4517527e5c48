"""Transactions: listing newest first with filters, detail with meter readings, and the
same listing as CSV for billing (``GET /v1/transactions.csv``, every page streamed).

The CSV is RFC 4180 (comma-separated, ``\\r\\n`` line ends, fields quoted when they hold a
comma, a quote or a line break) with a header row naming each column and its unit. Text a
station chose (ids, tokens, times, reasons) that starts with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return is prefixed with ``'``, so a spreadsheet never runs it as a
formula; numbers are written as numbers.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from starlette.types import Send

from api.auth import Reader
from api.context import API_PREFIX, ApiContext, Context
from api.errors import ApiError, ErrorBody
from api.models import TransactionDetail, TransactionOut, TransactionPage
from api.paging import Cursor, Limit, listing
from services.interfaces import StoreUnavailable
from services.models import MAX_PAGE_SIZE, Page, Transaction, TransactionState
from services.rules import parse_time

__all__ = ["CSV_COLUMNS", "TransactionFilters", "csv_row", "router"]

_log = structlog.get_logger("api.transactions")

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


@dataclass(frozen=True, slots=True)
class TransactionFilters:
    """The filters of the listing and the export (the query parameters of both)."""

    station: str | None
    state: TransactionState | None
    token: str | None
    started_after: str | None
    started_before: str | None

    async def page(self, ctx: ApiContext, cursor: str | None, limit: int) -> Page[Transaction]:
        return await listing(
            ctx.services.transactions.list_transactions(
                cursor=cursor,
                limit=limit,
                station_id=self.station,
                state=self.state,
                id_token=self.token,
                started_after=self.started_after,
                started_before=self.started_before,
            )
        )


def _filters(
    station: Annotated[str | None, Query(max_length=48, description="station id")] = None,
    state: Annotated[TransactionState | None, Query(description="Active or Ended")] = None,
    token: Annotated[str | None, Query(max_length=36, description="idToken / idTag")] = None,
    started_after: Annotated[str | None, Query(description=f"start >= this, {_TIME}")] = None,
    started_before: Annotated[str | None, Query(description=f"start < this, {_TIME}")] = None,
) -> TransactionFilters:
    _check_time("started_after", started_after)
    _check_time("started_before", started_before)
    return TransactionFilters(station, state, token, started_after, started_before)


Filters = Annotated[TransactionFilters, Depends(_filters)]


@router.get("/transactions", response_model=TransactionPage, summary="List transactions")
async def list_transactions(
    ctx: Context, _: Reader, filters: Filters, cursor: Cursor = None, limit: Limit = 100
) -> TransactionPage:
    page = await filters.page(ctx, cursor, limit)
    return TransactionPage(
        items=[TransactionOut.of(tx) for tx in page.items], next_cursor=page.next_cursor
    )


# --- CSV export (before the detail route, whose path would match any rest of the path) ------

CSV_COLUMNS = (
    "station_id",
    "transaction_id",
    "version",
    "evse_id",
    "connector_id",
    "id_token",
    "id_token_type",
    "group_id",
    "started_at",
    "ended_at",
    "state",
    "stop_reason",
    "energy_wh",
    "meter_start_wh",
    "meter_stop_wh",
    "cost",
    "currency",
)
"""The header row; ``energy_wh`` and the meter values are in Wh, ``cost`` in ``currency``."""

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str | None) -> str:
    """Station-chosen text, defused against spreadsheet formula injection."""
    if value is None:
        return ""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _number(value: float | int | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def _decimal(value: str) -> str:
    """A decimal string the tariff made, as written; anything else is defused text."""
    try:
        number = Decimal(value)
    except InvalidOperation:
        return _text(value)
    return value if number.is_finite() else _text(value)


def csv_row(tx: Transaction) -> list[str]:
    """One transaction as the cells of :data:`CSV_COLUMNS`."""
    return [
        _text(tx.station_id),
        _text(tx.transaction_id),
        tx.version,
        _number(tx.evse_id),
        _number(tx.connector_id),
        _text(tx.id_token),
        _text(tx.id_token_type),
        _text(tx.group_id),
        _text(tx.started_at),
        _text(tx.ended_at),
        tx.state.value,
        _text(tx.stop_reason),
        _number(tx.energy_wh),
        _number(tx.meter_start_wh),
        _number(tx.meter_stop_wh),
        _decimal(tx.cost.total) if tx.cost is not None else "",
        _text(tx.cost.currency) if tx.cost is not None else "",
    ]


async def _csv(
    ctx: ApiContext, filters: TransactionFilters, first: Page[Transaction]
) -> AsyncIterator[str]:
    """The header, then one chunk of rows per page of the listing, until its last page."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    page = first
    while True:
        writer.writerows(csv_row(tx) for tx in page.items)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if page.next_cursor is None:
            return
        page = await filters.page(ctx, page.next_cursor, MAX_PAGE_SIZE)


class _CsvExport(StreamingResponse):
    """A stream that a store outage after the status line leaves unfinished: the server
    then closes the connection, so the client sees a broken transfer, never a short file
    that looks complete (and no 500 is attempted on a started response)."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except StoreUnavailable as exc:
            _log.warning("transaction export cut short", error=str(exc))


@router.get(
    "/transactions.csv",
    response_class=StreamingResponse,
    summary="Every transaction the filters select, as CSV for billing",
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "a header row, then one row per transaction, newest first",
        }
    },
)
async def export_transactions(ctx: Context, _: Reader, filters: Filters) -> StreamingResponse:
    # The first page is read before answering: a store outage is still a 503 here.
    first = await filters.page(ctx, None, MAX_PAGE_SIZE)
    return _CsvExport(
        _csv(ctx, filters, first),
        media_type="text/csv; charset=utf-8; header=present",
        headers={"Content-Disposition": 'attachment; filename="transactions.csv"'},
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
