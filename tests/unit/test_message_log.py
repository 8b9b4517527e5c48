"""The message log: a whole session of each OCPP version through the embedded CSMS (gateway,
manager and API on the in-process bus) with a real WebSocket station, read back frame by
frame; the bounds of the in-memory log; redaction; following; and a message log whose
Redis stalls or is gone, which must neither fail nor hold up the station's messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from cli import message_log as cli_log
from csms.bus.memory import MemoryBroker
from csms.config import Settings, TariffSettings
from csms.envelope import Envelope, Kind, OriginalCall
from manager.worker import Manager
from services import Services
from services.call_records import REDACTED
from services.memory import (
    MemoryIdempotencyStore,
    MemoryStationRegistry,
    MemoryTokenStore,
    MemoryTransactionStore,
)
from services.message_log import (
    Direction,
    FrameType,
    Handling,
    LogEntry,
    MemoryMessageLog,
    answer_entry,
    call_entry,
    outcome_entries,
)
from services.models import RegistrationStatus
from services.redis_message_log import RedisMessageLog
from services.tariff import ConfiguredTariff
from tests.timing import timeout
from tests.unit.test_api import Api, embedded_api, online
from tests.unit.test_worker import StationSide, heartbeat_call, settled

V16, V201 = "ocpp1.6", "ocpp2.0.1"
AT = "2025-01-15T10:00:00.000Z"
Frame = tuple[str, list[Any]]
"""(direction as the log says it, the OCPP-J frame)."""


class Station:
    """A station on a raw socket that keeps the transcript of every frame both ways and
    answers every CSMS call Accepted, except actions it is told to leave unanswered."""

    def __init__(self, ws: ClientConnection, silent: set[str]) -> None:
        self.ws = ws
        self.silent = silent
        self.transcript: list[Frame] = []
        self._waiting: dict[str, asyncio.Future[list[Any]]] = {}
        self._ids = 0
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for text in self.ws:
            frame = json.loads(text)
            self.transcript.append(("out", frame))
            if frame[0] == 2:
                if frame[2] not in self.silent:
                    await self._send([3, frame[1], accepted(frame[2], frame[3])])
            elif frame[1] in self._waiting:
                self._waiting.pop(frame[1]).set_result(frame)

    async def _send(self, frame: list[Any]) -> None:
        self.transcript.append(("in", frame))
        await self.ws.send(json.dumps(frame))

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        self._ids += 1
        message_id = f"{action[:4]}-{self._ids}"
        answer = self._waiting[message_id] = asyncio.get_running_loop().create_future()
        await self._send([2, message_id, action, payload])
        return await asyncio.wait_for(answer, timeout(5))

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.ws.close()


def accepted(action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A valid answer Accepted to a CSMS call."""
    if action == "CostUpdated":
        return {}
    if action == "SetVariables":
        return {
            "setVariableResult": [
                {
                    "attributeStatus": "Accepted",
                    "component": d["component"],
                    "variable": d["variable"],
                }
                for d in payload["setVariableData"]
            ]
        }
    return {"status": "Accepted"}


@contextlib.asynccontextmanager
async def station(
    api: Api, station_id: str, version: str, silent: set[str]
) -> AsyncIterator[Station]:
    ws = await connect(api.gateway.url_for(station_id), subprotocols=[version])  # type: ignore[list-item]
    side = Station(ws, silent)
    try:
        await online(api, station_id)
        yield side
    finally:
        await side.close()


async def session_16(side: Station) -> None:
    await side.call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
    await side.call(
        "StatusNotification",
        {"connectorId": 1, "errorCode": "NoError", "status": "Preparing", "timestamp": AT},
    )
    await side.call("Authorize", {"idTag": "TAG1"})
    started = await side.call(
        "StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 1000, "timestamp": AT}
    )
    tx_id = started[2]["transactionId"]
    sample = [{"value": "1500", "measurand": "Energy.Active.Import.Register"}]
    await side.call(
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": tx_id,
            "meterValue": [{"timestamp": "2025-01-15T10:10:00.000Z", "sampledValue": sample}],
        },
    )
    await side.call(
        "StopTransaction",
        {"transactionId": tx_id, "meterStop": 2500, "timestamp": "2025-01-15T10:20:00.000Z"},
    )


TOKEN = {"idToken": "TAG1", "type": "ISO14443"}


def event(kind: str, seq_no: int, **extra: Any) -> dict[str, Any]:
    return {
        "eventType": kind,
        "triggerReason": "Authorized" if kind == "Started" else "MeterValuePeriodic",
        "timestamp": AT,
        "seqNo": seq_no,
        "transactionInfo": {"transactionId": "TX-1"},
        **extra,
    }


async def session_201(side: Station) -> None:
    await side.call(
        "BootNotification",
        {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"},
    )
    await side.call(
        "StatusNotification",
        {"timestamp": AT, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1},
    )
    await side.call("Authorize", {"idToken": TOKEN})
    await side.call(
        "TransactionEvent", event("Started", 0, idToken=TOKEN, evse={"id": 1, "connectorId": 1})
    )
    reading = [{"timestamp": AT, "sampledValue": [{"value": 1500}]}]
    await side.call("TransactionEvent", event("Updated", 1, meterValue=reading))
    await side.call("TransactionEvent", event("Ended", 2, triggerReason="EVDeparted"))


SESSIONS = {
    V16: (
        session_16,
        ("ChangeConfiguration", {"key": "AuthorizationKey", "value": "0123456789abcdef0123"}),
        ("GetConfiguration", {"key": ["HeartbeatInterval"]}),
    ),
    V201: (
        session_201,
        (
            "SetVariables",
            {
                "setVariableData": [
                    {
                        "attributeValue": "a-new-password-of-24-chars",
                        "component": {"name": "SecurityCtrlr"},
                        "variable": {"name": "BasicAuthPassword"},
                    }
                ]
            },
        ),
        (
            "GetVariables",
            {
                "getVariableData": [
                    {
                        "component": {"name": "OCPPCommCtrlr"},
                        "variable": {"name": "HeartbeatInterval"},
                    }
                ]
            },
        ),
    ),
}


async def messages(api: Api, station_id: str, **params: Any) -> list[dict[str, Any]]:
    """Every entry of the station's log through the API, following the cursor."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": 5, **({"cursor": cursor} if cursor else {})}
        answer = await api.client.get(
            f"/v1/stations/{station_id}/messages", params=query, headers=api.auth()
        )
        assert answer.status_code == 200, answer.text
        page = answer.json()
        found.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def frame_of(entry: dict[str, Any]) -> Frame:
    """The OCPP-J frame an entry describes."""
    kind = entry["type"]
    if kind == "call":
        return entry["direction"], [2, entry["message_id"], entry["action"], entry["payload"]]
    if kind == "result":
        return entry["direction"], [3, entry["message_id"], entry["payload"]]
    details = entry["error_details"] if entry["error_details"] is not None else {}
    return entry["direction"], [
        4,
        entry["message_id"],
        entry["error_code"],
        entry["error_description"] or "",
        details,
    ]


def redacted(frame: Frame) -> Frame:
    """The transcript's frame as the log must show it: the passwords replaced."""
    direction, body = frame
    if body[0] == 2 and body[2] == "ChangeConfiguration":
        return direction, [*body[:3], {**body[3], "value": REDACTED}]
    if body[0] == 2 and body[2] == "SetVariables":
        data = [{**item, "attributeValue": REDACTED} for item in body[3]["setVariableData"]]
        return direction, [*body[:3], {"setVariableData": data}]
    return frame


@pytest.mark.parametrize("version", [V16, V201])
async def test_a_whole_session_reads_back_frame_by_frame(version: str) -> None:
    session, rotation, silent_call = SESSIONS[version]
    station_id = f"LOG-{version}"
    async with embedded_api() as api, station(api, station_id, version, {silent_call[0]}) as side:
        await session(side)
        answered = await api.client.post(
            f"/v1/stations/{station_id}/calls/{rotation[0]}", json=rotation[1], headers=api.auth()
        )
        assert answered.status_code == 200 and answered.json()["outcome"] == "result", answered.text
        timed_out = await api.client.post(
            f"/v1/stations/{station_id}/calls/{silent_call[0]}",
            json=silent_call[1],
            headers=api.auth(),
        )
        assert timed_out.json()["outcome"] == "timeout", timed_out.text
        await api.services.message_log.aclose()
        oldest_first = await messages(api, station_id, order="asc")
        newest_first = await messages(api, station_id)
        transcript = list(side.transcript)

    assert newest_first == oldest_first[::-1]
    assert [entry["id"] for entry in oldest_first] == sorted(
        (e["id"] for e in oldest_first), key=lambda i: tuple(map(int, i.split("-")))
    )
    # Every frame on the socket, then the gateway's timeout of the silent call.
    *frames, last = oldest_first
    logged = [frame_of(entry) for entry in frames]
    expected = [redacted(frame) for frame in transcript]
    assert sorted(map(json.dumps, logged)) == sorted(map(json.dumps, expected))
    # The station's Calls and their answers in the order they crossed the socket; each CSMS
    # call (written when its outcome arrives) right before the station's answer.
    station_side = {f[1][1] for f in expected if f[0] == "in" and f[1][0] == 2}
    assert [f for f in logged if f[1][1] in station_side] == [
        f for f in expected if f[1][1] in station_side
    ]
    csms_side = [f for f in logged if f[1][1] not in station_side]
    assert csms_side == [f for f in expected if f[1][1] not in station_side]
    calls, answers = csms_side[0::2], csms_side[1::2]
    assert all(call[0] == "out" and call[1][0] == 2 for call in calls)
    assert [a[1][1] for a in answers] == [c[1][1] for c in calls][: len(answers)]
    silent_id = transcript[-1][1][1]
    assert transcript[-1][1][2] == silent_call[0]
    assert (last["direction"], last["type"], last["action"], last["message_id"]) == (
        "in",
        "timeout",
        silent_call[0],
        silent_id,
    )
    assert all(entry["version"] == version for entry in oldest_first)
    calls_in = [e for e in frames if e["direction"] == "in" and e["type"] == "call"]
    assert [e["action"] for e in calls_in] == [
        f[1][2] for f in transcript if f[0] == "in" and f[1][0] == 2
    ]
    # What became of each answer.
    answers_out = [e for e in frames if e["direction"] == "out" and e["type"] != "call"]
    assert {e["outcome"] for e in answers_out} == {"answered"}
    csms_calls = [e for e in oldest_first if e["direction"] == "out" and e["type"] == "call"]
    sent = [f[1][2] for f in transcript if f[0] == "out" and f[1][0] == 2]
    assert [(e["action"], e["outcome"]) for e in csms_calls] == [(a, "sent") for a in sent]
    assert rotation[0] in sent and sent[-1] == silent_call[0]
    assert last["outcome"] in ("handled", "not_handled")
    # The secret is nowhere in the log.
    body: dict[str, Any] = rotation[1]  # type: ignore[assignment]
    secret = body["value"] if "value" in body else body["setVariableData"][0]["attributeValue"]
    assert secret not in json.dumps(oldest_first)
    rotated = next(e for e in csms_calls if e["action"] == rotation[0])
    assert REDACTED in json.dumps(rotated["payload"])


async def test_filters_times_and_errors() -> None:
    async with embedded_api() as api, station(api, "FILTER-1", V201, set()) as side:
        await session_201(side)
        # An unknown action: refused by the manager, logged with its CallError.
        refused = await side.call("NoSuchAction", {})
        await api.services.message_log.aclose()
        everything = await messages(api, "FILTER-1", order="asc")
        only_in = await messages(api, "FILTER-1", direction="in")
        events = await messages(api, "FILTER-1", action="TransactionEvent", order="asc")
        middle = everything[4]["time"]
        since = await messages(api, "FILTER-1", since=middle, order="asc")
        until = await messages(api, "FILTER-1", until=middle, order="asc")
        unknown = await api.client.get("/v1/stations/NOPE/messages", headers=api.auth())
        bad_cursor = await api.client.get(
            "/v1/stations/FILTER-1/messages", params={"cursor": "nope"}, headers=api.auth()
        )
    assert refused[0] == 4 and refused[2] == "NotImplemented"
    error = everything[-1]
    assert (error["type"], error["direction"], error["error_code"], error["outcome"]) == (
        "error",
        "out",
        "NotImplemented",
        "refused",
    )
    assert only_in and all(e["direction"] == "in" for e in only_in)
    assert [e["payload"].get("eventType") for e in events if e["type"] == "call"] == [
        "Started",
        "Updated",
        "Ended",
    ]
    assert all(e["action"] == "TransactionEvent" for e in events) and len(events) == 6
    assert since == [e for e in everything if e["time"] >= middle]
    assert until == [e for e in everything if e["time"] <= middle]
    assert unknown.status_code == 404 and unknown.json()["code"] == "station_not_found"
    assert bad_cursor.status_code == 400 and bad_cursor.json()["code"] == "invalid_cursor"


async def test_the_log_can_be_off() -> None:
    async with embedded_api(message_log=False) as api, station(api, "OFF-1", V201, set()) as side:
        await side.call("Heartbeat", {})
        answer = await api.client.get("/v1/stations/OFF-1/messages", headers=api.auth())
    assert answer.status_code == 409 and answer.json()["code"] == "message_log_off"


async def test_follow_streams_new_frames_as_server_sent_events() -> None:
    async with embedded_api() as api, station(api, "FOLLOW-1", V201, set()) as side:
        await side.call("Heartbeat", {})  # before following: not streamed
        url = f"{api.url}/v1/stations/FOLLOW-1/messages"
        async with (
            httpx.AsyncClient(timeout=timeout(10)) as client,
            client.stream(
                "GET", url, params={"follow": "true", "direction": "in"}, headers=api.auth()
            ) as stream,
        ):
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith(": following")
            await side.call(
                "StatusNotification",
                {"timestamp": AT, "connectorStatus": "Available", "evseId": 1, "connectorId": 1},
            )
            await side.call("Heartbeat", {})
            received: list[dict[str, Any]] = []
            ids: list[str] = []
            while len(received) < 2:
                text = await asyncio.wait_for(anext(lines), timeout(5))
                if text.startswith("data: "):
                    received.append(json.loads(text[6:]))
                elif text.startswith("id: "):
                    ids.append(text[4:])
    assert [(e["action"], e["direction"], e["type"]) for e in received] == [
        ("StatusNotification", "in", "call"),
        ("Heartbeat", "in", "call"),
    ]
    assert ids == [e["id"] for e in received]


async def test_the_managers_metrics_count_the_log() -> None:
    services = memory_services()
    broker = MemoryBroker()
    async with (
        broker.client() as bus,
        Manager(Settings(), bus, services, compile_schemas=False) as manager,
        StationSide(broker) as side,
    ):
        await services.stations.provision("M-1", RegistrationStatus.ACCEPTED)
        await side.send(heartbeat_call(station="M-1", version=V201))
        await side.receive()
        await settled(manager)
        exposition = manager.metrics.exposition().decode()
    assert "csms_manager_message_log_written_total 2.0" in exposition
    assert 'csms_manager_message_log_dropped_total{reason="buffer_full"} 0.0' in exposition
    assert services.message_log.cells is manager.metrics.message_log  # type: ignore[attr-defined]


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(int(timeout(5) / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def memory_services() -> Services:
    return Services(
        stations=MemoryStationRegistry(),
        tokens=MemoryTokenStore(),
        transactions=MemoryTransactionStore(),
        tariff=ConfiguredTariff(TariffSettings()),
        idempotency=MemoryIdempotencyStore(),
    )


# --- the in-memory log ---------------------------------------------------------------------


def heartbeat(station_id: str, n: int, at: float = 1000.0) -> LogEntry:
    return call_entry(
        Envelope(
            kind=Kind.CALL,
            station=station_id,
            version=V201,
            message_id=f"m{n}",
            action="Heartbeat",
            payload={},
            at=at,
        )
    )


async def test_memory_log_bounds_per_station_in_total_and_by_age() -> None:
    now = [1000.0]
    log = MemoryMessageLog(max_per_station=3, max_total=5, max_age=60, clock=lambda: now[0])
    for n in range(10):
        log.record(heartbeat("A", n))
    page = await log.list_messages("A", order="asc")
    assert [e.message_id for e in page.items] == ["m7", "m8", "m9"]
    for n in range(4):
        log.record(heartbeat("B", n))
    assert len(log) == 5
    # B's fourth entry went by B's own bound, A's oldest by the total one.
    assert [e.message_id for e in (await log.list_messages("A")).items] == ["m9", "m8"]
    assert [e.message_id for e in (await log.list_messages("B")).items] == ["m3", "m2", "m1"]
    now[0] = 1070.0  # everything is older than max_age now
    log.record(heartbeat("B", 9, at=1070.0))
    assert [e.message_id for e in (await log.list_messages("B")).items] == ["m9"]
    assert (await log.list_messages("A")).items == []


async def test_memory_log_pages_in_both_orders() -> None:
    log = MemoryMessageLog(max_age=0)
    for n in range(7):
        log.record(heartbeat("P", n))
    for order, expected in (
        ("asc", [f"m{n}" for n in range(7)]),
        ("desc", [f"m{n}" for n in reversed(range(7))]),
    ):
        seen: list[str] = []
        cursor = None
        while True:
            page = await log.list_messages("P", order=order, limit=3, cursor=cursor)
            seen.extend(e.message_id for e in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == expected
    with pytest.raises(ValueError, match="cursor"):
        await log.list_messages("P", cursor="garbage")
    with pytest.raises(ValueError, match="order"):
        await log.list_messages("P", order="sideways")


# --- redaction -----------------------------------------------------------------------------


def outcome(action: str, request: dict[str, Any], payload: Any) -> Envelope:
    return Envelope(
        kind=Kind.RESULT,
        station="R",
        version=V201,
        message_id="c1",
        payload=payload,
        request=OriginalCall(message_id="c1", action=action, payload=request, sent_at=1.0),
        at=2.0,
    )


def decoded(entry: LogEntry) -> Any:
    assert entry.payload
    return msgspec.json.decode(entry.payload)


def test_secrets_are_redacted_in_every_direction() -> None:
    profile = {
        "configurationSlot": 1,
        "connectionData": {
            "ocppVersion": "OCPP20",
            "ocppTransport": "JSON",
            "ocppCsmsUrl": "wss://csms",
            "messageTimeout": 30,
            "securityProfile": 2,
            "ocppInterface": "Wired0",
            "apn": {
                "apn": "internet",
                "apnAuthentication": "AUTO",
                "apnPassword": "apn-secret",
                "simPin": 1234,
            },
            "basicAuthPassword": "profile-secret",
        },
    }
    call, answer = outcome_entries(
        outcome("SetNetworkProfile", profile, {"status": "Accepted"}), handled=True
    )
    text = json.dumps(decoded(call))
    assert "apn-secret" not in text and "profile-secret" not in text and "1234" not in text
    assert decoded(call)["connectionData"]["ocppCsmsUrl"] == "wss://csms"
    assert decoded(answer) == {"status": "Accepted"}

    read = {
        "getVariableData": [
            {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"}}
        ]
    }
    result = {
        "getVariableResult": [
            {
                "attributeStatus": "Accepted",
                "attributeValue": "leaked",
                "component": {"name": "SecurityCtrlr"},
                "variable": {"name": "BasicAuthPassword"},
            }
        ]
    }
    _, got = outcome_entries(outcome("GetVariables", read, result), handled=False)
    assert decoded(got)["getVariableResult"][0]["attributeValue"] == REDACTED

    config = {
        "configurationKey": [
            {"key": "AuthorizationKey", "readonly": False, "value": "hex"},
            {"key": "X", "readonly": True, "value": "1"},
        ]
    }
    _, got = outcome_entries(outcome("GetConfiguration", {}, config), handled=True)
    assert [k["value"] for k in decoded(got)["configurationKey"]] == [REDACTED, "1"]

    report = {
        "requestId": 1,
        "generatedAt": AT,
        "seqNo": 0,
        "reportData": [
            {
                "component": {"name": "SecurityCtrlr"},
                "variable": {"name": "BasicAuthPassword"},
                "variableAttribute": [{"value": "reported"}],
            }
        ],
    }
    notify = call_entry(
        Envelope(
            kind=Kind.CALL,
            station="R",
            version=V201,
            message_id="n",
            action="NotifyReport",
            payload=report,
        )
    )
    assert "reported" not in json.dumps(decoded(notify))
    # Defensively: any field named like a password or a private key, in any frame.
    odd = call_entry(
        Envelope(
            kind=Kind.CALL,
            station="R",
            version=V201,
            message_id="d",
            action="DataTransfer",
            payload={
                "vendorId": "V",
                "data": {"nested": [{"PrivateKeyPem": "---", "adminPassword": "x", "ok": 1}]},
            },
        )
    )
    assert decoded(odd)["data"]["nested"] == [
        {"PrivateKeyPem": REDACTED, "adminPassword": REDACTED, "ok": 1}
    ]
    # A frame without secrets is kept as it was sent.
    plain = heartbeat("R", 1)
    assert decoded(plain) == {}


def test_answer_entries_say_what_became_of_the_answer() -> None:
    result = Envelope(
        kind=Kind.RESULT,
        station="S",
        version=V16,
        message_id="1",
        action="Heartbeat",
        payload={"currentTime": AT},
    )
    error = Envelope(
        kind=Kind.ERROR,
        station="S",
        version=V16,
        message_id="2",
        action="X",
        error_code="InternalError",
        error_description="storage temporarily unavailable",
        error_details={"a": 1},
    )
    assert answer_entry(result, replayed=False, published=True).outcome is Handling.ANSWERED
    assert answer_entry(result, replayed=True, published=True).outcome is Handling.REPLAYED
    assert answer_entry(result, replayed=False, published=False).outcome is Handling.UNPUBLISHED
    failed = answer_entry(error, replayed=False, published=True)
    assert (failed.type, failed.direction, failed.outcome) == (
        FrameType.ERROR,
        Direction.OUT,
        Handling.FAILED,
    )
    assert failed.error_details and msgspec.json.decode(failed.error_details) == {"a": 1}
    undelivered = Envelope(
        kind=Kind.UNDELIVERED,
        station="S",
        version=V16,
        message_id="3",
        error_description="call queue full",
        request=OriginalCall(message_id="3", action="Reset", payload={"type": "Soft"}),
        at=5.0,
    )
    call, gone = outcome_entries(undelivered, handled=False)
    assert (call.type, call.outcome, call.at) == (FrameType.CALL, Handling.NOT_SENT, 5.0)
    assert (gone.type, gone.direction, gone.action) == (
        FrameType.UNDELIVERED,
        Direction.IN,
        "Reset",
    )


def test_cli_line_shows_one_frame() -> None:
    entry: dict[str, Any] = {
        "time": AT,
        "direction": "in",
        "type": "call",
        "action": "Heartbeat",
        "message_id": "m1",
        "payload": {},
        "outcome": None,
    }
    assert cli_log.line(entry) == f"{AT} <- call        {'Heartbeat':<28} m1 {{}}"
    error = {
        **entry,
        "direction": "out",
        "type": "error",
        "error_code": "NotImplemented",
        "error_description": "unknown",
        "outcome": "refused",
    }
    assert cli_log.line(error).endswith("m1 NotImplemented unknown [refused]")


# --- a message log whose Redis fails -------------------------------------------------------


class StalledRedis:
    """A TCP server that takes connections and reads, and never answers (a frozen Redis)."""

    def __init__(self) -> None:
        self.received = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        while await reader.read(65536):
            self.received.set()  # the connection handshake of the first flush, or its XADDs

    def go_away(self) -> None:
        """Stop listening and drop the connections: Redis is gone."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    async def __aexit__(self, *exc: object) -> None:
        self.go_away()


async def test_a_stalled_then_gone_redis_neither_fails_nor_holds_up_the_station() -> None:
    """The flush is stuck in a Redis that never answers while the station's messages are
    answered; then Redis goes away: every entry of the failed flushes is counted as lost."""
    server = StalledRedis()
    async with server as url, embedded_api() as api:
        client = aioredis.from_url(url, socket_timeout=timeout(60), socket_connect_timeout=2)
        log = RedisMessageLog(client, "t:", flush_interval=0.01)
        api.services.message_log = log
        try:
            async with station(api, "STALL-1", V201, set()) as side:
                first = await side.call("Heartbeat", {})
                await asyncio.wait_for(server.received.wait(), timeout(5))
                # The flush waits on the frozen Redis; the station is answered meanwhile.
                answers = [await side.call("Heartbeat", {}) for _ in range(3)]
                assert log.buffered >= 6 and log.cells.written.value == 0
                server.go_away()
                await eventually(lambda: log.cells.dropped["flush_failed"].value > 0)
                answers.append(await side.call("Heartbeat", {}))
            await log.aclose()
        finally:
            await client.aclose()
    assert first[0] == 3 and [answer[0] for answer in answers] == [3, 3, 3, 3]
    assert log.cells.written.value == 0
    assert log.cells.dropped["flush_failed"].value == 10  # 5 Calls and their 5 answers
    assert log.cells.dropped["buffer_full"].value == 0


async def test_a_full_buffer_drops_the_oldest_and_counts_them() -> None:
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    log = RedisMessageLog(client, "t:", buffer=3, batch=100, flush_interval=60)
    try:
        for n in range(5):
            log.record(heartbeat("B", n))
        assert log.buffered == 3
        assert log.cells.dropped["buffer_full"].value == 2
    finally:
        log._closed = True  # nothing to write: the test's Redis does not exist
        await log.aclose()
        await client.aclose()
