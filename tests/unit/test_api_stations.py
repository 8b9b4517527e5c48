"""Stations registered, changed and deleted: the rules of :mod:`operations.stations` on an
in-memory registry, and ``POST / PATCH / DELETE /v1/stations`` over real HTTP, with real
WebSocket stations admitted (or refused) by a gateway that is not in first-try mode."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from api import ApiServer, create_app
from csms.bus.memory import MemoryBroker
from csms.config import Settings
from csms.credentials import password_from_authorization_key, verify_password
from csms.topics import Topics
from gateway import Gateway
from manager.worker import Manager
from operations import stations as ops
from operations.calls import CallSender
from operations.stations import Refusal, StationChange, StationRefused
from services.action_rules import ActionList, ActionRules
from services.factory import open_services
from services.memory import MemoryStationRegistry
from services.models import (
    RegistrationStatus,
    StationCounts,
    StationRecord,
    Transaction,
)
from services.station_reports import Append, HistoryKind, ReportChange
from services.station_state import ConfigurationEntry
from tests.unit.test_api import ADMIN, V16, V201, Api, assert_error, online

GOOD = "Good-password-0123"  # suits 1.6 (18 octets) and 2.0.1 (allowed characters)
T0 = "2026-01-15T12:00:00Z"


# --- the operation, on an in-memory registry -------------------------------------------------


async def test_register_accepts_a_new_station_and_stores_only_a_hash() -> None:
    registry = MemoryStationRegistry()
    saved = await ops.register(registry, "CS1", StationChange(security_profile=1, password=GOOD))
    assert saved.registered and saved.password_changed and saved.generated_password is None
    assert saved.password_versions == (V16, V201)  # no versions given: it must suit both
    record = await registry.get("CS1")
    assert record is not None and record == saved.record
    assert record.known and record.registration is RegistrationStatus.ACCEPTED
    assert record.security_profile == 1 and verify_password(GOOD, record.password_hash or "")
    assert GOOD not in repr(saved) and GOOD not in repr(StationChange(password=GOOD))


async def test_a_generated_password_suits_the_stations_versions() -> None:
    registry = MemoryStationRegistry()
    both = await ops.register(
        registry, "CS1", StationChange(security_profile=2, generate_password=True)
    )
    assert both.generated_password is not None and len(both.generated_password) == 20
    password_from_authorization_key(both.generated_password.encode().hex())  # a 1.6 key
    only_201 = await ops.register(
        registry,
        "CS2",
        StationChange(security_profile=1, generate_password=True, allowed_versions=[V201]),
    )
    assert only_201.password_versions == (V201,)
    assert only_201.generated_password is not None and len(only_201.generated_password) == 24
    record = await registry.get("CS2")
    assert record is not None and record.allowed_versions == [V201]
    assert verify_password(only_201.generated_password, record.password_hash or "")


async def test_register_refuses_a_registered_station_unless_asked_to_change_it() -> None:
    registry = MemoryStationRegistry()
    await ops.register(registry, "CS1", StationChange(registration=RegistrationStatus.REJECTED))
    with pytest.raises(ops.StationExists):
        await ops.register(registry, "CS1", StationChange())
    saved = await ops.register(
        registry, "CS1", StationChange(allowed_versions=[V16]), exist_ok=True
    )
    assert not saved.registered
    assert saved.record.registration is RegistrationStatus.REJECTED  # kept
    assert saved.record.allowed_versions == [V16]


async def test_a_station_only_seen_at_boot_can_be_registered() -> None:
    registry = MemoryStationRegistry()
    await registry.set_registration("CS1", RegistrationStatus.PENDING)  # admitted by policy
    saved = await ops.register(registry, "CS1", StationChange())
    assert saved.registered and saved.record.known
    assert saved.record.registration is RegistrationStatus.ACCEPTED


@pytest.mark.parametrize(
    ("record", "change", "refusal", "version"),
    [
        (None, StationChange(security_profile=1, password="short"), Refusal.PASSWORD_UNUSABLE, V16),
        (
            None,
            StationChange(
                security_profile=1, password="No spaces allowed here", allowed_versions=[V201]
            ),
            Refusal.PASSWORD_UNUSABLE,
            V201,
        ),
        (None, StationChange(password=GOOD), Refusal.PASSWORD_WITHOUT_BASIC_AUTH, None),
        (
            None,
            StationChange(security_profile=3, password=GOOD),
            Refusal.PASSWORD_WITH_CERTIFICATE,
            None,
        ),
        (None, StationChange(security_profile=2), Refusal.PASSWORD_REQUIRED, None),
        (
            StationRecord(station_id="CS1", security_profile=1, password_hash=None),
            StationChange(registration=RegistrationStatus.ACCEPTED),
            Refusal.PASSWORD_REQUIRED,
            None,
        ),
        (
            None,
            StationChange(security_profile=1, password=GOOD, generate_password=True),
            Refusal.TWO_PASSWORDS,
            None,
        ),
    ],
)
async def test_refused_changes_write_nothing(
    record: StationRecord | None, change: StationChange, refusal: Refusal, version: str | None
) -> None:
    registry = MemoryStationRegistry()
    if record is not None:
        await registry.put(record)
    with pytest.raises(StationRefused) as refused:
        await ops.register(registry, "CS1", change, exist_ok=True)
    assert refused.value.refusal is refusal and refused.value.version == version
    assert refused.value.field == "password"
    assert GOOD not in str(refused.value)
    assert await registry.get("CS1") == record


async def test_update_changes_only_what_is_given() -> None:
    registry = MemoryStationRegistry()
    with pytest.raises(ops.StationNotFound):
        await ops.update(registry, "CS1", StationChange(security_profile=0))
    await ops.register(
        registry,
        "CS1",
        StationChange(
            registration=RegistrationStatus.PENDING,
            security_profile=1,
            password=GOOD,
            certificate_identity="cs1.example",
        ),
    )
    saved = await ops.update(registry, "CS1", StationChange(allowed_versions=[V201]))
    record = saved.record
    assert record.registration is RegistrationStatus.PENDING and record.security_profile == 1
    assert record.certificate_identity == "cs1.example" and record.password_hash is not None
    assert not saved.password_changed and record.allowed_versions == [V201]
    # Removing the password of a Basic auth station is refused; with profile 0 it is not.
    with pytest.raises(StationRefused) as refused:
        await ops.update(registry, "CS1", StationChange(password=None))
    assert refused.value.refusal is Refusal.PASSWORD_REQUIRED
    saved = await ops.update(
        registry,
        "CS1",
        StationChange(security_profile=0, password=None, certificate_identity=None),
    )
    assert saved.record.password_hash is None and saved.record.certificate_identity is None
    assert saved.record.security_profile == 0


async def test_an_update_of_a_station_only_seen_at_boot_keeps_it_unregistered() -> None:
    registry = MemoryStationRegistry()
    await registry.set_registration("CS1", RegistrationStatus.PENDING)
    saved = await ops.update(registry, "CS1", StationChange(allowed_versions=[V16]))
    assert not saved.registered and not saved.record.known
    assert saved.record.registration is RegistrationStatus.PENDING


async def test_delete_refuses_an_online_station_unless_forced() -> None:
    registry = MemoryStationRegistry()
    with pytest.raises(ops.StationNotFound):
        await ops.delete(registry, "CS1")
    await ops.register(registry, "CS1", StationChange())
    await registry.mark_connected("CS1", V201, "gw", "c1", T0)
    with pytest.raises(ops.StationOnline) as online_error:
        await ops.delete(registry, "CS1")
    assert online_error.value.record.gateway == "gw"
    assert await registry.get("CS1") is not None
    deleted = await ops.delete(registry, "CS1", force=True)
    assert deleted.online and await registry.get("CS1") is None
    assert await registry.station_counts() == StationCounts()


# --- the API -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def secured_api(**overrides: Any) -> AsyncIterator[Api]:
    """The API in front of a gateway that admits registered stations only (not first-try:
    profile 1 on a plain listener, unknown stations refused)."""
    values: dict[str, Any] = {
        "listen_port": 0,
        "call_timeout": 0.5,
        "ping_interval": None,
        "ping_timeout": None,
        "api_admin_key": ADMIN,
        "unknown_stations": "reject",
    }
    settings = Settings(**(values | overrides))
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
            Gateway(settings, gateway_bus, registry=services.stations, first_try=False)
        )
        sender = await stack.enter_async_context(CallSender(sender_bus, Topics(), origin="api"))
        app = create_app(settings, services, sender, bus=sender_bus)
        server = await stack.enter_async_context(ApiServer(app, "127.0.0.1", 0))
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=server.url, timeout=10))
        yield Api(client, services, gateway, server.url)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with secured_api() as harness:
        yield harness


def basic(station_id: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{station_id}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def call(ws: ClientConnection, message_id: str, action: str, payload: Any) -> list[Any]:
    await ws.send(json.dumps([2, message_id, action, payload]))
    while True:
        frame = json.loads(await ws.recv())
        if frame[1] == message_id:
            return list(frame)


async def test_writes_need_admin_scope(api: Api) -> None:
    operate, read = await api.key("operate"), await api.key("read")
    body = {"station_id": "CS1"}
    for headers in (operate, read):
        assert_error(
            await api.client.post("/v1/stations", json=body, headers=headers), 403, "forbidden"
        )
        patched = await api.client.patch("/v1/stations/CS1", json={}, headers=headers)
        assert_error(patched, 403, "forbidden")
        assert_error(await api.client.delete("/v1/stations/CS1", headers=headers), 403, "forbidden")
    assert await api.services.stations.get("CS1") is None
    created = await api.client.post("/v1/stations", json=body, headers=api.auth())
    assert created.status_code == 201, created.text
    assert (await api.client.get("/v1/stations/CS1", headers=read)).status_code == 200


async def test_post_registers_and_returns_a_generated_password_once(api: Api) -> None:
    answer = await api.client.post(
        "/v1/stations",
        json={
            "station_id": "CS/1",
            "security_profile": 1,
            "generate_password": True,
            "allowed_versions": [V16],
            "registration": "Pending",
        },
        headers=api.auth(),
    )
    assert answer.status_code == 201, answer.text
    created = answer.json()
    password = created["generated_password"]
    assert created["station_id"] == "CS/1" and created["registration"] == "Pending"
    assert created["has_password"] is True and created["allowed_versions"] == [V16]
    assert created["known"] is True and created["security_profile"] == 1
    assert "scrypt" not in answer.text and "password_hash" not in answer.text
    record = await api.services.stations.get("CS/1")
    assert record is not None and verify_password(password, record.password_hash or "")
    shown = await api.client.get("/v1/stations/CS%2F1", headers=api.auth())
    assert "generated_password" not in shown.json() and password not in shown.text
    again = await api.client.post("/v1/stations", json={"station_id": "CS/1"}, headers=api.auth())
    assert assert_error(again, 409, "station_exists")["details"]["field"] == "station_id"
    plain = await api.client.post("/v1/stations", json={"station_id": "CS2"}, headers=api.auth())
    assert plain.status_code == 201 and plain.json()["generated_password"] is None
    assert plain.json()["registration"] == "Accepted" and plain.json()["has_password"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"station_id": ""}, "station_id"),
        ({"station_id": "x" * 49}, "station_id"),
        ({"station_id": "CS\n1"}, "station_id"),
        ({"station_id": "CS1", "security_profile": 4}, "security_profile"),
        ({"station_id": "CS1", "allowed_versions": ["ocpp2.1.7"]}, "allowed_versions.0"),
        ({"station_id": "CS1", "registration": "Maybe"}, "registration"),
        ({"station_id": "CS1", "password_hash": "scrypt$x"}, "password_hash"),
        ({}, "station_id"),
    ],
)
async def test_post_validation_names_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    answer = await api.client.post("/v1/stations", json=body, headers=api.auth())
    assert assert_error(answer, 422, "invalid_request")["details"]["field"] == field
    assert await api.services.stations.station_counts() == StationCounts()


async def test_credential_rules_are_422_with_their_code_and_no_password(api: Api) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"security_profile": 1, "password": "Too-short-1"}, "password_unusable"),
        ({"password": GOOD}, "password_without_basic_auth"),
        ({"security_profile": 3, "password": GOOD}, "password_with_certificate"),
        ({"security_profile": 2}, "password_required"),
        (
            {"security_profile": 1, "password": GOOD, "generate_password": True},
            "two_passwords",
        ),
    ]
    for fields, code in cases:
        answer = await api.client.post(
            "/v1/stations", json={"station_id": "CS1", **fields}, headers=api.auth()
        )
        details = assert_error(answer, 422, code)["details"]
        assert details["field"] == "password" and details["in"] == "body"
        assert GOOD not in answer.text and "Too-short-1" not in answer.text
    unusable = await api.client.post(
        "/v1/stations",
        json={"station_id": "CS1", "security_profile": 1, "password": "Too-short-1"},
        headers=api.auth(),
    )
    assert unusable.json()["details"]["version"] == V16
    assert "allowed_versions" in unusable.json()["message"]
    assert await api.services.stations.get("CS1") is None


async def test_patch_changes_the_given_fields(api: Api) -> None:
    missing = await api.client.patch("/v1/stations/NOPE", json={}, headers=api.auth())
    assert_error(missing, 404, "station_not_found")
    await api.client.post(
        "/v1/stations",
        json={"station_id": "CS1", "security_profile": 1, "password": GOOD},
        headers=api.auth(),
    )
    before = await api.services.stations.get("CS1")
    assert before is not None
    changed = await api.client.patch(
        "/v1/stations/CS1",
        json={"registration": "Rejected", "certificate_identity": "cs1.example"},
        headers=api.auth(),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["registration"] == "Rejected"
    assert changed.json()["certificate_identity"] == "cs1.example"
    after = await api.services.stations.get("CS1")
    assert after is not None and after.password_hash == before.password_hash
    refused = await api.client.patch(
        "/v1/stations/CS1", json={"password": None}, headers=api.auth()
    )
    assert_error(refused, 422, "password_required")
    rotated = await api.client.patch(
        "/v1/stations/CS1", json={"generate_password": True}, headers=api.auth()
    )
    password = rotated.json()["generated_password"]
    after = await api.services.stations.get("CS1")
    assert after is not None and verify_password(password, after.password_hash or "")
    removed = await api.client.patch(
        "/v1/stations/CS1",
        json={
            "security_profile": 0,
            "password": None,
            "certificate_identity": None,
            "allowed_versions": [],
        },
        headers=api.auth(),
    )
    assert removed.status_code == 200, removed.text
    body = removed.json()
    assert body["has_password"] is False and body["certificate_identity"] is None
    assert body["allowed_versions"] == [] and body["registration"] == "Rejected"
    unknown_field = await api.client.patch(
        "/v1/stations/CS1", json={"station_id": "CS2"}, headers=api.auth()
    )
    assert assert_error(unknown_field, 422, "invalid_request")["details"]["field"] == "station_id"


async def test_delete_forgets_the_station_but_keeps_its_transactions(api: Api) -> None:
    assert_error(
        await api.client.delete("/v1/stations/NOPE", headers=api.auth()), 404, "station_not_found"
    )
    for station_id in ("CS1", "CS2"):
        await api.client.post("/v1/stations", json={"station_id": station_id}, headers=api.auth())
    await api.services.transactions.update(
        "CS1",
        "TX-1",
        lambda _: Transaction(station_id="CS1", transaction_id="TX-1", version=V201, started_at=T0),
    )
    entry = ConfigurationEntry(
        key="HeartbeatInterval", readonly=False, value="60", source="get", updated_at=T0
    )
    await api.services.station_state.update_configuration("CS1", [entry])
    firmware = Append(HistoryKind.FIRMWARE, {"status": "Installed"})
    await api.services.station_reports.apply("CS1", ReportChange(appends=[firmware]))
    await api.services.action_rules.put(
        "CS1", ActionRules(station_calls=ActionList(deny=frozenset({"DataTransfer"})))
    )
    deleted = await api.client.delete("/v1/stations/CS1", headers=api.auth())
    assert deleted.status_code == 204 and deleted.content == b""
    assert await api.services.station_state.configuration("CS1") == []
    assert await api.services.action_rules.get("CS1") == ActionRules()
    assert await api.services.station_reports.history("CS1", HistoryKind.FIRMWARE) == []
    assert_error(
        await api.client.get("/v1/stations/CS1", headers=api.auth()), 404, "station_not_found"
    )
    listed = (await api.client.get("/v1/stations", headers=api.auth())).json()
    assert [item["station_id"] for item in listed["items"]] == ["CS2"]
    stats = (await api.client.get("/v1/stats", headers=api.auth())).json()["stations"]
    assert stats["total"] == 1 and stats["accepted"] == 1
    kept = (await api.client.get("/v1/transactions?station=CS1", headers=api.auth())).json()
    assert [tx["transaction_id"] for tx in kept["items"]] == ["TX-1"]
    assert_error(
        await api.client.delete("/v1/stations/CS1", headers=api.auth()), 404, "station_not_found"
    )


async def test_an_online_station_is_deleted_only_when_forced_and_refused_afterwards(
    api: Api,
) -> None:
    created = await api.client.post(
        "/v1/stations",
        json={"station_id": "LIVE", "security_profile": 1, "generate_password": True},
        headers=api.auth(),
    )
    password = created.json()["generated_password"]
    ws = await connect(
        api.gateway.url_for("LIVE"),
        subprotocols=[V201],  # type: ignore[list-item]
        additional_headers=basic("LIVE", password),
    )
    try:
        await online(api, "LIVE")
        boot = {"chargingStation": {"model": "W", "vendorName": "V"}, "reason": "PowerUp"}
        assert (await call(ws, "b1", "BootNotification", boot))[2]["status"] == "Accepted"
        refused = await api.client.delete("/v1/stations/LIVE", headers=api.auth())
        body = assert_error(refused, 409, "station_online")
        assert body["details"]["gateway"] is not None and "force=true" in body["message"]
        assert await api.services.stations.get("LIVE") is not None
        forced = await api.client.delete("/v1/stations/LIVE?force=true", headers=api.auth())
        assert forced.status_code == 204
        assert await api.services.stations.get("LIVE") is None
        # The socket stays open until it ends; meanwhile the station is an unknown one, whose
        # Calls the policy (unknown_stations = reject) refuses.
        answer = await call(ws, "h1", "Heartbeat", {})
        assert answer[0] == 4 and answer[2] == "SecurityError"
        listed = (await api.client.get("/v1/stations", headers=api.auth())).json()
        assert listed["items"] == []
        # A BootNotification now is an unregistered station's: Rejected, and recorded.
        assert (await call(ws, "b2", "BootNotification", boot))[2]["status"] == "Rejected"
        record = await api.services.stations.get("LIVE")
        assert record is not None and not record.known and record.password_hash is None
    finally:
        await ws.close()
    with pytest.raises(InvalidStatus) as again:
        await connect(
            api.gateway.url_for("LIVE"),
            subprotocols=[V201],  # type: ignore[list-item]
            additional_headers=basic("LIVE", password),
        )
    assert again.value.response.status_code == 404
    for _ in range(300):
        record = await api.services.stations.get("LIVE")
        if record is not None and not record.online:
            break
        await asyncio.sleep(0.01)
    second = await api.client.delete("/v1/stations/LIVE", headers=api.auth())
    assert second.status_code == 204, second.text
    assert await api.services.stations.station_counts() == StationCounts()


async def test_a_registered_station_connects_with_its_generated_password(api: Api) -> None:
    """What POST /v1/stations returns is what the gateway admits (2.0.1 and 1.6)."""
    for station_id, version in (("G201", V201), ("G16", V16)):
        created = await api.client.post(
            "/v1/stations",
            json={
                "station_id": station_id,
                "security_profile": 1,
                "generate_password": True,
                "allowed_versions": [version],
            },
            headers=api.auth(),
        )
        password = created.json()["generated_password"]
        with pytest.raises(InvalidStatus) as wrong:
            await connect(
                api.gateway.url_for(station_id),
                subprotocols=[version],  # type: ignore[list-item]
                additional_headers=basic(station_id, "Wrong-" + password),
            )
        assert wrong.value.response.status_code == 401
        ws = await connect(
            api.gateway.url_for(station_id),
            subprotocols=[version],  # type: ignore[list-item]
            additional_headers=basic(station_id, password),
        )
        try:
            await online(api, station_id)
        finally:
            await ws.close()


async def test_a_pending_security_profile_upgrade_is_shown(api: Api) -> None:
    body = {"station_id": "CS1", "security_profile": 1, "password": GOOD}
    assert (await api.client.post("/v1/stations", json=body, headers=api.auth())).status_code == 201
    before = (await api.client.get("/v1/stations/CS1", headers=api.auth())).json()
    assert (before["security_profile"], before["pending_security_profile"]) == (1, None)
    assert await api.services.stations.set_pending_security_profile("CS1", 2)
    after = (await api.client.get("/v1/stations/CS1", headers=api.auth())).json()
    assert (after["security_profile"], after["pending_security_profile"]) == (1, 2)
