"""The operator API over real HTTP: a uvicorn server on a free port in front of the embedded
composition (gateway + manager on the in-process bus, in-memory stores, a CallSender on its
own bus client), driven with httpx and real WebSocket stations."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from websockets.asyncio.client import ClientConnection, connect

from api import ApiServer, create_app
from api.actions import CSMS_ACTIONS
from csms.bus.memory import MemoryBroker
from csms.config import Settings
from csms.topics import Topics
from gateway import Gateway
from manager.worker import Manager
from ocpp_schemas import actions
from operations.calls import CallSender
from services import Services
from services.factory import open_services
from services.models import (
    BootInfo,
    ConnectorStatus,
    EnergyReading,
    RegistrationStatus,
    StationRecord,
    Transaction,
    TransactionChange,
    TransactionState,
)

ADMIN = "bootstrap-admin-key-for-tests"
V201, V16 = "ocpp2.0.1", "ocpp1.6"


@dataclass
class Api:
    client: httpx.AsyncClient
    services: Services
    gateway: Gateway
    url: str

    def auth(self, key: str = ADMIN) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def key(self, scope: str, name: str = "test") -> dict[str, str]:
        """Headers with a new stored key of ``scope``."""
        answer = await self.client.post(
            "/v1/api-keys", json={"name": name, "scope": scope}, headers=self.auth()
        )
        assert answer.status_code == 201, answer.text
        return self.auth(answer.json()["key"])


@contextlib.asynccontextmanager
async def embedded_api(**overrides: Any) -> AsyncIterator[Api]:
    values: dict[str, Any] = {
        "listen_port": 0,
        "call_timeout": 0.5,
        "call_queue_size": 1,
        "ping_interval": None,
        "ping_timeout": None,
        "api_admin_key": ADMIN,
    }
    values.update(overrides)
    settings = Settings(**values)
    broker = MemoryBroker()
    async with contextlib.AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(settings))
        manager_bus = await stack.enter_async_context(broker.client())
        gateway_bus = await stack.enter_async_context(broker.client())
        sender_bus = await stack.enter_async_context(broker.client())
        await stack.enter_async_context(
            Manager(settings, manager_bus, services, compile_schemas=False)
        )
        gateway = await stack.enter_async_context(
            Gateway(settings, gateway_bus, registry=services.stations, first_try=True)
        )
        sender = await stack.enter_async_context(CallSender(sender_bus, Topics(), origin="api"))
        app = create_app(settings, services, sender, bus=sender_bus)
        server = await stack.enter_async_context(ApiServer(app, "127.0.0.1", 0))
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=server.url, timeout=10))
        yield Api(client, services, gateway, server.url)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with embedded_api() as harness:
        yield harness


async def online(api: Api, station: str) -> None:
    """Wait until the gateway holds ``station`` and the registry has its version."""
    for _ in range(300):
        record = await api.services.stations.get(station)
        if station in api.gateway.connections and record is not None and record.online:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{station} never came online")


async def station_201(api: Api, station: str) -> ClientConnection:
    ws = await connect(api.gateway.url_for(station), subprotocols=[V201])  # type: ignore[list-item]
    await online(api, station)
    return ws


async def answer_next(ws: ClientConnection, reply: Callable[[str], Any]) -> list[Any]:
    call = json.loads(await asyncio.wait_for(ws.recv(), 5))
    await ws.send(json.dumps(reply(call[1])))
    return list(call)


def assert_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == code, body
    assert body["message"]
    return body


# --- auth ----------------------------------------------------------------------------------


async def test_health_is_public_and_everything_else_needs_a_key(api: Api) -> None:
    assert (await api.client.get("/v1/health")).json() == {"status": "ok"}
    ready = await api.client.get("/v1/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"bus": True, "store": True}}
    for method, path in [
        ("GET", "/v1/stations"),
        ("GET", "/v1/stations/CS1"),
        ("GET", "/v1/stats"),
        ("GET", "/v1/transactions"),
        ("GET", "/v1/tokens"),
        ("PUT", "/v1/tokens/T1"),
        ("GET", "/v1/api-keys"),
        ("POST", "/v1/stations/CS1/calls/Reset"),
    ]:
        answer = await api.client.request(method, path, json={})
        body = assert_error(answer, 401, "unauthorized")
        assert body["details"]["field"] == "Authorization"
        assert answer.headers["www-authenticate"] == "Bearer"


async def test_wrong_malformed_and_revoked_keys_are_401(api: Api) -> None:
    read = await api.key("read")
    assert (await api.client.get("/v1/stations", headers=read)).status_code == 200
    key = read["Authorization"].removeprefix("Bearer ")
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for bad in [wrong, "csms_0123456789abcdef_" + "x" * 43, "nonsense", ADMIN + "x"]:
        answer = await api.client.get("/v1/stations", headers=api.auth(bad))
        assert_error(answer, 401, "unauthorized")
    key_id = key.split("_")[1]
    revoked = await api.client.delete(f"/v1/api-keys/{key_id}", headers=api.auth())
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert_error(await api.client.get("/v1/stations", headers=read), 401, "unauthorized")


async def test_x_api_key_header_is_accepted(api: Api) -> None:
    read = await api.key("read")
    key = read["Authorization"].removeprefix("Bearer ")
    answer = await api.client.get("/v1/stations", headers={"X-API-Key": key})
    assert answer.status_code == 200
    assert (await api.client.get("/v1/stats", headers={"X-API-Key": ADMIN})).status_code == 200


async def test_scopes_are_enforced(api: Api) -> None:
    read, operate = await api.key("read"), await api.key("operate")
    answer = await api.client.post("/v1/stations/CS1/calls/Reset", json={}, headers=read)
    body = assert_error(answer, 403, "forbidden")
    assert body["details"] == {"scope": "read", "required": "operate"}
    assert_error(await api.client.put("/v1/tokens/T1", json={}, headers=read), 403, "forbidden")
    assert (await api.client.put("/v1/tokens/T1", json={}, headers=operate)).status_code == 200
    for headers in (read, operate):
        assert_error(await api.client.get("/v1/api-keys", headers=headers), 403, "forbidden")
        assert_error(
            await api.client.post("/v1/api-keys", json={"name": "x"}, headers=headers),
            403,
            "forbidden",
        )


async def test_api_keys_are_created_once_listed_without_secrets_and_revoked(api: Api) -> None:
    created = await api.client.post(
        "/v1/api-keys", json={"name": "dashboard", "scope": "operate"}, headers=api.auth()
    )
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith(f"csms_{body['key_id']}_") and body["scope"] == "operate"
    listed = await api.client.get("/v1/api-keys", headers=api.auth())
    (item,) = listed.json()["items"]
    assert item == {k: v for k, v in body.items() if k != "key"} | {"revoked_at": None}
    assert body["key"].split("_", 2)[2] not in listed.text
    shown = await api.client.get(f"/v1/api-keys/{body['key_id']}", headers=api.auth())
    assert shown.json()["name"] == "dashboard"
    assert_error(
        await api.client.delete("/v1/api-keys/0123456789abcdef", headers=api.auth()),
        404,
        "api_key_not_found",
    )
    bad = await api.client.post(
        "/v1/api-keys", json={"name": "x", "scope": "root"}, headers=api.auth()
    )
    assert assert_error(bad, 422, "invalid_request")["details"]["field"] == "scope"


# --- errors and validation -----------------------------------------------------------------


async def test_request_validation_uses_the_error_shape(api: Api) -> None:
    answer = await api.client.get("/v1/stations?limit=0", headers=api.auth())
    details = assert_error(answer, 422, "invalid_request")["details"]
    assert details["field"] == "limit" and details["in"] == "query"
    answer = await api.client.get("/v1/stations?online=maybe", headers=api.auth())
    assert assert_error(answer, 422, "invalid_request")["details"]["field"] == "online"
    answer = await api.client.get("/v1/transactions?started_after=yesterday", headers=api.auth())
    assert assert_error(answer, 400, "invalid_parameter")["details"]["field"] == "started_after"
    answer = await api.client.put("/v1/tokens/T1", json={"status": "Maybe"}, headers=api.auth())
    assert assert_error(answer, 422, "invalid_request")["details"]["field"] == "status"
    assert_error(await api.client.get("/v1/nothing-here", headers=api.auth()), 404, "not_found")
    assert_error(
        await api.client.delete("/v1/stats", headers=api.auth()), 405, "method_not_allowed"
    )


@pytest.mark.parametrize("path", ["/v1/stations", "/v1/transactions", "/v1/tokens", "/v1/api-keys"])
async def test_bad_cursors_are_400(api: Api, path: str) -> None:
    answer = await api.client.get(f"{path}?cursor=bm90LWEtY3Vyc29y", headers=api.auth())
    body = assert_error(answer, 400, "invalid_cursor")
    assert body["details"]["field"] == "cursor"


async def test_openapi_and_docs_are_served(api: Api) -> None:
    document = (await api.client.get("/v1/openapi.json")).json()
    assert document["info"]["title"] == "OCPP CSMS operator API"
    assert "/v1/stations/{station_id}/calls/{action}" in document["paths"]
    schemes = document["components"]["securitySchemes"]
    assert {"bearer", "apiKey"} <= set(schemes)
    docs = await api.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# --- resources -----------------------------------------------------------------------------


async def collect(api: Api, path: str, limit: int = 2, **params: Any) -> list[dict[str, Any]]:
    """Every item of a listing, following cursors; asserts pages hold at most ``limit``."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = {"limit": limit, **params} | ({"cursor": cursor} if cursor else {})
        answer = await api.client.get(path, params=query, headers=api.auth())
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("listing never ended")


async def test_stations_list_filter_paginate_and_hide_credentials(api: Api) -> None:
    for n in range(5):
        await api.services.stations.put(
            StationRecord(
                station_id=f"ST-{n}",
                registration=RegistrationStatus.ACCEPTED if n % 2 else RegistrationStatus.PENDING,
                password_hash="scrypt$secret-hash-value" if n == 1 else None,
                ocpp_version=V201,
                boot=BootInfo(vendor="ACME", model="W1"),
            )
        )
    await api.services.stations.put(StationRecord(station_id="OTHER"))
    items = await collect(api, "/v1/stations", prefix="ST-")
    assert [item["station_id"] for item in items] == [f"ST-{n}" for n in range(5)]
    assert items[1]["has_password"] is True and items[0]["has_password"] is False
    assert items[0]["boot"]["vendor"] == "ACME"
    listed = await api.client.get("/v1/stations", headers=api.auth())
    assert "scrypt" not in listed.text and "password_hash" not in listed.text
    accepted = await collect(api, "/v1/stations", registration="Accepted")
    assert [item["station_id"] for item in accepted] == ["ST-1", "ST-3"]
    assert await collect(api, "/v1/stations", online="true") == []
    stats = (await api.client.get("/v1/stats", headers=api.auth())).json()
    assert stats["stations"]["total"] == 6 and stats["stations"]["online"] == 0


async def test_station_detail_has_connectors_and_active_transactions(api: Api) -> None:
    await api.services.stations.put(StationRecord(station_id="DET/1", ocpp_version=V201))
    await api.services.stations.set_connector_status(
        "DET/1",
        ConnectorStatus(evse_id=1, connector_id=1, status="Occupied", at="2026-01-15T12:00:00Z"),
    )
    await api.services.transactions.update(
        "DET/1",
        "tx-1",
        lambda _: Transaction(
            station_id="DET/1",
            transaction_id="tx-1",
            version=V201,
            started_at="2026-01-15T12:00:00Z",
            id_token="TOKEN-1",
        ),
    )
    answer = await api.client.get("/v1/stations/DET%2F1", headers=api.auth())
    assert answer.status_code == 200, answer.text
    detail = answer.json()
    assert detail["station_id"] == "DET/1"
    assert detail["connectors"][0]["status"] == "Occupied"
    assert [tx["transaction_id"] for tx in detail["active_transactions"]] == ["tx-1"]
    missing = await api.client.get("/v1/stations/NOPE", headers=api.auth())
    assert assert_error(missing, 404, "station_not_found")["details"]["field"] == "station_id"


async def test_transactions_list_filter_paginate_and_detail(api: Api) -> None:
    for n in range(5):
        station = "TX-A" if n < 3 else "TX-B"

        def make(_: Transaction | None, n: int = n, station: str = station) -> Transaction:
            return Transaction(
                station_id=station,
                transaction_id=str(n),
                version=V16,
                started_at=f"2026-01-15T12:0{n}:00Z",
                id_token="TAG" if n % 2 else "OTHER",
                state=TransactionState.ENDED if n == 0 else TransactionState.ACTIVE,
                energy_wh=1000.0 * n,
            )

        await api.services.transactions.update(station, str(n), make)
    everything = await collect(api, "/v1/transactions")
    assert [tx["transaction_id"] for tx in everything] == ["4", "3", "2", "1", "0"]
    by_station = await collect(api, "/v1/transactions", station="TX-A")
    assert [tx["transaction_id"] for tx in by_station] == ["2", "1", "0"]
    assert [t["transaction_id"] for t in await collect(api, "/v1/transactions", token="TAG")] == [
        "3",
        "1",
    ]
    ended = await collect(api, "/v1/transactions", state="Ended")
    assert [tx["transaction_id"] for tx in ended] == ["0"]
    window = await collect(
        api,
        "/v1/transactions",
        started_after="2026-01-15T12:01:00Z",
        started_before="2026-01-15T12:03:00Z",
    )
    assert [tx["transaction_id"] for tx in window] == ["2", "1"]
    detail = await api.client.get("/v1/transactions/TX-B/4", headers=api.auth())
    assert detail.status_code == 200 and detail.json()["energy_wh"] == 4000.0
    assert detail.json()["readings"] == []
    missing = await api.client.get("/v1/transactions/TX-B/99", headers=api.auth())
    assert_error(missing, 404, "transaction_not_found")


async def test_tokens_put_list_paginate_delete(api: Api) -> None:
    operate = await api.key("operate")
    for n in range(5):
        answer = await api.client.put(
            f"/v1/tokens/TOK-{n}",
            json={"status": "Blocked" if n == 2 else "Accepted", "group_id": "G1"},
            headers=operate,
        )
        assert answer.status_code == 200 and answer.json()["id_token"] == f"TOK-{n}"
    items = await collect(api, "/v1/tokens", prefix="TOK-")
    assert [item["id_token"] for item in items] == [f"TOK-{n}" for n in range(5)]
    assert items[2]["status"] == "Blocked" and items[0]["group_id"] == "G1"
    deleted = await api.client.delete("/v1/tokens/TOK-2", headers=operate)
    assert deleted.status_code == 204
    assert_error(
        await api.client.delete("/v1/tokens/TOK-2", headers=operate), 404, "token_not_found"
    )
    assert len(await collect(api, "/v1/tokens")) == 4
    expiry = await api.client.put("/v1/tokens/X", json={"expiry": "soon"}, headers=operate)
    assert assert_error(expiry, 422, "invalid_request")["details"]["field"] == "expiry"


async def test_api_keys_paginate(api: Api) -> None:
    for n in range(5):
        await api.key("read", name=f"k{n}")
    items = await collect(api, "/v1/api-keys")
    assert sorted(item["name"] for item in items) == [f"k{n}" for n in range(5)]


# --- calls ---------------------------------------------------------------------------------


def test_every_csms_action_has_schemas() -> None:
    for version, names in CSMS_ACTIONS.items():
        assert names <= actions(version), sorted(names - actions(version))


async def test_reset_through_the_api_returns_the_stations_answer(api: Api) -> None:
    ws = await station_201(api, "CALL-1")
    try:
        operate = await api.key("operate")
        sending = asyncio.create_task(
            api.client.post(
                "/v1/stations/CALL-1/calls/Reset", json={"type": "Immediate"}, headers=operate
            )
        )
        call = await answer_next(ws, lambda mid: [3, mid, {"status": "Accepted"}])
        answer = await sending
        assert call[2:] == ["Reset", {"type": "Immediate"}]
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["outcome"] == "result" and body["payload"] == {"status": "Accepted"}
        assert body["message_id"] == call[1] and body["version"] == V201

        sending = asyncio.create_task(
            api.client.post(
                "/v1/stations/CALL-1/calls/Reset", json={"type": "OnIdle"}, headers=operate
            )
        )
        await answer_next(ws, lambda mid: [4, mid, "NotSupported", "not here", {}])
        body = (await sending).json()
        assert body["outcome"] == "error" and body["error_code"] == "NotSupported"

        # A station that stays silent: the gateway's timeout, 504 with the outcome.
        sending = asyncio.create_task(
            api.client.post("/v1/stations/CALL-1/calls/ClearCache", json={}, headers=operate)
        )
        json.loads(await asyncio.wait_for(ws.recv(), 5))
        timed_out = await sending
        assert timed_out.status_code == 504 and timed_out.json()["outcome"] == "timeout"
    finally:
        await ws.close()


async def test_caller_deadline_is_504_no_outcome(api: Api) -> None:
    ws = await station_201(api, "CALL-D")
    try:
        answer = await api.client.post(
            "/v1/stations/CALL-D/calls/Reset?timeout=0.1",
            json={"type": "Immediate"},
            headers=api.auth(),
        )
        assert answer.status_code == 504 and answer.json()["outcome"] == "no_outcome"
        too_long = await api.client.post(
            "/v1/stations/CALL-D/calls/Reset?timeout=100000",
            json={"type": "Immediate"},
            headers=api.auth(),
        )
        assert assert_error(too_long, 422, "invalid_request")["details"]["field"] == "timeout"
    finally:
        await ws.close()


@pytest.mark.parametrize(
    ("payload", "field", "rule"),
    [({"type": "Sometime"}, "type", "enum"), ({}, "type", "required")],
)
async def test_invalid_payload_is_422_naming_the_field_and_nothing_is_sent(
    api: Api, payload: dict[str, Any], field: str, rule: str
) -> None:
    ws = await station_201(api, "CALL-V")
    try:
        answer = await api.client.post(
            "/v1/stations/CALL-V/calls/Reset", json=payload, headers=api.auth()
        )
        details = assert_error(answer, 422, "invalid_payload")["details"]
        assert details == {"field": field, "in": "body", "rule": rule}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)  # nothing reached the station
    finally:
        await ws.close()


async def test_station_initiated_unknown_and_non_object_calls_are_refused(api: Api) -> None:
    await api.services.stations.put(StationRecord(station_id="CALL-X", ocpp_version=V201))
    boot = await api.client.post(
        "/v1/stations/CALL-X/calls/BootNotification", json={}, headers=api.auth()
    )
    assert assert_error(boot, 422, "not_a_csms_action")["details"]["field"] == "action"
    unknown = await api.client.post(
        "/v1/stations/CALL-X/calls/Teleport", json={}, headers=api.auth()
    )
    assert_error(unknown, 404, "unknown_action")
    # 1.6 names are not 2.0.1 actions.
    v16_name = await api.client.post(
        "/v1/stations/CALL-X/calls/RemoteStartTransaction", json={}, headers=api.auth()
    )
    assert_error(v16_name, 404, "unknown_action")
    not_object = await api.client.post(
        "/v1/stations/CALL-X/calls/Reset", json=[1, 2], headers=api.auth()
    )
    assert_error(not_object, 422, "invalid_request")


async def test_offline_and_unknown_stations(api: Api) -> None:
    await api.services.stations.put(StationRecord(station_id="GONE", ocpp_version=V201))
    offline = await api.client.post(
        "/v1/stations/GONE/calls/Reset", json={"type": "Immediate"}, headers=api.auth()
    )
    assert assert_error(offline, 409, "station_offline")["details"]["field"] == "station_id"
    await api.services.stations.put(StationRecord(station_id="NEVER"))
    never = await api.client.post(
        "/v1/stations/NEVER/calls/Reset", json={"type": "Immediate"}, headers=api.auth()
    )
    assert_error(never, 409, "station_offline")
    unknown = await api.client.post(
        "/v1/stations/NOBODY/calls/Reset", json={"type": "Immediate"}, headers=api.auth()
    )
    assert_error(unknown, 404, "station_not_found")


async def test_full_queue_is_409_undelivered() -> None:
    async with embedded_api(call_timeout=5.0) as api:
        ws = await station_201(api, "CALL-Q")
        try:
            sends = [
                asyncio.create_task(
                    api.client.post(
                        "/v1/stations/CALL-Q/calls/Reset",
                        json={"type": "Immediate"},
                        headers=api.auth(),
                    )
                )
                for _ in range(3)
            ]
            done, _ = await asyncio.wait(sends, return_when=asyncio.FIRST_COMPLETED, timeout=5)
            (first,) = done
            body = assert_error(first.result(), 409, "call_undelivered")
            assert body["details"]["reason"] == "call queue full"
        finally:
            await ws.close()
        await asyncio.gather(*sends)


class Station16(ChargePoint16):
    @on("ChangeConfiguration")
    async def on_change_configuration(
        self, key: str, value: str, **_: Any
    ) -> result16.ChangeConfiguration:
        return result16.ChangeConfiguration(
            status="Accepted" if key == "HeartbeatInterval" else "NotSupported"
        )


async def test_16_station_answers_change_configuration_through_the_api(api: Api) -> None:
    ws = await connect(api.gateway.url_for("CP16"), subprotocols=[V16])  # type: ignore[list-item]
    station = Station16("CP16", ws, response_timeout=5)
    task = asyncio.create_task(station.start())
    try:
        await online(api, "CP16")
        operate = await api.key("operate")
        answer = await api.client.post(
            "/v1/stations/CP16/calls/ChangeConfiguration",
            json={"key": "HeartbeatInterval", "value": "60"},
            headers=operate,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["payload"] == {"status": "Accepted"}
        assert answer.json()["version"] == V16
        # A 2.0.1 action is not a 1.6 one.
        wrong = await api.client.post(
            "/v1/stations/CP16/calls/SetVariables", json={}, headers=operate
        )
        assert_error(wrong, 404, "unknown_action")
        invalid = await api.client.post(
            "/v1/stations/CP16/calls/ChangeConfiguration", json={"key": "x"}, headers=operate
        )
        assert assert_error(invalid, 422, "invalid_payload")["details"]["field"] == "value"
    finally:
        task.cancel()
        await ws.close()


async def test_metrics_count_requests_and_call_outcomes(api: Api) -> None:
    await api.services.stations.put(StationRecord(station_id="MET", ocpp_version=V201))
    await api.client.post(
        "/v1/stations/MET/calls/Reset", json={"type": "Immediate"}, headers=api.auth()
    )
    assert_error(await api.client.get("/v1/metrics"), 401, "unauthorized")
    read = await api.key("read")
    answer = await api.client.get("/v1/metrics", headers=read)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert 'csms_api_calls_total{action="Reset",outcome="offline",version="ocpp2.0.1"} 1.0' in text
    assert (
        'csms_api_requests_total{method="POST",route="/v1/stations/{station_id}/calls/'
        '{action}",status="409"} 1.0'
    ) in text
    assert 'csms_api_requests_total{method="GET",route="/v1/metrics",status="401"} 1.0' in text


async def test_rejected_stations_take_no_calls(api: Api) -> None:
    await api.services.stations.put(
        StationRecord(
            station_id="REJ",
            ocpp_version=V201,
            registration=RegistrationStatus.REJECTED,
            online=True,
        )
    )
    answer = await api.client.post(
        "/v1/stations/REJ/calls/Reset", json={"type": "Immediate"}, headers=api.auth()
    )
    assert assert_error(answer, 403, "station_rejected")["details"]["registration"] == "Rejected"


async def test_bodies_over_one_frame_are_413(api: Api) -> None:
    big = {"type": "Immediate", "pad": "x" * 70_000}  # over max_frame_bytes (64 KiB)
    announced = await api.client.post("/v1/stations/X/calls/Reset", json=big, headers=api.auth())
    assert assert_error(announced, 413, "payload_too_large")["details"] == {"limit": 65_536}

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"status": "Accepted", "group_id": "'
        for _ in range(10):
            yield b"y" * 10_000
        yield b'"}'

    streamed = await api.client.put(
        "/v1/tokens/BIG",
        content=chunks(),
        headers={**api.auth(), "Content-Type": "application/json"},
    )
    assert_error(streamed, 413, "payload_too_large")
    listed = await api.client.get("/v1/tokens", headers=api.auth())
    assert listed.json()["items"] == []


async def test_transaction_detail_has_its_readings_and_energy(api: Api) -> None:
    readings = (
        EnergyReading(at="2026-01-15T12:00:00Z", wh=1000.0),
        EnergyReading(at="2026-01-15T12:10:00Z", wh=3500.0, context="Sample.Periodic"),
    )
    await api.services.transactions.update(
        "RD-1",
        "7",
        lambda _: TransactionChange(
            Transaction(
                station_id="RD-1",
                transaction_id="7",
                version=V16,
                started_at="2026-01-15T12:00:00Z",
                meter_start_wh=1000.0,
            ),
            readings,
        ),
    )
    answer = await api.client.get("/v1/transactions/RD-1/7", headers=api.auth())
    assert answer.status_code == 200, answer.text
    detail = answer.json()
    assert detail["readings"] == [
        {"at": "2026-01-15T12:00:00Z", "wh": 1000.0, "context": None},
        {"at": "2026-01-15T12:10:00Z", "wh": 3500.0, "context": "Sample.Periodic"},
    ]
    assert detail["energy_wh"] == 2500.0
    listed = await api.client.get("/v1/transactions?station=RD-1", headers=api.auth())
    assert "readings" not in listed.json()["items"][0]
