"""State-change events the managers append, through csms run's composition (in-process bus,
memory stores, the real routers and handlers of both versions) with a real WebSocket
station: a whole session of each version, refused tokens, CSMS call outcomes, and the
optional copy on the bus."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import structlog
from websockets.asyncio.client import ClientConnection, connect

from cli import processes
from cli.processes import Embedded
from csms.config import Settings
from services.events import Event, EventLog
from tests.timing import timeout as scaled

T0 = "2026-01-15T12:00:00Z"


def at(seconds: int) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"2026-01-15T12:{minutes:02d}:{rest:02d}Z"


class Station:
    """A station on a raw socket that answers CSMS calls: CostUpdated with ``{}``, ClearCache
    with a CallError, everything else Accepted."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._answers: dict[str, asyncio.Future[Any]] = {}
        self._count = 0
        self._reader = asyncio.create_task(self._read())

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        self._count += 1
        message_id = f"m{self._count}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._answers[message_id] = future
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        answer = await asyncio.wait_for(future, scaled(5))
        assert answer[0] == 3, answer
        return answer[2]

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            if frame[0] == 2:
                if frame[2] == "ClearCache":
                    reply: list[Any] = [4, frame[1], "NotSupported", "not here", {}]
                elif frame[2] == "CostUpdated":
                    reply = [3, frame[1], {}]
                else:
                    reply = [3, frame[1], {"status": "Accepted"}]
                await self.ws.send(json.dumps(reply))
            elif frame[1] in self._answers:
                self._answers[frame[1]].set_result(frame)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)


def _settings(**extra: Any) -> Settings:
    return Settings.model_validate(
        {
            "listen_port": 0,
            "ping_interval": None,
            "ping_timeout": None,
            "running_cost_interval": 60,
            "tokens": [
                {"id_token": "RFID-1"},
                {"id_token": "BLOCKED-1", "status": "Blocked"},
            ],
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def csms(**extra: Any) -> AsyncIterator[Embedded]:
    async with processes.embedded(_settings(**extra), api=False) as running:
        yield running


@contextlib.asynccontextmanager
async def station(running: Embedded, station_id: str, version: str) -> AsyncIterator[Station]:
    url = running.gateway.url_for(station_id)
    ws = await connect(url, subprotocols=[version])  # type: ignore[list-item]
    cs = Station(ws)
    try:
        yield cs
    finally:
        await cs.close()


async def until(log: EventLog, kind: str, station_id: str) -> Event:
    """The first event of ``kind`` for ``station_id`` in the log, waiting for it."""
    after: str | None = None
    async with asyncio.timeout(scaled(5)):
        while True:
            page = await log.wait(after, 1.0, kinds=frozenset({kind}), station_id=station_id)
            if page.events:
                return page.events[0]
            after = page.last_id


async def events_of(log: EventLog, station_id: str) -> list[Event]:
    page = await log.read(limit=1000, station_id=station_id)
    return page.events


def _kinds(events: list[Event], leave_out: str = "call.outcome") -> list[str]:
    return [event.kind for event in events if event.kind != leave_out]


def _transaction_event(kind: str, seq: int, seconds: int, wh: float, **info: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "eventType": kind,
        "timestamp": at(seconds),
        "triggerReason": "Authorized" if kind == "Started" else "MeterValuePeriodic",
        "seqNo": seq,
        "transactionInfo": {"transactionId": "TX-1", **info},
        "evse": {"id": 1, "connectorId": 1},
        "meterValue": [
            {
                "timestamp": at(seconds),
                "sampledValue": [{"value": wh, "measurand": "Energy.Active.Import.Register"}],
            }
        ],
    }
    if kind == "Started":
        payload["idToken"] = {"idToken": "RFID-1", "type": "ISO14443"}
    return payload


# Meter times 0 s (start), 10, 30, 61, 70, 125, 130 (end): with running_cost_interval 60
# only the readings at 61 s and 125 s begin a new interval.
READINGS = [(10, 1100), (30, 1300), (61, 1600), (70, 1700), (125, 1900)]


async def test_a_201_session_yields_its_events_in_order_with_their_facts() -> None:
    async with csms() as running:
        log = running.services.events
        async with station(running, "CS-201", "ocpp2.0.1") as cs:
            connected = await until(log, "station.connected", "CS-201")
            boot = {
                "chargingStation": {"model": "Wallbox", "vendorName": "ACME"},
                "reason": "PowerUp",
            }
            assert (await cs.call("BootNotification", boot))["status"] == "Accepted"
            status = {"timestamp": T0, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}
            await cs.call("StatusNotification", status)
            await cs.call("TransactionEvent", _transaction_event("Started", 0, 0, 1000))
            for seq, (seconds, wh) in enumerate(READINGS, start=1):
                await cs.call("TransactionEvent", _transaction_event("Updated", seq, seconds, wh))
            ended = _transaction_event("Ended", 6, 130, 2000, stoppedReason="EVDisconnected")
            answer = await cs.call("TransactionEvent", ended)
            # A repeated Ended (a retry after a lost answer) adds nothing.
            await cs.call("TransactionEvent", ended)
        await until(log, "station.disconnected", "CS-201")
        events = await events_of(log, "CS-201")

    assert _kinds(events) == [
        "station.connected",
        "station.booted",
        "connector.status",
        "transaction.started",
        "transaction.updated",
        "transaction.updated",
        "transaction.ended",
        "station.disconnected",
    ]
    by_kind = {event.kind: event for event in events}
    assert events[0] == connected
    assert connected.data["version"] == "ocpp2.0.1" and connected.data["connection"]
    assert connected.data["gateway"] == running.gateway.id
    booted = by_kind["station.booted"].data
    assert booted["status"] == "Accepted" and booted["vendor"] == "ACME"
    assert booted["model"] == "Wallbox" and booted["reason"] == "PowerUp"
    assert by_kind["connector.status"].data["status"] == "Occupied"
    assert by_kind["connector.status"].at == T0
    started = by_kind["transaction.started"]
    assert started.data["transaction_id"] == "TX-1" and started.data["id_token"] == "RFID-1"
    assert started.data["evse_id"] == 1 and started.at == T0
    updates = [event for event in events if event.kind == "transaction.updated"]
    assert [u.data["energy_wh"] for u in updates] == [600, 900]
    assert [u.at for u in updates] == [at(61), at(125)]
    assert [Decimal(u.data["cost"]) for u in updates] == [Decimal("0.18"), Decimal("0.27")]
    end = by_kind["transaction.ended"]
    assert end.data["energy_wh"] == 1000 and end.data["stop_reason"] == "EVDisconnected"
    assert Decimal(end.data["cost"]) == Decimal("0.3") and end.data["currency"] == "EUR"
    assert answer["totalCost"] == pytest.approx(0.3)
    assert end.at == at(130) and end.key == "CS-201:TX-1:ended"
    gone = by_kind["station.disconnected"].data
    assert gone["connection"] == connected.data["connection"] and gone["current"] is True
    # Ids grow in log order, every event is schema version 1.
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert all(e.v == 1 and e.key for e in events)
    # The two running costs went to the station too: their outcomes are in the log.
    outcomes = [e.data for e in events if e.kind == "call.outcome"]
    assert [(o["action"], o["outcome"]) for o in outcomes] == [("CostUpdated", "result")] * 2


async def test_a_16_session_yields_its_events_in_order_with_their_facts() -> None:
    async with csms() as running:
        log = running.services.events
        async with station(running, "CS-16", "ocpp1.6") as cs:
            await until(log, "station.connected", "CS-16")
            boot = {
                "chargePointVendor": "ACME",
                "chargePointModel": "Pole",
                "firmwareVersion": "1.2",
            }
            assert (await cs.call("BootNotification", boot))["status"] == "Accepted"
            status = {
                "connectorId": 1,
                "errorCode": "NoError",
                "status": "Preparing",
                "timestamp": T0,
            }
            await cs.call("StatusNotification", status)
            start = {"connectorId": 1, "idTag": "RFID-1", "meterStart": 1000, "timestamp": T0}
            tx_id = (await cs.call("StartTransaction", start))["transactionId"]
            for seconds, wh in READINGS:
                value = {
                    "value": str(wh),
                    "measurand": "Energy.Active.Import.Register",
                    "unit": "Wh",
                }
                meter = {"timestamp": at(seconds), "sampledValue": [value]}
                await cs.call(
                    "MeterValues", {"connectorId": 1, "transactionId": tx_id, "meterValue": [meter]}
                )
            stop = {
                "transactionId": tx_id,
                "meterStop": 2000,
                "timestamp": at(130),
                "reason": "Local",
            }
            await cs.call("StopTransaction", stop)
            await cs.call("StopTransaction", stop)  # a replay ends nothing twice
            await cs.call("FirmwareStatusNotification", {"status": "Downloading"})
            await cs.call("DiagnosticsStatusNotification", {"status": "Uploaded"})
            security = {"type": "FirmwareUpdated", "timestamp": at(131), "techInfo": "v1.3"}
            await cs.call("SecurityEventNotification", security)
        await until(log, "station.disconnected", "CS-16")
        events = await events_of(log, "CS-16")

    assert _kinds(events) == [
        "station.connected",
        "station.booted",
        "connector.status",
        "transaction.started",
        "transaction.updated",
        "transaction.updated",
        "transaction.ended",
        "firmware.status",
        "diagnostics.status",
        "security.event",
        "station.disconnected",
    ]
    by_kind = {event.kind: event for event in events}
    assert by_kind["station.connected"].data["version"] == "ocpp1.6"
    booted = by_kind["station.booted"].data
    assert (booted["vendor"], booted["model"], booted["firmware_version"]) == (
        "ACME",
        "Pole",
        "1.2",
    )
    connector = by_kind["connector.status"].data
    assert connector == {
        "evse_id": 1,
        "connector_id": 1,
        "status": "Preparing",
        "error_code": "NoError",
        "info": None,
    }
    started = by_kind["transaction.started"].data
    assert started["transaction_id"] == str(tx_id) and started["meter_start_wh"] == 1000
    updates = [event for event in events if event.kind == "transaction.updated"]
    assert [u.data["energy_wh"] for u in updates] == [600, 900]
    end = by_kind["transaction.ended"].data
    assert end["energy_wh"] == 1000 and end["stop_reason"] == "Local"
    assert Decimal(end["cost"]) == Decimal("0.3") and end["id_token"] == "RFID-1"
    assert by_kind["firmware.status"].data["status"] == "Downloading"
    assert by_kind["diagnostics.status"].data == {"status": "Uploaded", "request_id": None}
    assert by_kind["security.event"].data == {"type": "FirmwareUpdated", "tech_info": "v1.3"}
    assert by_kind["security.event"].at == at(131)


async def test_refused_tokens_yield_authorization_refused() -> None:
    async with csms() as running:
        log = running.services.events
        async with station(running, "CS-A", "ocpp2.0.1") as cs:
            boot = {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}
            await cs.call("BootNotification", boot)
            ok = await cs.call("Authorize", {"idToken": {"idToken": "RFID-1", "type": "ISO14443"}})
            assert ok["idTokenInfo"]["status"] == "Accepted"
            refused = await cs.call(
                "Authorize", {"idToken": {"idToken": "NOBODY", "type": "ISO14443"}}
            )
            assert refused["idTokenInfo"]["status"] == "Unknown"
            blocked = _transaction_event("Started", 0, 0, 1000)
            blocked["idToken"] = {"idToken": "BLOCKED-1", "type": "ISO14443"}
            await cs.call("TransactionEvent", blocked)
        async with station(running, "CS-B", "ocpp1.6") as cs16:
            await cs16.call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
            assert (await cs16.call("Authorize", {"idTag": "NOBODY"}))["idTagInfo"]["status"] == (
                "Invalid"
            )
            start = {"connectorId": 1, "idTag": "BLOCKED-1", "meterStart": 0, "timestamp": T0}
            answer = await cs16.call("StartTransaction", start)
        page = await log.read(limit=1000, kinds=frozenset({"authorization.refused"}))

    refusals = [
        (e.station_id, e.data["action"], e.data["id_token"], e.data["status"]) for e in page.events
    ]
    assert refusals == [
        ("CS-A", "Authorize", "NOBODY", "Unknown"),
        ("CS-A", "TransactionEvent", "BLOCKED-1", "Blocked"),
        ("CS-B", "Authorize", "NOBODY", "Unknown"),
        ("CS-B", "StartTransaction", "BLOCKED-1", "Blocked"),
    ]
    assert page.events[1].data["transaction_id"] == "TX-1"
    assert page.events[3].data["transaction_id"] == str(answer["transactionId"])
    assert page.events[0].data["id_token_type"] == "ISO14443"


async def test_csms_call_outcomes_yield_call_outcome() -> None:
    async with csms() as running, station(running, "CS-C", "ocpp2.0.1") as cs:
        log = running.services.events
        boot = {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}
        await cs.call("BootNotification", boot)
        reset_id = await running.manager.calls.call(
            "CS-C", "ocpp2.0.1", "Reset", {"type": "Immediate"}
        )
        first = await until(log, "call.outcome", "CS-C")
        clear_id = await running.manager.calls.call("CS-C", "ocpp2.0.1", "ClearCache", {})
        page = await log.wait(first.id, scaled(5), kinds=frozenset({"call.outcome"}))

    assert first.data["action"] == "Reset" and first.data["outcome"] == "result"
    assert first.data["message_id"] == reset_id and first.data["error_code"] is None
    assert first.data["origin"] == f"manager:{running.manager.instance_id}"
    [error] = page.events
    assert error.data["action"] == "ClearCache" and error.data["outcome"] == "error"
    assert error.data["message_id"] == clear_id and error.data["error_code"] == "NotSupported"
    assert error.key == f"CS-C:{clear_id}:call.outcome"


async def test_events_to_mqtt_copies_each_event_to_the_bus() -> None:
    async with csms(events_to_mqtt=True) as running:
        assert running.broker is not None
        async with running.broker.client() as listener:
            await listener.subscribe("cs/state/#")
            async with station(running, "depot/CS 1", "ocpp2.0.1") as cs:
                boot = {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}
                await cs.call("BootNotification", boot)
            received: dict[str, Event] = {}
            async with asyncio.timeout(scaled(5)):
                async for message in listener.messages():
                    event = msgspec.json.decode(message.payload, type=Event)
                    received[message.topic] = event
                    message.ack()
                    if event.kind == "station.disconnected":
                        break
        logged = await events_of(running.services.events, "depot/CS 1")

    assert list(received) == [
        "cs/state/station.connected/depot%2FCS%201",
        "cs/state/station.booted/depot%2FCS%201",
        "cs/state/station.disconnected/depot%2FCS%201",
    ]
    assert list(received.values()) == logged
