"""OCPP 2.0.1 handlers on the in-memory services: decisions, persistence, schema-valid answers.

Every request is checked against its request schema before the handler sees it (as the
router does) and every answer against its response schema.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from csms.bus.memory import MemoryBroker
from csms.config import Settings, TariffSettings
from csms.envelope import OriginalCall
from csms.rpc import RpcError
from csms.topics import Topics
from csms.versions import OcppVersion
from manager.common.registration import registration_refusal
from manager.context import OcppError, ResultContext
from manager.v201 import HANDLERS, RESULT_HANDLERS
from ocpp_schemas import Direction, actions, validate
from operations.call_maker import CallMaker
from services.models import (
    RegistrationStatus,
    TokenRecord,
    TransactionState,
)
from services.tariff import ConfiguredTariff
from tests.unit import handler_harness
from tests.unit.handler_harness import NOW_ISO

STATION = "CS-1"
TARIFF = TariffSettings(
    energy_price_per_kwh=Decimal("0.40"),
    time_price_per_hour=Decimal("1.00"),
    session_fee=Decimal("0.50"),
)


async def wh_readings(h: Harness, transaction_id: str) -> list[float]:
    """The stored readings of a transaction of STATION, in Wh, in counting order."""
    readings = await h.services.transactions.readings(STATION, transaction_id)
    return [reading.wh for reading in readings]


class Harness(handler_harness.Harness):
    """Calls 2.0.1 handlers the way the router does, on in-memory services."""

    version = OcppVersion.OCPP201
    handlers = HANDLERS
    station = STATION


BOOT = {
    "reason": "PowerUp",
    "chargingStation": {
        "vendorName": "Acme",
        "model": "DC 50",
        "serialNumber": "SN-1",
        "firmwareVersion": "2.0",
        "modem": {"iccid": "8931", "imsi": "2040"},
    },
}


@pytest.fixture
async def h() -> Harness:
    harness = Harness(Settings(tariff=TARIFF))
    await harness.provision()
    await harness.seed_tokens()
    await harness.services.tokens.put(TokenRecord(id_token="CARD", token_type="ISO14443"))
    return harness


def test_handler_tables_name_real_actions() -> None:
    assert set(HANDLERS) <= actions(OcppVersion.OCPP201)
    assert set(RESULT_HANDLERS) <= actions(OcppVersion.OCPP201)
    for action in ("BootNotification", "Heartbeat", "StatusNotification", "Authorize"):
        assert action in HANDLERS
    for action in ("TransactionEvent", "MeterValues"):
        assert action in HANDLERS


# --- BootNotification, Heartbeat, StatusNotification -----------------------------------------


@pytest.mark.parametrize(
    ("registration", "interval"),
    [
        (RegistrationStatus.ACCEPTED, 300),
        (RegistrationStatus.PENDING, 60),
        (RegistrationStatus.REJECTED, 60),
    ],
)
async def test_boot_known_station(registration: RegistrationStatus, interval: int) -> None:
    h = Harness(Settings(unknown_stations="accept"))
    await h.provision(registration=registration)
    response = await h.call("BootNotification", BOOT)
    assert response == {"status": registration.value, "currentTime": NOW_ISO, "interval": interval}
    record = await h.services.stations.get(STATION)
    assert record is not None and record.boot is not None
    assert record.ocpp_version == OcppVersion.OCPP201
    assert (record.boot.vendor, record.boot.model, record.boot.reason) == (
        "Acme",
        "DC 50",
        "PowerUp",
    )
    assert (record.boot.iccid, record.boot.imsi) == ("8931", "2040")


@pytest.mark.parametrize(
    ("policy", "status"), [("accept", "Accepted"), ("pending", "Pending"), ("reject", "Rejected")]
)
async def test_boot_unknown_station_follows_policy(policy: Any, status: str) -> None:
    h = Harness(Settings(unknown_stations=policy))
    response = await h.call("BootNotification", BOOT, station="NEW")
    assert response["status"] == status
    record = await h.services.stations.get("NEW")
    assert record is not None and not record.known and record.registration == status


async def test_rejected_station_gets_security_error() -> None:
    """B03.FR.07: the CSMS answers other messages of a Rejected station with SecurityError."""
    h = Harness()
    await h.provision(registration=RegistrationStatus.REJECTED)
    await h.call("BootNotification", BOOT)
    with pytest.raises(OcppError) as caught:
        await h.call(
            "TransactionEvent", event("Started", 0, "2025-01-15T10:00:00Z", "CablePluggedIn")
        )
    assert caught.value.error is RpcError.SECURITY_ERROR
    assert await h.services.transactions.get(STATION, "TX-1") is None


async def test_heartbeat_and_status_notification(h: Harness) -> None:
    assert await h.call("Heartbeat", {}) == {"currentTime": NOW_ISO}
    status = {
        "timestamp": "2025-01-15T11:00:00Z",
        "connectorStatus": "Occupied",
        "evseId": 2,
        "connectorId": 1,
    }
    assert await h.call("StatusNotification", status) == {}
    [stored] = await h.services.stations.connector_statuses(STATION)
    assert (stored.evse_id, stored.connector_id, stored.status) == (2, 1, "Occupied")
    assert stored.at == "2025-01-15T11:00:00Z"


async def test_meter_values_outside_transactions(h: Harness) -> None:
    payload = {
        "evseId": 0,
        "meterValue": [
            {
                "timestamp": "2025-01-15T11:00:00Z",
                "sampledValue": [{"value": 123.4, "unitOfMeasure": {"unit": "kWh"}}],
            }
        ],
    }
    assert await h.call("MeterValues", payload) == {}


# --- Authorize -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (
            {"idToken": "TAG1", "type": "ISO14443"},
            {"status": "Accepted", "groupIdToken": {"idToken": "FLEET", "type": "Central"}},
        ),
        ({"idToken": "BLOCKED", "type": "ISO14443"}, {"status": "Blocked"}),
        (
            {"idToken": "OLD", "type": "ISO14443"},
            {
                "status": "Expired",
                "cacheExpiryDateTime": "2024-12-31T23:59:59.000Z",
                "groupIdToken": {"idToken": "FLEET", "type": "Central"},
            },
        ),
        ({"idToken": "NOBODY", "type": "ISO14443"}, {"status": "Unknown"}),
        ({"idToken": "CARD", "type": "ISO14443"}, {"status": "Accepted"}),
        ({"idToken": "CARD", "type": "eMAID"}, {"status": "Unknown"}),  # another token type
        ({"idToken": "", "type": "NoAuthorization"}, {"status": "Accepted"}),
    ],
)
async def test_authorize(h: Harness, token: dict[str, str], expected: dict[str, Any]) -> None:
    assert await h.call("Authorize", {"idToken": token}) == {"idTokenInfo": expected}


async def test_authorize_leaves_out_what_the_schema_cannot_carry(h: Harness) -> None:
    await h.services.tokens.put(
        TokenRecord(id_token="ODD", group_id="G" * 40, expiry="next tuesday")
    )
    response = await h.call("Authorize", {"idToken": {"idToken": "ODD", "type": "Central"}})
    assert response == {"idTokenInfo": {"status": "Expired"}}  # unreadable expiry fails closed


# --- TransactionEvent ----------------------------------------------------------------------


def event(
    event_type: str,
    seq_no: int,
    at: str,
    trigger: str,
    tx: str = "TX-1",
    info: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "eventType": event_type,
        "timestamp": at,
        "triggerReason": trigger,
        "seqNo": seq_no,
        "transactionInfo": {"transactionId": tx, **(info or {})},
        **extra,
    }


def meter(at: str, value: float, unit: str = "Wh", context: str | None = None) -> list[Any]:
    register: dict[str, Any] = {
        "value": value,
        "measurand": "Energy.Active.Import.Register",
        "unitOfMeasure": {"unit": unit},
    }
    if context:
        register["context"] = context
    phase = {**register, "value": value / 3, "phase": "L1"}
    return [{"timestamp": at, "sampledValue": [phase, register]}]


TAG1 = {"idToken": "TAG1", "type": "ISO14443"}
TAG2 = {"idToken": "TAG2", "type": "ISO14443"}
ACCEPTED_TAG1 = {"status": "Accepted", "groupIdToken": {"idToken": "FLEET", "type": "Central"}}

STARTED = event(
    "Started",
    0,
    "2025-01-15T10:00:00Z",
    "Authorized",
    info={"chargingState": "EVConnected", "remoteStartId": 7},
    idToken=TAG1,
    evse={"id": 1, "connectorId": 1},
    meterValue=meter("2025-01-15T10:00:00Z", 1000, context="Transaction.Begin"),
)
CHARGING = event(
    "Updated",
    1,
    "2025-01-15T10:30:00Z",
    "ChargingStateChanged",
    info={"chargingState": "Charging"},
    meterValue=meter("2025-01-15T10:30:00Z", 5.0, unit="kWh"),
)
PERIODIC = event(
    "Updated",
    2,
    "2025-01-15T10:45:00Z",
    "MeterValuePeriodic",
    meterValue=meter("2025-01-15T10:45:00Z", 7.25, unit="kWh"),
)
ENDED = event(
    "Ended",
    3,
    "2025-01-15T11:00:00Z",
    "EVDeparted",
    info={"chargingState": "Idle", "stoppedReason": "EVDisconnected"},
    meterValue=meter("2025-01-15T11:00:00Z", 8500, context="Transaction.End"),
)
SESSION_COST = 4.5  # 0.50 fee + 7.5 kWh x 0.40 + 1 h x 1.00


async def test_session_started_updated_ended(h: Harness) -> None:
    assert await h.call("TransactionEvent", STARTED) == {"idTokenInfo": ACCEPTED_TAG1}
    tx = await h.tx("TX-1")
    assert tx.state is TransactionState.ACTIVE
    assert (tx.evse_id, tx.connector_id, tx.charging_state) == (1, 1, "EVConnected")
    assert (tx.id_token, tx.id_token_type, tx.group_id) == ("TAG1", "ISO14443", "FLEET")
    assert (tx.started_at, tx.meter_start_wh, tx.remote_start_id) == (
        "2025-01-15T10:00:00Z",
        1000,
        7,
    )
    assert tx.version == OcppVersion.OCPP201

    assert await h.call("TransactionEvent", CHARGING) == {}
    assert await h.call("TransactionEvent", PERIODIC) == {}
    tx = await h.tx("TX-1")
    assert tx.charging_state == "Charging"
    assert tx.energy_wh == 6250

    response = await h.call("TransactionEvent", ENDED)
    assert response == {"totalCost": SESSION_COST}
    tx = await h.tx("TX-1")
    assert tx.state is TransactionState.ENDED
    assert (tx.ended_at, tx.stop_reason, tx.meter_stop_wh) == (
        "2025-01-15T11:00:00Z",
        "EVDisconnected",
        8500,
    )
    assert await wh_readings(h, tx.transaction_id) == [1000, 5000, 7250, 8500]
    assert tx.energy_wh == 7500
    assert await h.services.transactions.seq_nos(STATION, tx.transaction_id) == [0, 1, 2, 3]
    assert tx.cost is not None
    assert (tx.cost.total, tx.cost.energy, tx.cost.time, tx.cost.fee) == (
        "4.50",
        "3.00",
        "1.00",
        "0.50",
    )
    assert not tx.offline
    assert await h.services.transactions.active(STATION) == []


async def test_ended_without_reason_is_local(h: Harness) -> None:
    await h.call("TransactionEvent", STARTED)
    ended = event("Ended", 1, "2025-01-15T10:30:00Z", "StopAuthorized", idToken=TAG1)
    response = await h.call("TransactionEvent", ended)
    assert response["idTokenInfo"] == ACCEPTED_TAG1
    assert response["totalCost"] == 1.0  # fee + half an hour, no energy reading
    assert (await h.tx("TX-1")).stop_reason == "Local"


async def test_seq_no_retry_is_not_applied_twice(h: Harness) -> None:
    await h.call("TransactionEvent", STARTED)
    await h.call("TransactionEvent", CHARGING)
    before = await h.tx("TX-1")
    # The same event again (the answer was lost): same answer, nothing changes.
    assert await h.call("TransactionEvent", CHARGING) == {}
    assert await h.tx("TX-1") == before
    # A retried Started answers idTokenInfo again without re-applying.
    assert await h.call("TransactionEvent", STARTED) == {"idTokenInfo": ACCEPTED_TAG1}
    assert await h.tx("TX-1") == before

    assert (await h.call("TransactionEvent", ENDED))["totalCost"] == SESSION_COST
    ended = await h.tx("TX-1")
    # A retried Ended gets the same totalCost, even with another tariff in force now.
    h.services.tariff = ConfiguredTariff(TariffSettings(energy_price_per_kwh=Decimal("9")))
    assert await h.call("TransactionEvent", ENDED) == {"totalCost": SESSION_COST}
    assert await h.tx("TX-1") == ended
    assert await h.services.transactions.seq_nos(STATION, ended.transaction_id) == [0, 1, 3]


async def test_out_of_order_ended_before_started(h: Harness) -> None:
    # The station was offline and its queue arrives in the wrong order.
    ended = {**ENDED, "offline": True}
    first = await h.call("TransactionEvent", ended)
    tx = await h.tx("TX-1")
    assert tx.state is TransactionState.ENDED
    assert tx.offline
    assert tx.started_at == tx.ended_at == "2025-01-15T11:00:00Z"
    assert first == {"totalCost": 0.5}  # only the fee is known so far

    assert await h.call("TransactionEvent", {**PERIODIC, "offline": True}) == {}
    assert (await h.tx("TX-1")).energy_wh == 1250
    # A late Updated never reopens the transaction nor overrides newer facts.
    tx = await h.tx("TX-1")
    assert (tx.state, tx.charging_state) == (TransactionState.ENDED, "Idle")

    started = await h.call("TransactionEvent", {**STARTED, "offline": True})
    assert started == {"idTokenInfo": ACCEPTED_TAG1}  # no totalCost outside Ended
    await h.call("TransactionEvent", {**CHARGING, "offline": True})
    tx = await h.tx("TX-1")
    assert tx.state is TransactionState.ENDED
    assert (tx.started_at, tx.ended_at) == ("2025-01-15T10:00:00Z", "2025-01-15T11:00:00Z")
    assert (tx.id_token, tx.evse_id, tx.charging_state) == ("TAG1", 1, "Idle")
    assert tx.energy_wh == 7500
    assert await h.services.transactions.seq_nos(STATION, tx.transaction_id) == [0, 1, 2, 3]
    # Late events re-priced the ended transaction with everything now known.
    assert tx.cost is not None and tx.cost.total == "4.50"
    assert await h.call("TransactionEvent", {**ENDED, "offline": True}) == {
        "totalCost": SESSION_COST
    }


async def test_updated_before_started_creates_the_transaction(h: Harness) -> None:
    assert await h.call("TransactionEvent", PERIODIC) == {}
    tx = await h.tx("TX-1")
    assert tx.state is TransactionState.ACTIVE
    assert tx.started_at == "2025-01-15T10:45:00Z"
    await h.call("TransactionEvent", STARTED)
    tx = await h.tx("TX-1")
    assert (tx.started_at, tx.id_token, tx.energy_wh) == ("2025-01-15T10:00:00Z", "TAG1", 6250)


async def test_offline_events_are_flagged(h: Harness) -> None:
    await h.call("TransactionEvent", STARTED)
    await h.call("TransactionEvent", {**CHARGING, "offline": True})
    assert (await h.tx("TX-1")).offline


async def test_concurrent_tx_only_in_answers_to_started(h: Harness) -> None:
    started_a = event(
        "Started", 0, "2025-01-15T10:00:00Z", "Authorized", tx="A", idToken=TAG2, evse={"id": 1}
    )
    assert (await h.call("TransactionEvent", started_a))["idTokenInfo"]["status"] == "Accepted"
    # Presenting the token to its own transaction again is no second session.
    again = event("Updated", 1, "2025-01-15T10:05:00Z", "Authorized", tx="A", idToken=TAG2)
    assert (await h.call("TransactionEvent", again))["idTokenInfo"]["status"] == "Accepted"
    # The same token starts another transaction live on another EVSE: ConcurrentTx.
    started_b = {**started_a, "transactionInfo": {"transactionId": "B"}, "evse": {"id": 2}}
    assert (await h.call("TransactionEvent", started_b))["idTokenInfo"]["status"] == "ConcurrentTx"
    # Authorized after the cable was plugged in (Started had no token): an Updated event is
    # never answered ConcurrentTx, nor is an Ended one.
    plugged = event("Started", 0, "2025-01-15T10:00:00Z", "CablePluggedIn", tx="C", evse={"id": 3})
    assert await h.call("TransactionEvent", plugged) == {}
    authorized = event("Updated", 1, "2025-01-15T10:01:00Z", "Authorized", tx="C", idToken=TAG2)
    assert (await h.call("TransactionEvent", authorized))["idTokenInfo"]["status"] == "Accepted"
    assert (await h.tx("C")).id_token == "TAG2"
    ended_c = event("Ended", 2, "2025-01-15T10:02:00Z", "StopAuthorized", tx="C", idToken=TAG2)
    assert (await h.call("TransactionEvent", ended_c))["idTokenInfo"]["status"] == "Accepted"
    # Offline, the session already happened: no ConcurrentTx.
    offline = {
        **started_a,
        "transactionInfo": {"transactionId": "D"},
        "evse": {"id": 4},
        "offline": True,
    }
    assert (await h.call("TransactionEvent", offline))["idTokenInfo"]["status"] == "Accepted"
    # Stopping its own transaction is never refused as concurrent.
    stop = event("Updated", 2, "2025-01-15T10:06:00Z", "StopAuthorized", tx="A", idToken=TAG2)
    assert (await h.call("TransactionEvent", stop))["idTokenInfo"]["status"] == "Accepted"


async def test_refused_token_is_answered_and_the_transaction_kept(h: Harness) -> None:
    started = {**STARTED, "idToken": {"idToken": "BLOCKED", "type": "ISO14443"}}
    assert await h.call("TransactionEvent", started) == {"idTokenInfo": {"status": "Blocked"}}
    tx = await h.tx("TX-1")
    assert (tx.state, tx.id_token) == (TransactionState.ACTIVE, "BLOCKED")


async def test_evse_and_meter_multiplier(h: Harness) -> None:
    start = event(
        "Started",
        0,
        "2025-01-15T10:00:00Z",
        "EVDetected",
        evse={"id": 2},
        meterValue=[
            {
                "timestamp": "2025-01-15T10:00:00Z",
                "sampledValue": [{"value": 12, "unitOfMeasure": {"unit": "Wh", "multiplier": 3}}],
            }
        ],
    )
    await h.call("TransactionEvent", start)
    tx = await h.tx("TX-1")
    assert (tx.evse_id, tx.connector_id) == (2, None)
    assert await wh_readings(h, tx.transaction_id) == [12000]


# --- absurd meter values -------------------------------------------------------------------


async def test_absurd_meter_values_are_dropped_and_the_session_priced(h: Harness) -> None:
    assert await h.call("TransactionEvent", STARTED) == {"idTokenInfo": ACCEPTED_TAG1}
    updated = json.loads(
        """{"eventType": "Updated", "timestamp": "2025-01-15T10:20:00Z",
            "triggerReason": "MeterValuePeriodic", "seqNo": 1,
            "transactionInfo": {"transactionId": "TX-1"},
            "meterValue": [
              {"timestamp": "2025-01-15T10:10:00Z", "sampledValue": [{"value": 1e30}]},
              {"timestamp": "2025-01-15T10:15:00Z", "sampledValue": [{"value": -500,
               "unitOfMeasure": {"unit": "Wh"}}]},
              {"timestamp": "2025-01-15T10:18:00Z", "sampledValue": [{"value": 5,
               "unitOfMeasure": {"unit": "kWh", "multiplier": 9}}]}
            ]}"""
    )
    with capture_logs() as logs:
        assert await h.call("TransactionEvent", updated) == {}
    rejected = [e for e in logs if e["event"] == "meter_value_rejected"]
    assert [(e["value"], e["reason"], e["transaction_id"]) for e in rejected] == [
        ("1e+30", "out_of_range", "TX-1"),
        ("-500", "negative", "TX-1"),
        ("5", "out_of_range", "TX-1"),
    ]
    assert await wh_readings(h, "TX-1") == [1000]
    assert await h.call("TransactionEvent", CHARGING) == {}
    assert await h.call("TransactionEvent", PERIODIC) == {}
    # Priced on the plausible readings; a retry gets the same answer.
    for _ in range(2):
        assert await h.call("TransactionEvent", ENDED) == {"totalCost": SESSION_COST}
    assert (await h.tx("TX-1")).energy_wh == 7500


async def test_meter_values_with_absurd_values_are_answered(h: Harness) -> None:
    frame = json.loads(
        """{"evseId": 1, "meterValue": [{"timestamp": "2025-01-15T11:00:00Z",
            "sampledValue": [{"value": 1e300, "unitOfMeasure": {"unit": "kWh"}}]}]}"""
    )
    with capture_logs() as logs:
        assert await h.call("MeterValues", frame) == {}
    assert [e["reason"] for e in logs if e["event"] == "meter_value_rejected"] == ["out_of_range"]


# --- registration ----------------------------------------------------------------------------


def test_registration_refusal() -> None:
    accepted, pending, rejected = (
        RegistrationStatus.ACCEPTED,
        RegistrationStatus.PENDING,
        RegistrationStatus.REJECTED,
    )
    assert registration_refusal(accepted, "TransactionEvent") is None
    for registration in (pending, rejected):
        assert registration_refusal(registration, "BootNotification") is None
    for action in ("Heartbeat", "StatusNotification", "NotifyReport", "SignCertificate"):
        assert registration_refusal(pending, action) is None
        refusal = registration_refusal(rejected, action)
        assert refusal is not None and refusal.error is RpcError.SECURITY_ERROR
    for action in ("Authorize", "TransactionEvent", "MeterValues", "DataTransfer", "Nonsense"):
        refusal = registration_refusal(pending, action)
        assert refusal is not None and refusal.error is RpcError.SECURITY_ERROR
        assert refusal.details == {"registration": "Pending"}


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("Authorize", {"idToken": TAG1}),
        ("TransactionEvent", STARTED),
        ("MeterValues", {"evseId": 1, "meterValue": meter("2025-01-15T10:00:00Z", 5.0)}),
        ("DataTransfer", {"vendorId": "com.acme"}),
        ("SecurityEventNotification", {"type": "X", "timestamp": "2025-01-15T10:00:00Z"}),
        (
            "NotifyEvent",
            {
                "generatedAt": "2025-01-15T11:00:00Z",
                "seqNo": 0,
                "eventData": [
                    {
                        "eventId": 1,
                        "timestamp": "2025-01-15T11:00:00Z",
                        "trigger": "Delta",
                        "actualValue": "1",
                        "eventNotificationType": "HardWiredNotification",
                        "component": {"name": "EVSE"},
                        "variable": {"name": "Power"},
                    }
                ],
            },
        ),
    ],
)
async def test_pending_station_gets_security_error(action: str, payload: dict[str, Any]) -> None:
    """B02.FR.09: a Pending station may send only BootNotification and triggered messages."""
    h = Harness(Settings(unknown_stations="pending"))
    await h.seed_tokens()
    assert (await h.call("BootNotification", BOOT, station="NEW"))["status"] == "Pending"
    with pytest.raises(OcppError) as caught:
        await h.call(action, payload, station="NEW")
    assert caught.value.error is RpcError.SECURITY_ERROR
    assert await h.services.transactions.get("NEW", "TX-1") is None


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("Heartbeat", {}),
        (
            "StatusNotification",
            {
                "timestamp": "2025-01-15T11:00:00Z",
                "connectorStatus": "Available",
                "evseId": 1,
                "connectorId": 1,
            },
        ),
        ("FirmwareStatusNotification", {"status": "Idle"}),
        ("LogStatusNotification", {"status": "Idle"}),
        (
            "NotifyReport",
            {"requestId": 1, "generatedAt": "2025-01-15T11:00:00Z", "seqNo": 0},
        ),
    ],
)
async def test_pending_station_may_send_what_the_csms_triggers(
    action: str, payload: dict[str, Any]
) -> None:
    h = Harness(Settings(unknown_stations="pending"))
    await h.call("BootNotification", BOOT, station="NEW")
    validate(OcppVersion.OCPP201, action, Direction.REQUEST, payload)
    assert "status" not in await h.call(action, payload, station="NEW")


# --- stale transactions ----------------------------------------------------------------------


async def test_started_on_an_evse_supersedes_its_stale_transaction(h: Harness) -> None:
    await h.call("TransactionEvent", STARTED)
    await h.call("TransactionEvent", CHARGING)
    # The station rebooted and lost TX-1's Ended; the driver starts again on EVSE 1.
    restarted = event(
        "Started",
        0,
        "2025-01-15T11:00:00Z",
        "Authorized",
        tx="TX-2",
        idToken=TAG1,
        evse={"id": 1, "connectorId": 1},
        meterValue=meter("2025-01-15T11:00:00Z", 5200, context="Transaction.Begin"),
    )
    with capture_logs() as logs:
        assert await h.call("TransactionEvent", restarted) == {"idTokenInfo": ACCEPTED_TAG1}
    old = await h.tx("TX-1")
    assert old.state is TransactionState.ENDED
    assert (old.stop_reason, old.superseded_by, old.ended_at) == (
        "Other",
        "TX-2",
        "2025-01-15T10:30:00Z",
    )
    assert old.energy_wh == 4000
    assert old.cost is not None and old.cost.total == "2.60"  # 0.50 + 4 kWh + half an hour
    [superseded] = [e for e in logs if e["event"] == "transaction_superseded"]
    assert (superseded["transaction_id"], superseded["superseded_by"]) == ("TX-1", "TX-2")
    assert [tx.transaction_id for tx in await h.services.transactions.active(STATION)] == ["TX-2"]
    # Really charging on EVSE 1 now: starting on EVSE 2 as well is ConcurrentTx.
    elsewhere = {**restarted, "transactionInfo": {"transactionId": "TX-3"}, "evse": {"id": 2}}
    assert (await h.call("TransactionEvent", elsewhere))["idTokenInfo"]["status"] == "ConcurrentTx"
    # An older session the station queued while offline does not close the newer one.
    queued = {
        **STARTED,
        "timestamp": "2025-01-15T09:00:00Z",
        "transactionInfo": {"transactionId": "TX-0"},
        "offline": True,
    }
    await h.call("TransactionEvent", queued)
    assert (await h.tx("TX-2")).state is TransactionState.ACTIVE
    # TX-1's own Ended, should it still arrive, replaces what the CSMS assumed.
    assert await h.call("TransactionEvent", {**ENDED, "offline": True}) == {
        "totalCost": SESSION_COST
    }
    old = await h.tx("TX-1")
    assert (old.stop_reason, old.superseded_by) == ("EVDisconnected", None)


# --- after the end ---------------------------------------------------------------------------


async def test_readings_after_the_end_do_not_reprice(h: Harness) -> None:
    for message in (STARTED, CHARGING, PERIODIC):
        await h.call("TransactionEvent", message)
    ended = {
        **ENDED,
        "meterValue": [
            *meter("2025-01-15T11:00:00Z", 8500, context="Transaction.End"),
            *meter("2025-01-15T11:05:00Z", 8900),  # sampled after the end
        ],
    }
    assert await h.call("TransactionEvent", ended) == {"totalCost": SESSION_COST}
    final = await h.tx("TX-1")
    assert final.energy_wh == 7500
    # Another tariff is in force now: nothing after the end may re-price the session.
    h.services.tariff = ConfiguredTariff(TariffSettings(energy_price_per_kwh=Decimal("9")))
    after = event(
        "Updated",
        4,
        "2025-01-15T11:30:00Z",
        "MeterValuePeriodic",
        meterValue=meter("2025-01-15T11:30:00Z", 9.5, unit="kWh"),
    )
    assert await h.call("TransactionEvent", after) == {}
    # Numbered after the Ended event, whatever its sample's timestamp says.
    skewed = event(
        "Updated",
        5,
        "2025-01-15T10:50:00Z",
        "MeterValuePeriodic",
        meterValue=meter("2025-01-15T10:50:00Z", 20, unit="kWh"),
    )
    assert await h.call("TransactionEvent", skewed) == {}
    tx = await h.tx("TX-1")
    assert (tx.energy_wh, tx.cost) == (final.energy_wh, final.cost)
    assert await h.services.transactions.seq_nos(STATION, tx.transaction_id) == [0, 1, 2, 3, 4, 5]
    assert await h.call("TransactionEvent", ended) == {"totalCost": SESSION_COST}


# --- running cost ----------------------------------------------------------------------------


class RecordingCalls(CallMaker):
    """A CallMaker that records the calls it is asked to send (schema-checked)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    async def call(
        self,
        station_id: str,
        version: str,
        action: str,
        payload: dict[str, Any],
        *,
        meta: dict[str, str] | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
    ) -> str:
        validate(version, action, Direction.REQUEST, payload)
        self.sent.append((station_id, action, payload))
        return f"c{len(self.sent)}"


async def test_running_cost_is_sent_in_cost_updated(h: Harness) -> None:
    calls = RecordingCalls()
    h.calls = calls
    await h.call("TransactionEvent", STARTED)
    assert calls.sent == []  # no energy delivered yet
    assert await h.call("TransactionEvent", CHARGING) == {}  # totalCost only once ended
    # 0.50 fee + 4 kWh x 0.40 + half an hour x 1.00
    assert calls.sent == [
        (STATION, "CostUpdated", {"totalCost": 2.6, "transactionId": "TX-1"}),
    ]
    assert await h.call("TransactionEvent", CHARGING) == {}  # a retry: not applied again
    suspended = event(
        "Updated",
        2,
        "2025-01-15T10:40:00Z",
        "ChargingStateChanged",
        info={"chargingState": "SuspendedEV"},
        meterValue=meter("2025-01-15T10:30:00Z", 5.0, unit="kWh"),  # the same register value
    )
    assert await h.call("TransactionEvent", suspended) == {}
    assert len(calls.sent) == 1  # the energy did not change: not priced, nothing sent
    periodic = {**PERIODIC, "seqNo": 3}
    assert await h.call("TransactionEvent", periodic) == {}
    assert calls.sent[-1] == (STATION, "CostUpdated", {"totalCost": 3.75, "transactionId": "TX-1"})
    queued = event(
        "Updated",
        4,
        "2025-01-15T10:50:00Z",
        "MeterValuePeriodic",
        meterValue=meter("2025-01-15T10:50:00Z", 7.5, unit="kWh"),
        offline=True,
    )
    assert await h.call("TransactionEvent", queued) == {}
    assert len(calls.sent) == 2  # old news from the station's queue: no running cost
    assert await h.call("TransactionEvent", {**ENDED, "seqNo": 5}) == {"totalCost": SESSION_COST}
    assert len(calls.sent) == 2


async def test_running_cost_goes_out_once_per_interval_of_meter_time(h: Harness) -> None:
    """Readings every 20 s with the default 60 s interval: one CostUpdated each time the
    meter time since the start enters a new minute, not one per reading."""
    assert h.settings.running_cost_interval == 60
    calls = RecordingCalls()
    h.calls = calls
    await h.call("TransactionEvent", STARTED)  # 10:00:00, 1 kWh on the register
    sent_after = []
    for seq_no, second in enumerate(range(20, 200, 20), start=1):  # 10:00:20 ... 10:03:00
        at = f"2025-01-15T10:{second // 60:02d}:{second % 60:02d}Z"
        reading = event(
            "Updated", seq_no, at, "MeterValuePeriodic", meterValue=meter(at, 1000 + 10 * second)
        )
        assert await h.call("TransactionEvent", reading) == {}
        sent_after.append(len(calls.sent))
    # The readings at 60 s, 120 s and 180 s start a new minute; the others do not.
    assert sent_after == [0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert {action for _, action, _ in calls.sent} == {"CostUpdated"}


async def test_running_cost_that_cannot_be_sent_does_not_fail_the_event(h: Harness) -> None:
    broker = MemoryBroker()
    broker.available = False  # a broker outage: publishing the call fails
    h.calls = CallMaker(broker.client(), Topics())
    await h.call("TransactionEvent", STARTED)
    with capture_logs() as logs:
        assert await h.call("TransactionEvent", CHARGING) == {}
    assert "running_cost_not_sent" in [e["event"] for e in logs]
    assert (await h.tx("TX-1")).energy_wh == 4000


# --- small messages ------------------------------------------------------------------------


async def test_data_transfer_is_unknown_vendor(h: Harness) -> None:
    response = await h.call("DataTransfer", {"vendorId": "com.acme", "data": {"a": 1}})
    assert response == {"status": "UnknownVendorId"}


COMPONENT = {"name": "EVSE", "evse": {"id": 1}}
VARIABLE = {"name": "Power"}


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        (
            "NotifyReport",
            {
                "requestId": 1,
                "generatedAt": "2025-01-15T11:00:00Z",
                "seqNo": 0,
                "reportData": [
                    {
                        "component": COMPONENT,
                        "variable": VARIABLE,
                        "variableAttribute": [{"value": "22000"}],
                    }
                ],
            },
        ),
        (
            "NotifyEvent",
            {
                "generatedAt": "2025-01-15T11:00:00Z",
                "seqNo": 0,
                "eventData": [
                    {
                        "eventId": 1,
                        "timestamp": "2025-01-15T11:00:00Z",
                        "trigger": "Delta",
                        "actualValue": "Faulted",
                        "eventNotificationType": "HardWiredNotification",
                        "component": {"name": "Connector", "evse": {"id": 1, "connectorId": 1}},
                        "variable": {"name": "AvailabilityState"},
                    }
                ],
            },
        ),
        (
            "SecurityEventNotification",
            {"type": "StartupOfTheDevice", "timestamp": "2025-01-15T11:00:00Z"},
        ),
        ("FirmwareStatusNotification", {"status": "Installed", "requestId": 5}),
        ("LogStatusNotification", {"status": "Uploaded", "requestId": 6}),
    ],
)
async def test_notifications_are_acknowledged(
    h: Harness, action: str, payload: dict[str, Any]
) -> None:
    with capture_logs() as logs:
        assert await h.call(action, payload) == {}
    assert len(logs) == 1


# --- results -------------------------------------------------------------------------------


def set_variables_ctx(h: Harness, **answer: Any) -> ResultContext:
    request = {
        "setVariableData": [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": VARIABLE, "attributeValue": "60"},
            {
                "component": COMPONENT,
                "variable": {"name": "Nonsense"},
                "attributeValue": "x",
                "attributeType": "Target",
            },
        ]
    }
    validate(OcppVersion.OCPP201, "SetVariables", Direction.REQUEST, request)
    return ResultContext(
        station_id=STATION,
        version=OcppVersion.OCPP201,
        request=OriginalCall(message_id="c1", action="SetVariables", payload=request),
        services=h.services,
        settings=h.settings,
        calls=h.calls,
        log=structlog.get_logger(),
        **answer,
    )


async def test_set_variables_result_is_logged_per_variable(h: Harness) -> None:
    payload = {
        "setVariableResult": [
            {
                "attributeStatus": "Accepted",
                "component": {"name": "OCPPCommCtrlr"},
                "variable": VARIABLE,
            },
            {
                "attributeStatus": "UnknownVariable",
                "attributeType": "Target",
                "attributeStatusInfo": {"reasonCode": "NoSuchVar"},
                "component": COMPONENT,
                "variable": {"name": "Nonsense"},
            },
        ]
    }
    validate(OcppVersion.OCPP201, "SetVariables", Direction.RESPONSE, payload)
    with capture_logs() as logs:
        await RESULT_HANDLERS["SetVariables"](set_variables_ctx(h, payload=payload))
    assert [(e["variable"], e["value"], e["status"], e["log_level"]) for e in logs] == [
        ("Power", "60", "Accepted", "info"),
        ("Nonsense", "x", "UnknownVariable", "warning"),
    ]
    assert logs[1]["reason"] == "NoSuchVar"
    assert logs[1]["evse_id"] == 1


async def test_set_variables_failure_is_a_warning(h: Harness) -> None:
    with capture_logs() as logs:
        await RESULT_HANDLERS["SetVariables"](set_variables_ctx(h, undelivered="queue full"))
    assert [(e["event"], e["undelivered"], e["log_level"]) for e in logs] == [
        ("call_failed", "queue full", "warning")
    ]
