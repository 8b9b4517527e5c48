"""``GET /v1/transactions.csv`` over real HTTP: every page of the listing streamed as RFC 4180
CSV with the listing's filters, formula injection defused, a store outage never a short
file that looks complete."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.transactions import CSV_COLUMNS
from services.interfaces import StoreUnavailable
from services.memory import MemoryTransactionStore
from services.models import (
    MAX_PAGE_SIZE,
    Cost,
    Page,
    Transaction,
    TransactionState,
)
from tests.unit.test_api import V16, V201, Api, assert_error, embedded_api

COST = Cost(total="3.21", currency="EUR", energy="3.00", time="0.21", fee="0")


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with embedded_api() as harness:
        yield harness


async def store(api: Api, tx: Transaction) -> None:
    await api.services.transactions.update(tx.station_id, tx.transaction_id, lambda _: tx)


def started(n: int, **fields: Any) -> Transaction:
    values: dict[str, Any] = {
        "station_id": f"CS-{n % 3}",
        "transaction_id": f"TX-{n:05d}",
        "version": V201,
        "started_at": f"2026-01-{1 + n // 1440:02d}T{n // 60 % 24:02d}:{n % 60:02d}:00Z",
        "id_token": "TAG-A" if n % 2 else "TAG-B",
        "state": TransactionState.ENDED if n % 5 == 0 else TransactionState.ACTIVE,
    }
    return Transaction(**(values | fields))


def rows(answer: httpx.Response) -> list[dict[str, str]]:
    assert answer.status_code == 200, answer.text
    reader = csv.reader(io.StringIO(answer.text, newline=""))
    header = next(reader)
    assert tuple(header) == CSV_COLUMNS
    return [dict(zip(header, row, strict=True)) for row in reader]


async def listing_ids(api: Api, **params: Any) -> list[str]:
    """Transaction ids of every page of the JSON listing, for the same filters."""
    ids: list[str] = []
    cursor = None
    while True:
        query = {"limit": MAX_PAGE_SIZE, **params} | ({"cursor": cursor} if cursor else {})
        page = (await api.client.get("/v1/transactions", params=query, headers=api.auth())).json()
        ids.extend(item["transaction_id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def test_every_page_is_streamed_newest_first_with_the_listings_filters(api: Api) -> None:
    count = 2 * MAX_PAGE_SIZE + 7  # three pages
    for n in range(count):
        await store(api, started(n))
    read = await api.key("read")
    async with api.client.stream("GET", "/v1/transactions.csv", headers=read) as answer:
        assert answer.headers["content-type"].startswith("text/csv")
        assert "content-length" not in answer.headers  # streamed, not built whole
        assert 'filename="transactions.csv"' in answer.headers["content-disposition"]
        chunks = [chunk async for chunk in answer.aiter_text()]
    text = "".join(chunks)
    everything = rows(httpx.Response(200, text=text))
    assert [row["transaction_id"] for row in everything] == [
        f"TX-{n:05d}" for n in reversed(range(count))
    ]
    assert text.count("\r\n") == count + 1 and "\n" not in text.replace("\r\n", "")
    for params in (
        {"station": "CS-1"},
        {"state": "Ended"},
        {"token": "TAG-A", "state": "Active"},
        {"started_after": "2026-01-01T10:00:00Z", "started_before": "2026-01-02T01:00:00Z"},
        {"station": "CS-2", "token": "TAG-B"},
    ):
        answer = await api.client.get("/v1/transactions.csv", params=params, headers=read)
        exported = [row["transaction_id"] for row in rows(answer)]
        assert exported == await listing_ids(api, **params), params
        assert exported, params


async def test_columns_hold_the_billing_facts_with_units(api: Api) -> None:
    await store(
        api,
        Transaction(
            station_id="CS1",
            transaction_id="42",
            version=V16,
            connector_id=2,
            id_token="TAG-1",
            group_id="FLEET",
            started_at="2026-01-15T12:00:00Z",
            ended_at="2026-01-15T13:00:00Z",
            state=TransactionState.ENDED,
            stop_reason="Local",
            meter_start_wh=1000.0,
            meter_stop_wh=13345.5,
            energy_wh=12345.5,
            cost=COST,
        ),
    )
    await store(api, started(1, station_id="CS2", started_at="2026-01-15T11:00:00Z"))
    [ended, running] = rows(await api.client.get("/v1/transactions.csv", headers=api.auth()))
    assert ended == {
        "station_id": "CS1",
        "transaction_id": "42",
        "version": V16,
        "evse_id": "",
        "connector_id": "2",
        "id_token": "TAG-1",
        "id_token_type": "",
        "group_id": "FLEET",
        "started_at": "2026-01-15T12:00:00Z",
        "ended_at": "2026-01-15T13:00:00Z",
        "state": "Ended",
        "stop_reason": "Local",
        "energy_wh": "12345.5",
        "meter_start_wh": "1000",
        "meter_stop_wh": "13345.5",
        "cost": "3.21",
        "currency": "EUR",
    }
    assert running["state"] == "Active" and running["ended_at"] == ""
    assert running["cost"] == "" and running["energy_wh"] == ""


async def test_station_text_is_quoted_and_never_a_formula(api: Api) -> None:
    hostile = {
        "=HYPERLINK(1)": "=1+1",
        "+SUM(A1)": "+cmd",
        "-2+3": "-x",
        "@A1": "@y",
        "\tTAB": "\rCR",
    }
    for n, (station_id, token) in enumerate(hostile.items()):
        await store(
            api,
            started(
                n,
                station_id=station_id,
                id_token=token,
                stop_reason='Other, "quoted"\nsecond line',
                started_at=f"2026-01-15T12:0{n}:00Z",
            ),
        )
    answer = await api.client.get("/v1/transactions.csv", headers=api.auth())
    exported = rows(answer)
    found = {row["station_id"]: row for row in exported}
    assert set(found) == {"'" + station_id for station_id in hostile}
    for station_id, token in hostile.items():
        row = found["'" + station_id]
        assert row["id_token"] == "'" + token
        assert row["stop_reason"] == 'Other, "quoted"\nsecond line'
    # RFC 4180: the field with a comma, quotes and a line break is quoted, quotes doubled.
    assert '"Other, ""quoted""\nsecond line"' in answer.text
    for line in answer.text.split("\r\n")[1:]:
        assert not line.startswith(("=", "+", "-", "@"))


async def test_errors_before_the_stream_are_the_usual_json(api: Api) -> None:
    unauthorized = await api.client.get("/v1/transactions.csv")
    assert_error(unauthorized, 401, "unauthorized")
    bad_time = await api.client.get(
        "/v1/transactions.csv", params={"started_after": "yesterday"}, headers=api.auth()
    )
    assert assert_error(bad_time, 400, "invalid_parameter")["details"]["field"] == "started_after"
    bad_state = await api.client.get(
        "/v1/transactions.csv", params={"state": "Paused"}, headers=api.auth()
    )
    assert assert_error(bad_state, 422, "invalid_request")["details"]["field"] == "state"
    empty = await api.client.get("/v1/transactions.csv", headers=api.auth())
    assert rows(empty) == [] and empty.text == ",".join(CSV_COLUMNS) + "\r\n"


async def test_the_detail_route_does_not_shadow_the_export(api: Api) -> None:
    await store(api, started(1, station_id="transactions.csv", transaction_id="x"))
    export = await api.client.get("/v1/transactions.csv", headers=api.auth())
    assert [row["station_id"] for row in rows(export)] == ["transactions.csv"]
    detail = await api.client.get("/v1/transactions/transactions.csv/x", headers=api.auth())
    assert detail.status_code == 200 and detail.json()["station_id"] == "transactions.csv"
    schema = (await api.client.get("/v1/openapi.json")).json()
    assert (
        "text/csv" in schema["paths"]["/v1/transactions.csv"]["get"]["responses"]["200"]["content"]
    )


class OutageAfterFirstPage(MemoryTransactionStore):
    """Answers the first page, then finds Redis gone (a unit-test stand-in for an outage)."""

    async def list_transactions(self, **kwargs: Any) -> Page[Transaction]:
        if kwargs.get("cursor") is not None:
            raise StoreUnavailable("redis://stores.invalid: connection refused")
        return await super().list_transactions(**kwargs)


async def test_an_outage_mid_stream_aborts_the_transfer(api: Api) -> None:
    outage = OutageAfterFirstPage()
    api.services.transactions = outage
    for n in range(MAX_PAGE_SIZE + 1):
        await store(api, started(n))
    with pytest.raises(httpx.RemoteProtocolError):
        await api.client.get("/v1/transactions.csv", headers=api.auth())
    # An outage before the first page is the usual 503.
    outage.list_transactions = _down  # type: ignore[method-assign]
    down = await api.client.get("/v1/transactions.csv", headers=api.auth())
    assert_error(down, 503, "store_unavailable")


async def _down(**_: Any) -> Page[Transaction]:
    raise StoreUnavailable("redis://stores.invalid: connection refused")
