"""Calls without waiting and their records: the store contract, what a record may hold, and
the API routes (``?wait=false``, ``GET /v1/calls/{id}``, ``GET /v1/stations/{id}/calls``)
over real HTTP in front of the embedded composition with real WebSocket stations.

The contract tests (``test_store_*``) run here against the in-memory store;
tests/integration/test_call_records_redis.py collects them again with a Redis store.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from csms.envelope import Envelope, Kind, OriginalCall
from operations.calls import Outcome
from operations.password import rotation_call
from services import Services
from services.call_records import (
    MAX_STATION_CALLS,
    REDACTED,
    CallRecord,
    CallRecordStore,
    CallState,
    MemoryCallRecordStore,
    outcome_record,
    redact,
)
from services.models import RegistrationStatus, StationRecord
from tests.unit.test_api import (
    V16,
    V201,
    Api,
    answer_next,
    assert_error,
    embedded_api,
    station_201,
)

T0 = 1_768_478_400.0
TTL = 3600


class Clock:
    """Unix time that moves only when a test moves it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def call_records(clock: Clock) -> CallRecordStore:
    return MemoryCallRecordStore(ttl=TTL, clock=clock)


def pending(
    message_id: str,
    *,
    station: str = "CS1",
    action: str = "Reset",
    at: float = T0,
    deadline: float | None = 60.0,
    request: dict[str, Any] | None = None,
) -> CallRecord:
    return CallRecord(
        message_id=message_id,
        station_id=station,
        version=V201,
        action=action,
        request=request if request is not None else {"type": "Immediate"},
        requested_at=at,
        deadline=at + deadline if deadline is not None else None,
    )


def final(record: CallRecord, outcome: CallState = CallState.RESULT, **fields: Any) -> CallRecord:
    """``record`` as an outcome writer knows it: no request data of its own but the outcome."""
    return CallRecord(
        message_id=record.message_id,
        station_id=record.station_id,
        version=record.version,
        action=record.action,
        requested_at=fields.pop("requested_at", record.requested_at + 5),
        outcome=outcome,
        payload=fields.pop("payload", {"status": "Accepted"}),
        finished_at=record.requested_at + 1,
        **fields,
    )


async def ids(store: CallRecordStore, station: str = "CS1", **filters: Any) -> list[str]:
    """Message ids of a station's whole listing, following cursors two at a time."""
    found: list[str] = []
    cursor = None
    for _ in range(1000):
        page = await store.list_calls(station, cursor=cursor, limit=2, **filters)
        assert len(page.items) <= 2
        found.extend(record.message_id for record in page.items)
        cursor = page.next_cursor
        if cursor is None:
            return found
    raise AssertionError("listing never ended")


# --- the store contract --------------------------------------------------------------------


async def test_store_begin_records_a_pending_call(call_records: CallRecordStore) -> None:
    assert await call_records.get("m1") is None
    await call_records.begin(pending("m1"))
    record = await call_records.get("m1")
    assert record is not None
    assert record.outcome is CallState.PENDING and record.request == {"type": "Immediate"}
    assert record.requested_at == T0 and record.deadline == T0 + 60
    assert (record.station_id, record.version, record.action) == ("CS1", V201, "Reset")
    assert record.finished_at is None and record.payload is None


async def test_store_finish_keeps_the_request_and_fills_in_the_outcome(
    call_records: CallRecordStore,
) -> None:
    asked = pending("m1", request={"type": "OnIdle"})
    await call_records.begin(asked)
    await call_records.finish(final(asked, error_details={"why": "x"}, sent_at=T0 + 0.5))
    record = await call_records.get("m1")
    assert record is not None and record.outcome is CallState.RESULT
    assert record.request == {"type": "OnIdle"} and record.requested_at == T0
    assert record.payload == {"status": "Accepted"} and record.error_details == {"why": "x"}
    assert record.sent_at == T0 + 0.5 and record.finished_at == T0 + 1


async def test_store_first_final_outcome_stays(call_records: CallRecordStore) -> None:
    asked = pending("m1")
    await call_records.begin(asked)
    await call_records.finish(final(asked, CallState.ERROR, error_code="NotSupported"))
    await call_records.finish(final(asked, CallState.TIMEOUT))
    await call_records.begin(pending("m1", request={"type": "OnIdle"}))
    record = await call_records.get("m1")
    assert record is not None
    assert record.outcome is CallState.ERROR and record.error_code == "NotSupported"
    assert record.request == {"type": "Immediate"}


async def test_store_finish_creates_a_missing_record(call_records: CallRecordStore) -> None:
    made = final(pending("m9"), requested_at=T0 + 3, request={"key": "k", "value": "v"})
    await call_records.finish(made)
    record = await call_records.get("m9")
    assert record is not None and record.outcome is CallState.RESULT
    assert record.request == {"key": "k", "value": "v"} and record.requested_at == T0 + 3
    assert await ids(call_records) == ["m9"]


async def test_store_refuses_to_finish_without_a_final_outcome(
    call_records: CallRecordStore,
) -> None:
    for state in (CallState.PENDING, CallState.NO_OUTCOME):
        with pytest.raises(ValueError, match="final"):
            await call_records.finish(final(pending("m1"), state))
    assert await call_records.get("m1") is None


async def test_store_pending_past_its_deadline_reads_as_no_outcome_until_the_outcome_comes(
    call_records: CallRecordStore, clock: Clock
) -> None:
    asked = pending("m1", deadline=30)
    await call_records.begin(asked)
    await call_records.begin(pending("m2", deadline=None, at=T0 + 1))
    clock.now = T0 + 29
    assert await ids(call_records, outcome=CallState.NO_OUTCOME) == []
    clock.now = T0 + 31
    late = await call_records.get("m1")
    assert late is not None and late.outcome is CallState.NO_OUTCOME and late.error_description
    assert await ids(call_records, outcome=CallState.NO_OUTCOME) == ["m1"]
    assert await ids(call_records, outcome=CallState.PENDING) == ["m2"]  # no deadline
    await call_records.finish(final(asked))
    record = await call_records.get("m1")
    assert record is not None and record.outcome is CallState.RESULT
    assert await ids(call_records, outcome=CallState.NO_OUTCOME) == []


async def test_store_lists_a_station_newest_first_with_filters(
    call_records: CallRecordStore,
) -> None:
    for n in range(7):
        asked = pending(f"m{n}", action="Reset" if n % 2 else "ClearCache", at=T0 + n)
        await call_records.begin(asked)
        if n % 3 == 0:
            await call_records.finish(final(asked, CallState.TIMEOUT))
    await call_records.begin(pending("other", station="CS2", at=T0 + 100))
    assert await ids(call_records) == [f"m{n}" for n in range(6, -1, -1)]
    assert await ids(call_records, action="Reset") == ["m5", "m3", "m1"]
    assert await ids(call_records, outcome=CallState.TIMEOUT) == ["m6", "m3", "m0"]
    assert await ids(call_records, action="Reset", outcome=CallState.PENDING) == ["m5", "m1"]
    assert await ids(call_records, action="SetVariables") == []
    assert await ids(call_records, "CS2") == ["other"]
    assert await ids(call_records, "NOBODY") == []
    first = await call_records.list_calls("CS1", limit=7)
    assert [r.message_id for r in first.items] == [f"m{n}" for n in range(6, -1, -1)]
    assert first.next_cursor is None


async def test_store_listing_is_stable_under_inserts(call_records: CallRecordStore) -> None:
    for n in range(4):
        await call_records.begin(pending(f"m{n}", at=T0 + n))
    page = await call_records.list_calls("CS1", limit=2)
    assert [r.message_id for r in page.items] == ["m3", "m2"] and page.next_cursor
    await call_records.begin(pending("new", at=T0 + 10))
    rest = await call_records.list_calls("CS1", cursor=page.next_cursor, limit=2)
    assert [r.message_id for r in rest.items] == ["m1", "m0"]


async def test_store_refuses_bad_cursors_and_limits(call_records: CallRecordStore) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await call_records.list_calls("CS1", cursor="bm90LWEtY3Vyc29y")
    for limit in (0, 1001):
        with pytest.raises(ValueError, match="limit"):
            await call_records.list_calls("CS1", limit=limit)


async def test_store_listing_forgets_records_older_than_the_ttl(
    call_records: CallRecordStore, clock: Clock
) -> None:
    await call_records.begin(pending("old"))
    clock.now = T0 + TTL + 1
    await call_records.begin(pending("new", at=clock.now))
    assert await ids(call_records) == ["new"]


async def test_store_a_station_listing_keeps_its_newest_records(
    call_records: CallRecordStore,
) -> None:
    total = MAX_STATION_CALLS + 2
    for n in range(total):
        await call_records.begin(pending(f"m{n:04d}", at=T0 + n))
    page = await call_records.list_calls("CS1", limit=1000)
    assert len(page.items) == MAX_STATION_CALLS and page.next_cursor is None
    assert page.items[0].message_id == f"m{total - 1:04d}"
    assert page.items[-1].message_id == "m0002"
    oldest = await call_records.get("m0000")  # out of the listing, still readable by id
    assert oldest is not None and oldest.message_id == "m0000"


async def test_store_ids_with_any_characters(call_records: CallRecordStore) -> None:
    odd = pending("a:b/c%d é", station="ST:1/x")
    await call_records.begin(odd)
    assert (await call_records.get("a:b/c%d é")) is not None
    assert await ids(call_records, "ST:1/x") == ["a:b/c%d é"]
    assert await ids(call_records, "ST") == []


# --- the in-memory store's own bounds ------------------------------------------------------


async def test_memory_store_holds_at_most_max_records_and_forgets_the_oldest(
    clock: Clock,
) -> None:
    store = MemoryCallRecordStore(max_records=3, clock=clock)
    for n in range(4):
        await store.begin(pending(f"m{n}", at=T0 + n))
    assert await store.get("m0") is None
    assert await ids(store) == ["m3", "m2", "m1"]


async def test_memory_store_records_expire_after_the_ttl(clock: Clock) -> None:
    store = MemoryCallRecordStore(ttl=10, clock=clock)
    await store.begin(pending("m1"))
    clock.now = T0 + 9
    assert await store.get("m1") is not None
    clock.now = T0 + 10
    assert await store.get("m1") is None and await ids(store) == []


def test_services_default_to_a_memory_call_record_store() -> None:
    services = Services(
        stations=None,  # type: ignore[arg-type]
        tokens=None,  # type: ignore[arg-type]
        transactions=None,  # type: ignore[arg-type]
        tariff=None,  # type: ignore[arg-type]
        idempotency=None,  # type: ignore[arg-type]
    )
    assert isinstance(services.call_records, MemoryCallRecordStore)
    assert isinstance(services.call_records, CallRecordStore)


# --- what a record holds -------------------------------------------------------------------


def test_call_states_are_the_outcomes_and_pending() -> None:
    assert {state.value for state in CallState} == {o.value for o in Outcome} | {"pending"}


@pytest.mark.parametrize("version", [V201, V16])
def test_rotation_payloads_are_redacted(version: str) -> None:
    password = "Sup3r-Secret-Pw-12"
    action, payload = rotation_call(version, password)
    before = json.dumps(payload)
    clean = redact(action, payload)
    assert REDACTED in json.dumps(clean)
    secret = payload.get("value") or password
    assert secret not in json.dumps(clean) and password not in json.dumps(clean)
    assert json.dumps(payload) == before  # the payload sent is left as it is


def test_secrets_are_redacted_whatever_the_case_and_other_payloads_are_kept() -> None:
    change = redact("ChangeConfiguration", {"key": "authorizationKEY", "value": "00ff"})
    assert change == {"key": "authorizationKEY", "value": REDACTED}
    kept = {"key": "HeartbeatInterval", "value": "60"}
    assert redact("ChangeConfiguration", kept) == kept
    variables = redact(
        "SetVariables",
        {
            "setVariableData": [
                {
                    "attributeValue": "pw-1234567890123",
                    "component": {"name": "AnyCtrlr"},
                    "variable": {"name": "basicauthpassword"},
                },
                {
                    "attributeValue": "300",
                    "component": {"name": "OCPPCommCtrlr"},
                    "variable": {"name": "HeartbeatInterval"},
                },
            ]
        },
    )
    values = [entry["attributeValue"] for entry in variables["setVariableData"]]
    assert values == [REDACTED, "300"]
    profile = redact(
        "SetNetworkProfile",
        {
            "configurationSlot": 1,
            "connectionData": {
                "ocppCsmsUrl": "wss://csms.example/ocpp",
                "apn": {"apn": "internet", "apnPassword": "apn-pw", "simPin": 1234},
                "vpn": {"server": "vpn", "user": "u", "password": "vpn-pw", "key": "k"},
            },
        },
    )
    text = json.dumps(profile)
    assert "apn-pw" not in text and "vpn-pw" not in text and "1234" not in text
    assert '"key": "k"' not in text and "wss://csms.example/ocpp" in text


def test_outcome_records_come_from_the_gateways_outcomes_with_their_call() -> None:
    action, payload = rotation_call(V16, "Sup3r-Secret-Pw-12")
    answer = Envelope(
        kind=Kind.RESULT,
        station="CP1",
        version=V16,
        message_id="m1",
        payload={"status": "Accepted"},
        request=OriginalCall(message_id="m1", action=action, payload=payload, sent_at=T0),
        at=T0 + 1,
    )
    record = outcome_record(answer)
    assert record is not None
    assert (record.message_id, record.station_id, record.action) == ("m1", "CP1", action)
    assert record.outcome is CallState.RESULT and record.payload == {"status": "Accepted"}
    assert record.request is not None and record.request["value"] == REDACTED
    assert record.requested_at == record.sent_at == T0 and record.finished_at == T0 + 1
    lost = Envelope(
        kind=Kind.UNDELIVERED,
        station="CP1",
        version=V16,
        message_id="m2",
        error_description="connection closed",
        request=OriginalCall(message_id="m2", action="ClearCache", payload={}),
        at=T0 + 2,
    )
    record = outcome_record(lost)
    assert record is not None and record.outcome is CallState.UNDELIVERED
    assert record.requested_at == T0 + 2 and record.sent_at is None
    assert record.error_description == "connection closed"
    call = Envelope(kind=Kind.CALL, station="CP1", version=V16, message_id="x", action="Heartbeat")
    assert outcome_record(call) is None
    orphan = Envelope(kind=Kind.RESULT, station="CP1", version=V16, message_id="y", payload={})
    assert outcome_record(orphan) is None


# --- the API -------------------------------------------------------------------------------


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with embedded_api(call_timeout=30.0, call_queue_size=16) as harness:
        yield harness


async def read_until(
    api: Api, message_id: str, leaving: str = "pending", **kwargs: Any
) -> dict[str, Any]:
    """``GET /v1/calls/{id}`` until its outcome is no longer ``leaving``."""
    for _ in range(500):
        answer = await api.client.get(f"/v1/calls/{message_id}", headers=api.auth(), **kwargs)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if body["outcome"] != leaving:
            return body
        await asyncio.sleep(0.01)
    raise AssertionError(f"call {message_id} stayed {leaving}")


async def station_calls(api: Api, station: str, **params: Any) -> list[dict[str, Any]]:
    answer = await api.client.get(
        f"/v1/stations/{station}/calls", params=params, headers=api.auth()
    )
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_wait_false_answers_202_pending_and_the_outcome_is_read_back(api: Api) -> None:
    ws = await station_201(api, "NW-1")
    try:
        operate = await api.key("operate")
        answer = await api.client.post(
            "/v1/stations/NW-1/calls/Reset?wait=false", json={"type": "OnIdle"}, headers=operate
        )
        assert answer.status_code == 202, answer.text
        body = answer.json()
        message_id = body["message_id"]
        assert answer.headers["location"] == f"/v1/calls/{message_id}"
        assert body["outcome"] == "pending" and body["station_id"] == "NW-1"
        assert body["version"] == V201 and body["action"] == "Reset"
        assert body["request"] == {"type": "OnIdle"} and body["finished_at"] is None
        assert isinstance(body["requested_at"], float)

        read = await api.key("read")
        before = await api.client.get(answer.headers["location"], headers=read)
        assert before.status_code == 200 and before.json()["outcome"] == "pending"
        call = await answer_next(ws, lambda mid: [3, mid, {"status": "Scheduled"}])
        assert call[1:] == [message_id, "Reset", {"type": "OnIdle"}]
        done = await read_until(api, message_id)
        assert done["outcome"] == "result" and done["payload"] == {"status": "Scheduled"}
        assert done["request"] == {"type": "OnIdle"}
        assert done["requested_at"] == body["requested_at"]
        assert done["sent_at"] is not None and done["finished_at"] is not None
    finally:
        await ws.close()


async def test_wait_false_reads_back_call_errors_and_timeouts() -> None:
    async with embedded_api(call_timeout=0.3) as api:
        ws = await station_201(api, "NW-E")
        try:
            sent = await api.client.post(
                "/v1/stations/NW-E/calls/ClearCache?wait=false", json={}, headers=api.auth()
            )
            assert sent.status_code == 202
            await answer_next(ws, lambda mid: [4, mid, "NotSupported", "not here", {"a": 1}])
            error = await read_until(api, sent.json()["message_id"])
            assert error["outcome"] == "error" and error["error_code"] == "NotSupported"
            assert error["error_description"] == "not here" and error["error_details"] == {"a": 1}
            assert error["payload"] is None

            silent = await api.client.post(
                "/v1/stations/NW-E/calls/ClearCache?wait=false", json={}, headers=api.auth()
            )
            json.loads(await asyncio.wait_for(ws.recv(), 5))  # received, never answered
            timed_out = await read_until(api, silent.json()["message_id"])
            assert timed_out["outcome"] == "timeout"
        finally:
            await ws.close()


async def test_waited_calls_are_recorded_and_readable_at_once(api: Api) -> None:
    ws = await station_201(api, "NW-W")
    try:
        sending = asyncio.create_task(
            api.client.post(
                "/v1/stations/NW-W/calls/Reset", json={"type": "Immediate"}, headers=api.auth()
            )
        )
        await answer_next(ws, lambda mid: [3, mid, {"status": "Accepted"}])
        answer = await sending
        assert answer.status_code == 200 and "location" not in answer.headers
        message_id = answer.json()["message_id"]
        # The replica that waited recorded what it got: readable the moment the caller has it.
        record = await api.client.get(f"/v1/calls/{message_id}", headers=api.auth())
        assert record.json()["outcome"] == "result"
        assert record.json()["payload"] == {"status": "Accepted"}
        assert record.json()["request"] == {"type": "Immediate"}
    finally:
        await ws.close()


async def test_a_lost_call_reads_as_no_outcome_until_its_outcome_arrives(api: Api) -> None:
    clock = Clock(time.time())
    api.services.call_records = MemoryCallRecordStore(clock=clock)
    ws = await station_201(api, "NW-N")
    try:
        sent = await api.client.post(
            "/v1/stations/NW-N/calls/Reset?wait=false&timeout=20",
            json={"type": "Immediate"},
            headers=api.auth(),
        )
        message_id = sent.json()["message_id"]
        call = json.loads(await asyncio.wait_for(ws.recv(), 5))
        clock.now = sent.json()["requested_at"] + 21  # past the call's deadline, no outcome yet
        lost = (await api.client.get(f"/v1/calls/{message_id}", headers=api.auth())).json()
        assert lost["outcome"] == "no_outcome" and lost["request"] == {"type": "Immediate"}
        assert [c["message_id"] for c in await station_calls(api, "NW-N", outcome="no_outcome")]
        await ws.send(json.dumps([3, call[1], {"status": "Accepted"}]))
        late = await read_until(api, message_id, leaving="no_outcome")
        assert late["outcome"] == "result" and late["payload"] == {"status": "Accepted"}
    finally:
        await ws.close()


async def test_wait_false_validates_like_a_waited_call_and_records_nothing_it_refuses(
    api: Api,
) -> None:
    await api.services.stations.put(StationRecord(station_id="NW-V", ocpp_version=V201))
    await api.services.stations.put(
        StationRecord(
            station_id="NW-R",
            ocpp_version=V201,
            registration=RegistrationStatus.REJECTED,
            online=True,
        )
    )
    post = api.client.post
    unknown = await post("/v1/stations/NOBODY/calls/Reset?wait=false", json={}, headers=api.auth())
    assert_error(unknown, 404, "station_not_found")
    teleport = await post(
        "/v1/stations/NW-V/calls/Teleport?wait=false", json={}, headers=api.auth()
    )
    assert_error(teleport, 404, "unknown_action")
    boot = await post(
        "/v1/stations/NW-V/calls/BootNotification?wait=false", json={}, headers=api.auth()
    )
    assert_error(boot, 422, "not_a_csms_action")
    invalid = await post(
        "/v1/stations/NW-V/calls/Reset?wait=false", json={"type": "Later"}, headers=api.auth()
    )
    details = assert_error(invalid, 422, "invalid_payload")["details"]
    assert details == {"field": "type", "in": "body", "rule": "enum"}
    rejected = await post(
        "/v1/stations/NW-R/calls/Reset?wait=false", json={"type": "Immediate"}, headers=api.auth()
    )
    assert_error(rejected, 403, "station_rejected")
    read = await api.key("read")
    forbidden = await post(
        "/v1/stations/NW-V/calls/Reset?wait=false", json={"type": "Immediate"}, headers=read
    )
    assert_error(forbidden, 403, "forbidden")
    assert await station_calls(api, "NW-V") == [] and await station_calls(api, "NW-R") == []


async def test_offline_stays_a_prompt_409_and_is_recorded(api: Api) -> None:
    await api.services.stations.put(StationRecord(station_id="NW-OFF", ocpp_version=V201))
    for wait in ("false", "true"):
        offline = await api.client.post(
            f"/v1/stations/NW-OFF/calls/Reset?wait={wait}",
            json={"type": "Immediate"},
            headers=api.auth(),
        )
        assert_error(offline, 409, "station_offline")
    recorded = await station_calls(api, "NW-OFF")
    assert [item["outcome"] for item in recorded] == ["offline", "offline"]
    assert all(item["request"] == {"type": "Immediate"} for item in recorded)
    one = await api.client.get(f"/v1/calls/{recorded[0]['message_id']}", headers=api.auth())
    assert one.json()["outcome"] == "offline" and one.json()["finished_at"] is not None


async def test_passwords_sent_are_never_read_back(api: Api) -> None:
    ws = await station_201(api, "NW-P")
    try:
        password = "Fresh-Passw0rd-For-NW-P-1234"
        sent = await api.client.post(
            "/v1/stations/NW-P/calls/SetVariables?wait=false",
            json={
                "setVariableData": [
                    {
                        "attributeValue": password,
                        "component": {"name": "SecurityCtrlr"},
                        "variable": {"name": "BasicAuthPassword"},
                    }
                ]
            },
            headers=api.auth(),
        )
        assert sent.status_code == 202 and password not in sent.text
        call = await answer_next(
            ws,
            lambda mid: [
                3,
                mid,
                {
                    "setVariableResult": [
                        {
                            "attributeStatus": "Accepted",
                            "component": {"name": "SecurityCtrlr"},
                            "variable": {"name": "BasicAuthPassword"},
                        }
                    ]
                },
            ],
        )
        assert call[3]["setVariableData"][0]["attributeValue"] == password  # the station has it
        done = await read_until(api, sent.json()["message_id"])
        assert done["outcome"] == "result" and password not in json.dumps(done)
        assert done["request"]["setVariableData"][0]["attributeValue"] == REDACTED
        listed = await api.client.get("/v1/stations/NW-P/calls", headers=api.auth())
        assert password not in listed.text
    finally:
        await ws.close()


async def test_calls_sent_by_other_routes_are_recorded_by_the_manager(api: Api) -> None:
    ws = await station_201(api, "NW-T")
    try:
        resetting = asyncio.create_task(
            api.client.post(
                "/v1/stations/NW-T/reset", json={"immediate": False}, headers=api.auth()
            )
        )
        call = await answer_next(ws, lambda mid: [3, mid, {"status": "Scheduled"}])
        assert (await resetting).status_code == 200
        done = await read_until(api, call[1])
        assert done["action"] == "Reset" and done["request"] == {"type": "OnIdle"}
        assert done["outcome"] == "result" and done["payload"] == {"status": "Scheduled"}
        assert [item["message_id"] for item in await station_calls(api, "NW-T")] == [call[1]]
    finally:
        await ws.close()


async def test_a_stations_calls_are_listed_newest_first_with_filters_and_pages(
    api: Api,
) -> None:
    ws = await station_201(api, "NW-L")
    try:
        sent: list[str] = []
        for action, payload in [
            ("Reset", {"type": "Immediate"}),
            ("ClearCache", {}),
            ("Reset", {"type": "OnIdle"}),
        ]:
            answer = await api.client.post(
                f"/v1/stations/NW-L/calls/{action}?wait=false", json=payload, headers=api.auth()
            )
            sent.append(answer.json()["message_id"])
        await answer_next(ws, lambda mid: [3, mid, {"status": "Accepted"}])
        await read_until(api, sent[0])
        assert [c["message_id"] for c in await station_calls(api, "NW-L")] == sent[::-1]
        resets = await station_calls(api, "NW-L", action="Reset")
        assert [c["message_id"] for c in resets] == [sent[2], sent[0]]
        answered = await station_calls(api, "NW-L", outcome="result")
        assert [c["message_id"] for c in answered] == [sent[0]]
        waiting = await station_calls(api, "NW-L", outcome="pending", action="ClearCache")
        assert [c["message_id"] for c in waiting] == [sent[1]]

        pages: list[str] = []
        cursor = None
        for _ in range(5):
            params: dict[str, Any] = {"limit": 1} | ({"cursor": cursor} if cursor else {})
            page = (
                await api.client.get("/v1/stations/NW-L/calls", params=params, headers=api.auth())
            ).json()
            pages.extend(item["message_id"] for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == sent[::-1]
    finally:
        await ws.close()


async def test_call_routes_refuse_what_they_cannot_answer(api: Api) -> None:
    read = await api.key("read")
    unknown = await api.client.get("/v1/calls/not-a-call", headers=read)
    assert assert_error(unknown, 404, "call_not_found")["details"]["field"] == "message_id"
    assert_error(await api.client.get("/v1/calls/x"), 401, "unauthorized")
    nobody = await api.client.get("/v1/stations/NOBODY/calls", headers=read)
    assert_error(nobody, 404, "station_not_found")
    await api.services.stations.put(StationRecord(station_id="NW-Q", ocpp_version=V201))
    cursor = await api.client.get("/v1/stations/NW-Q/calls?cursor=bm90LWEtY3Vyc29y", headers=read)
    assert_error(cursor, 400, "invalid_cursor")
    outcome = await api.client.get("/v1/stations/NW-Q/calls?outcome=maybe", headers=read)
    assert assert_error(outcome, 422, "invalid_request")["details"]["field"] == "outcome"
    document = (await api.client.get("/v1/openapi.json")).json()
    assert {"/v1/calls/{message_id}", "/v1/stations/{station_id}/calls"} <= set(document["paths"])
