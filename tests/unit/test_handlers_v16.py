"""OCPP 1.6 handlers on the in-memory services: decisions, persistence, schema-valid answers.

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

from csms.config import Settings, TariffSettings
from csms.envelope import OriginalCall
from csms.rpc import RpcError
from csms.versions import OcppVersion
from manager.context import OcppError, ResultContext
from manager.v16 import HANDLERS, RESULT_HANDLERS
from ocpp_schemas import Direction, actions, validate
from services.models import (
    AuthorizationStatus,
    RegistrationStatus,
    TokenRecord,
    TransactionState,
)
from services.tariff import ConfiguredTariff
from tests.unit import handler_harness
from tests.unit.handler_harness import NOW_ISO

STATION = "CP-1"


async def wh_readings(h: Harness, transaction_id: str) -> list[float]:
    """The stored readings of a transaction of STATION, in Wh, in counting order."""
    readings = await h.services.transactions.readings(STATION, transaction_id)
    return [reading.wh for reading in readings]


class Harness(handler_harness.Harness):
    """Calls 1.6 handlers the way the router does, on in-memory services."""

    version = OcppVersion.OCPP16
    handlers = HANDLERS
    station = STATION


BOOT = {"chargePointVendor": "Acme", "chargePointModel": "Wallbox 22", "firmwareVersion": "1.2"}


@pytest.fixture
async def h() -> Harness:
    harness = Harness(
        Settings(
            tariff=TariffSettings(energy_price_per_kwh=Decimal("0.40")),
            heartbeat_interval=300,
            pending_retry_interval=60,
        )
    )
    await harness.provision()
    await harness.seed_tokens()
    return harness


def test_handler_tables_name_real_actions() -> None:
    assert set(HANDLERS) <= actions(OcppVersion.OCPP16)
    assert set(RESULT_HANDLERS) <= actions(OcppVersion.OCPP16)
    for action in ("BootNotification", "Heartbeat", "StatusNotification", "Authorize"):
        assert action in HANDLERS
    for action in ("StartTransaction", "StopTransaction", "MeterValues"):
        assert action in HANDLERS


# --- BootNotification ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registration", "interval"),
    [
        (RegistrationStatus.ACCEPTED, 300),
        (RegistrationStatus.PENDING, 60),
        (RegistrationStatus.REJECTED, 60),
    ],
)
async def test_boot_known_station_gets_its_registration(
    registration: RegistrationStatus, interval: int
) -> None:
    # The policy says reject: a known station's own registration wins over it.
    h = Harness(Settings(unknown_stations="reject"))
    await h.provision(registration=registration)
    response = await h.call("BootNotification", BOOT)
    assert response == {"status": registration.value, "currentTime": NOW_ISO, "interval": interval}
    record = await h.services.stations.get(STATION)
    assert record is not None and record.boot is not None
    assert record.known
    assert (record.boot.vendor, record.boot.model) == ("Acme", "Wallbox 22")
    assert record.boot.firmware_version == "1.2"
    assert record.ocpp_version == OcppVersion.OCPP16
    assert record.last_boot_at == NOW_ISO


@pytest.mark.parametrize(
    ("policy", "status", "interval"),
    [("accept", "Accepted", 300), ("pending", "Pending", 60), ("reject", "Rejected", 60)],
)
async def test_boot_unknown_station_follows_policy(policy: Any, status: str, interval: int) -> None:
    h = Harness(Settings(unknown_stations=policy))
    response = await h.call(
        "BootNotification", {**BOOT, "chargeBoxSerialNumber": "BOX-9"}, station="NEW-1"
    )
    assert response["status"] == status
    assert response["interval"] == interval
    record = await h.services.stations.get("NEW-1")
    assert record is not None and record.boot is not None
    assert not record.known
    assert record.registration == status
    assert record.boot.serial_number == "BOX-9"


async def test_unknown_station_reboot_is_decided_by_policy_again() -> None:
    h = Harness(Settings(unknown_stations="pending"))
    assert (await h.call("BootNotification", BOOT, station="NEW-1"))["status"] == "Pending"
    h.settings = Settings(unknown_stations="accept")
    assert (await h.call("BootNotification", BOOT, station="NEW-1"))["status"] == "Accepted"


async def test_rejected_station_may_only_boot() -> None:
    h = Harness(Settings(unknown_stations="reject"))
    await h.call("BootNotification", BOOT, station="NEW-1")
    calls: list[tuple[str, dict[str, Any]]] = [
        ("Heartbeat", {}),
        ("Authorize", {"idTag": "TAG1"}),
        ("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"}),
    ]
    for action, payload in calls:
        with pytest.raises(OcppError) as caught:
            await h.call(action, payload, station="NEW-1")
        assert caught.value.error is RpcError.SECURITY_ERROR
    # A station that never booted is judged by the policy too.
    with pytest.raises(OcppError):
        await h.call("Heartbeat", {}, station="NEVER-BOOTED")
    assert (await h.call("BootNotification", BOOT, station="NEW-1"))["status"] == "Rejected"


async def test_pending_station_may_send_heartbeat_and_status() -> None:
    h = Harness(Settings(unknown_stations="pending"))
    await h.call("BootNotification", BOOT, station="NEW-1")
    assert await h.call("Heartbeat", {}, station="NEW-1") == {"currentTime": NOW_ISO}
    status = {"connectorId": 0, "errorCode": "NoError", "status": "Available"}
    assert await h.call("StatusNotification", status, station="NEW-1") == {}


# --- Heartbeat, StatusNotification -----------------------------------------------------------


async def test_heartbeat_answers_csms_time(h: Harness) -> None:
    assert await h.call("Heartbeat", {}) == {"currentTime": NOW_ISO}


async def test_status_notification_is_stored_per_connector(h: Harness) -> None:
    await h.call(
        "StatusNotification",
        {
            "connectorId": 2,
            "errorCode": "GroundFailure",
            "status": "Faulted",
            "info": "RCD tripped",
            "vendorErrorCode": "E42",
            "timestamp": "2025-01-15T11:59:00Z",
        },
    )
    await h.call(
        "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
    )
    statuses = {s.connector_id: s for s in await h.services.stations.connector_statuses(STATION)}
    assert statuses[2].evse_id == 2
    assert (statuses[2].status, statuses[2].error_code) == ("Faulted", "GroundFailure")
    assert (statuses[2].info, statuses[2].vendor_error_code) == ("RCD tripped", "E42")
    assert statuses[2].at == "2025-01-15T11:59:00Z"
    assert statuses[1].status == "Charging"
    assert statuses[1].at == NOW_ISO


# --- Authorize -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("TAG1", {"status": "Accepted", "parentIdTag": "FLEET"}),
        ("BLOCKED", {"status": "Blocked"}),
        (
            "OLD",
            {"status": "Expired", "expiryDate": "2024-12-31T23:59:59.000Z", "parentIdTag": "FLEET"},
        ),
        ("NOBODY", {"status": "Invalid"}),  # Unknown does not exist in 1.6
    ],
)
async def test_authorize(h: Harness, tag: str, expected: dict[str, Any]) -> None:
    assert await h.call("Authorize", {"idTag": tag}) == {"idTagInfo": expected}


async def test_authorize_statuses_1_6_lacks_become_invalid_and_long_groups_are_left_out(
    h: Harness,
) -> None:
    await h.services.tokens.put(
        TokenRecord(
            id_token="BROKE",
            status=AuthorizationStatus.NO_CREDIT,
            group_id="A-GROUP-NAME-LONGER-THAN-20",
            expiry="2030-01-01T00:00:00Z",
        )
    )
    response = await h.call("Authorize", {"idTag": "BROKE"})
    assert response == {
        "idTagInfo": {"status": "Invalid", "expiryDate": "2030-01-01T00:00:00.000Z"}
    }


async def test_authorize_does_not_refuse_a_tag_with_a_running_transaction(h: Harness) -> None:
    await start(h, "TAG1", connector=1)
    assert (await h.call("Authorize", {"idTag": "TAG1"}))["idTagInfo"]["status"] == "Accepted"


# --- transactions --------------------------------------------------------------------------


async def start(
    h: Harness, tag: str, connector: int = 1, meter: int = 1000, station: str = STATION
) -> dict[str, Any]:
    return await h.call(
        "StartTransaction",
        {
            "connectorId": connector,
            "idTag": tag,
            "meterStart": meter,
            "timestamp": "2025-01-15T10:00:00Z",
        },
        station=station,
    )


def sample(at: str, value: str, unit: str = "kWh", **extra: str) -> dict[str, Any]:
    return {
        "timestamp": at,
        "sampledValue": [
            {"value": "230.1", "measurand": "Voltage", "unit": "V"},
            {"value": value, "measurand": "Energy.Active.Import.Register", "unit": unit, **extra},
        ],
    }


async def test_full_session_energy_and_cost(h: Harness) -> None:
    started = await start(h, "TAG1", connector=1, meter=1000)
    assert started["idTagInfo"] == {"status": "Accepted", "parentIdTag": "FLEET"}
    tx_id = started["transactionId"]
    tx = await h.services.transactions.get(STATION, str(tx_id))
    assert tx is not None
    assert (tx.state, tx.connector_id, tx.evse_id) == (TransactionState.ACTIVE, 1, 1)
    assert (tx.id_token, tx.group_id, tx.meter_start_wh) == ("TAG1", "FLEET", 1000)
    assert tx.started_at == "2025-01-15T10:00:00Z"
    assert await wh_readings(h, tx.transaction_id) == [1000]

    for at, kwh in [("2025-01-15T10:15:00Z", "2.5"), ("2025-01-15T10:30:00Z", "5.0")]:
        response = await h.call(
            "MeterValues",
            {"connectorId": 1, "transactionId": tx_id, "meterValue": [sample(at, kwh)]},
        )
        assert response == {}
    tx = await h.services.transactions.get(STATION, str(tx_id))
    assert tx is not None and tx.energy_wh == 4000

    stopped = await h.call(
        "StopTransaction",
        {
            "transactionId": tx_id,
            "idTag": "TAG1",
            "meterStop": 8500,
            "timestamp": "2025-01-15T11:00:00Z",
            "reason": "EVDisconnected",
            "transactionData": [sample("2025-01-15T10:45:00Z", "7.25")],
        },
    )
    assert stopped == {"idTagInfo": {"status": "Accepted", "parentIdTag": "FLEET"}}
    tx = await h.services.transactions.get(STATION, str(tx_id))
    assert tx is not None
    assert tx.state is TransactionState.ENDED
    assert (tx.ended_at, tx.stop_reason, tx.meter_stop_wh) == (
        "2025-01-15T11:00:00Z",
        "EVDisconnected",
        8500,
    )
    assert await wh_readings(h, tx.transaction_id) == [1000, 2500, 5000, 7250, 8500]
    assert tx.energy_wh == 7500
    assert tx.cost is not None
    assert (tx.cost.total, tx.cost.currency) == ("3.00", "EUR")  # 7.5 kWh x 0.40
    assert await h.services.transactions.active(STATION) == []


async def test_stop_replay_changes_nothing(h: Harness) -> None:
    tx_id = (await start(h, "TAG1"))["transactionId"]
    stop = {"transactionId": tx_id, "meterStop": 3000, "timestamp": "2025-01-15T11:00:00Z"}
    assert await h.call("StopTransaction", stop) == {}
    first = await h.services.transactions.get(STATION, str(tx_id))
    assert first is not None and first.cost is not None
    assert first.stop_reason == "Local"  # the spec's default reason
    # Replayed, even with a different tariff in force: the ended transaction keeps its price.
    h.services.tariff = ConfiguredTariff(TariffSettings(energy_price_per_kwh=Decimal("9")))
    assert await h.call("StopTransaction", {**stop, "meterStop": 9999}) == {}
    assert await h.services.transactions.get(STATION, str(tx_id)) == first
    assert first.cost.total == "0.80"


async def test_stop_of_unknown_transaction_is_answered_and_recorded(h: Harness) -> None:
    response = await h.call(
        "StopTransaction",
        {
            "transactionId": 4242,
            "idTag": "BLOCKED",
            "meterStop": 5000,
            "timestamp": "2025-01-15T11:00:00Z",
            "transactionData": [sample("2025-01-15T10:00:00Z", "1000", unit="Wh")],
        },
    )
    assert response == {"idTagInfo": {"status": "Blocked"}}
    tx = await h.services.transactions.get(STATION, "4242")
    assert tx is not None
    assert tx.state is TransactionState.ENDED
    assert (tx.id_token, tx.energy_wh) == ("BLOCKED", 4000)
    assert tx.cost is not None and tx.cost.total == "1.60"


async def test_start_with_refused_tag_still_assigns_and_stores(h: Harness) -> None:
    for tag, status in [("BLOCKED", "Blocked"), ("OLD", "Expired"), ("NOBODY", "Invalid")]:
        response = await start(h, tag, connector=3)
        assert response["idTagInfo"]["status"] == status
        tx = await h.services.transactions.get(STATION, str(response["transactionId"]))
        assert tx is not None and tx.id_token == tag


async def test_concurrent_tx(h: Harness) -> None:
    await h.provision("CP-2")
    first = await start(h, "TAG2", connector=1)
    assert first["idTagInfo"]["status"] == "Accepted"
    # On the connector of its own (stale: its stop was lost) transaction it is no second
    # session.
    assert (await start(h, "TAG2", connector=1))["idTagInfo"]["status"] == "Accepted"
    # Same token on another connector, here or at another station: ConcurrentTx.
    assert (await start(h, "TAG2", connector=2))["idTagInfo"]["status"] == "ConcurrentTx"
    assert (await start(h, "TAG2", station="CP-2"))["idTagInfo"]["status"] == "ConcurrentTx"
    # A blocked token stays Blocked rather than becoming ConcurrentTx.
    await start(h, "BLOCKED", connector=4)
    assert (await start(h, "BLOCKED", connector=5))["idTagInfo"]["status"] == "Blocked"


async def test_resent_start_gets_the_same_transaction(h: Harness) -> None:
    first = await start(h, "TAG1", connector=1, meter=1000)
    again = await start(h, "TAG1", connector=1, meter=1000)
    assert again == first
    assert len(await h.services.transactions.active(STATION)) == 1
    # Another start on that connector (other meter value) is a new transaction.
    other = await start(h, "TAG1", connector=1, meter=1200)
    assert other["transactionId"] != first["transactionId"]


async def test_concurrent_tx_ends_with_the_transaction(h: Harness) -> None:
    tx_id = (await start(h, "TAG2", connector=1))["transactionId"]
    stop = {"transactionId": tx_id, "meterStop": 2000, "timestamp": "2025-01-15T11:00:00Z"}
    await h.call("StopTransaction", stop)
    assert (await start(h, "TAG2", connector=2))["idTagInfo"]["status"] == "Accepted"


async def test_transaction_ids_are_unique_across_stations(h: Harness) -> None:
    await h.provision("CP-2")
    ids = [
        (await start(h, f"T{n}", connector=n % 3, station=("CP-2" if n % 2 else STATION)))[
            "transactionId"
        ]
        for n in range(20)
    ]
    assert len(set(ids)) == 20
    assert all(isinstance(i, int) and 0 < i < 2**31 for i in ids)


async def test_meter_values_without_or_with_unknown_transaction(h: Harness) -> None:
    reading = [sample("2025-01-15T10:15:00Z", "2.5")]
    assert await h.call("MeterValues", {"connectorId": 0, "meterValue": reading}) == {}
    unknown = {"connectorId": 1, "transactionId": 999, "meterValue": reading}
    assert await h.call("MeterValues", unknown) == {}
    assert await h.services.transactions.get(STATION, "999") is None


async def test_meter_values_ignore_other_measurands_and_repeats(h: Harness) -> None:
    tx_id = (await start(h, "TAG1", meter=1000))["transactionId"]
    power = {
        "timestamp": "2025-01-15T10:05:00Z",
        "sampledValue": [{"value": "11000", "measurand": "Power.Active.Import", "unit": "W"}],
    }
    energy = sample("2025-01-15T10:10:00Z", "1500", unit="Wh")
    payload = {"connectorId": 1, "transactionId": tx_id, "meterValue": [power, energy]}
    await h.call("MeterValues", payload)
    await h.call("MeterValues", payload)
    tx = await h.services.transactions.get(STATION, str(tx_id))
    assert tx is not None
    assert await wh_readings(h, tx.transaction_id) == [1000, 1500]
    assert tx.energy_wh == 500


async def test_meter_values_after_the_stop_do_not_reprice(h: Harness) -> None:
    """Readings for an ended transaction, or stamped after its end, change nothing."""
    tx_id = (await start(h, "TAG1", meter=1000))["transactionId"]
    during = [sample("2025-01-15T10:15:00Z", "2.5")]
    await h.call("MeterValues", {"connectorId": 1, "transactionId": tx_id, "meterValue": during})
    stop = {
        "transactionId": tx_id,
        "meterStop": 3000,
        "timestamp": "2025-01-15T10:30:00Z",
        # The charge point's last sample was taken after it reported the stop.
        "transactionData": [sample("2025-01-15T10:40:00Z", "3.9")],
    }
    await h.call("StopTransaction", stop)
    stopped = await h.tx(str(tx_id))
    assert stopped.energy_wh == 2000
    assert stopped.cost is not None and stopped.cost.total == "0.80"  # what the driver saw
    # Later MeterValues for the transaction: after the end, and one from before it (the
    # register went back and forth: merged, it would count extra positive steps).
    for at, kwh in [("2025-01-15T10:45:00Z", "4.5"), ("2025-01-15T10:20:00Z", "5.0")]:
        late = {"connectorId": 1, "transactionId": tx_id, "meterValue": [sample(at, kwh)]}
        with capture_logs() as logs:
            assert await h.call("MeterValues", late) == {}
        assert "meter_values_for_ended_transaction" in [entry["event"] for entry in logs]
    assert await h.tx(str(tx_id)) == stopped


# --- absurd meter values -------------------------------------------------------------------


async def test_absurd_meter_values_are_dropped_and_the_session_priced(h: Harness) -> None:
    tx_id = (await start(h, "TAG1", meter=1000))["transactionId"]
    frame = json.loads(
        """{"connectorId": 1, "transactionId": TX_ID, "meterValue": [
            {"timestamp": "2025-01-15T10:05:00Z", "sampledValue": [{"value": "1e400"}]},
            {"timestamp": "2025-01-15T10:06:00Z", "sampledValue": [{"value": "NaN"}]},
            {"timestamp": "2025-01-15T10:07:00Z", "sampledValue": [{"value": "-Infinity"}]},
            {"timestamp": "2025-01-15T10:08:00Z", "sampledValue": [{"value": "-5"}]},
            {"timestamp": "2025-01-15T10:09:00Z",
             "sampledValue": [{"value": "2000000000", "unit": "kWh"}]},
            {"timestamp": "2025-01-15T10:10:00Z", "sampledValue": [{"value": "2.5",
             "unit": "kWh", "measurand": "Energy.Active.Import.Register"}]}
        ]}""".replace("TX_ID", str(tx_id))
    )
    with capture_logs() as logs:
        assert await h.call("MeterValues", frame) == {}
    rejected = [entry for entry in logs if entry["event"] == "meter_value_rejected"]
    assert [(e["value"], e["reason"]) for e in rejected] == [
        ("1e400", "out_of_range"),
        ("NaN", "not_finite"),
        ("-Infinity", "not_finite"),
        ("-5", "negative"),
        ("2000000000", "out_of_range"),  # 2e9 kWh = 2e12 Wh, beyond the plausible register
    ]
    assert all(e["transaction_id"] == str(tx_id) and e["log_level"] == "warning" for e in rejected)
    tx = await h.tx(str(tx_id))
    assert await wh_readings(h, tx.transaction_id) == [1000, 2500]
    # The stop is answered and priced on the plausible readings, retries included.
    stop = {"transactionId": tx_id, "meterStop": 3000, "timestamp": "2025-01-15T10:30:00Z"}
    for _ in range(2):
        assert await h.call("StopTransaction", stop) == {}
    tx = await h.tx(str(tx_id))
    assert tx.energy_wh == 2000
    assert tx.cost is not None and tx.cost.total == "0.80"


async def test_absurd_meter_start_and_stop_are_left_out(h: Harness) -> None:
    frame = json.loads(
        '{"connectorId": 2, "idTag": "TAG2", "meterStart": 1%s, '
        '"timestamp": "2025-01-15T10:00:00Z"}' % ("0" * 400)
    )
    with capture_logs() as logs:
        started = await h.call("StartTransaction", frame)
    assert started["idTagInfo"] == {"status": "Accepted"}
    [warning] = [e for e in logs if e["event"] == "meter_value_rejected"]
    assert (warning["field"], warning["reason"]) == ("meterStart", "out_of_range")
    tx_id = started["transactionId"]
    assert (await h.tx(str(tx_id))).meter_start_wh is None
    data = [sample("2025-01-15T10:10:00Z", "1.0"), sample("2025-01-15T10:20:00Z", "2.0")]
    stop = {
        "transactionId": tx_id,
        "meterStop": -1,
        "timestamp": "2025-01-15T10:30:00Z",
        "transactionData": data,
    }
    assert await h.call("StopTransaction", stop) == {}
    tx = await h.tx(str(tx_id))
    assert (tx.state, tx.meter_stop_wh, tx.energy_wh) == (TransactionState.ENDED, None, 1000)
    assert tx.cost is not None and tx.cost.total == "0.40"


# --- registration ----------------------------------------------------------------------------


PENDING_REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("Authorize", {"idTag": "TAG1"}),
    (
        "StartTransaction",
        {"connectorId": 1, "idTag": "TAG1", "meterStart": 0, "timestamp": "2025-01-15T10:00:00Z"},
    ),
    ("StopTransaction", {"transactionId": 1, "meterStop": 10, "timestamp": "2025-01-15T10:00:00Z"}),
    ("MeterValues", {"connectorId": 1, "meterValue": [sample("2025-01-15T10:00:00Z", "1")]}),
    ("DataTransfer", {"vendorId": "com.acme"}),
    ("SecurityEventNotification", {"type": "X", "timestamp": "2025-01-15T10:00:00Z"}),
]


@pytest.mark.parametrize(("action", "payload"), PENDING_REFUSED)
async def test_pending_station_is_refused_tokens_and_transactions(
    action: str, payload: dict[str, Any]
) -> None:
    h = Harness(Settings(unknown_stations="pending"))
    await h.seed_tokens()
    assert (await h.call("BootNotification", BOOT, station="NEW-1"))["status"] == "Pending"
    with pytest.raises(OcppError) as caught:
        await h.call(action, payload, station="NEW-1")
    assert caught.value.error is RpcError.SECURITY_ERROR
    assert caught.value.details == {"registration": "Pending"}
    assert await h.services.transactions.active("NEW-1") == []
    assert await h.services.transactions.get("NEW-1", "1") is None


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("FirmwareStatusNotification", {"status": "Idle"}),
        ("DiagnosticsStatusNotification", {"status": "Idle"}),
        ("LogStatusNotification", {"status": "Idle"}),
        ("SignedFirmwareStatusNotification", {"status": "Idle"}),
    ],
)
async def test_pending_station_may_send_what_a_trigger_asks_for(
    action: str, payload: dict[str, Any]
) -> None:
    h = Harness(Settings(unknown_stations="pending"))
    await h.call("BootNotification", BOOT, station="NEW-1")
    assert await h.call(action, payload, station="NEW-1") == {}


# --- stale transactions ----------------------------------------------------------------------


async def test_new_start_on_a_connector_supersedes_its_stale_transaction(h: Harness) -> None:
    await h.provision("CP-2")
    old_id = (await start(h, "TAG1", connector=1, meter=1000))["transactionId"]
    during = [sample("2025-01-15T10:15:00Z", "2.5")]
    await h.call("MeterValues", {"connectorId": 1, "transactionId": old_id, "meterValue": during})
    # The charge point rebooted: the stop of that session was lost; a new one starts.
    rebooted = {
        "connectorId": 1,
        "idTag": "TAG1",
        "meterStart": 2600,
        "timestamp": "2025-01-15T11:00:00Z",
    }
    with capture_logs() as logs:
        response = await h.call("StartTransaction", rebooted)
    assert response["idTagInfo"]["status"] == "Accepted"
    new_id = response["transactionId"]
    assert new_id != old_id
    old = await h.tx(str(old_id))
    assert old.state is TransactionState.ENDED
    assert (old.stop_reason, old.superseded_by) == ("Other", str(new_id))
    assert old.ended_at == "2025-01-15T10:15:00Z"  # its last known reading
    assert old.energy_wh == 1500
    assert old.cost is not None and old.cost.total == "0.60"
    assert "transaction_superseded" in [e["event"] for e in logs]
    assert [tx.transaction_id for tx in await h.services.transactions.active(STATION)] == [
        str(new_id)
    ]
    # The token is really charging on connector 1 now: elsewhere it is ConcurrentTx.
    assert (await start(h, "TAG1", connector=2))["idTagInfo"]["status"] == "ConcurrentTx"
    assert (await start(h, "TAG1", station="CP-2"))["idTagInfo"]["status"] == "ConcurrentTx"
    # Its stop answers with the token's own status, never ConcurrentTx.
    stop = {
        "transactionId": new_id,
        "idTag": "TAG1",
        "meterStop": 3600,
        "timestamp": "2025-01-15T11:30:00Z",
    }
    assert (await h.call("StopTransaction", stop))["idTagInfo"]["status"] == "Accepted"
    # Should the lost stop of the old session still arrive, its facts replace the CSMS's.
    late_stop = {"transactionId": old_id, "meterStop": 2600, "timestamp": "2025-01-15T10:40:00Z"}
    assert await h.call("StopTransaction", late_stop) == {}
    old = await h.tx(str(old_id))
    assert (old.stop_reason, old.superseded_by, old.ended_at) == (
        "Local",
        None,
        "2025-01-15T10:40:00Z",
    )
    assert old.energy_wh == 1600
    assert old.cost is not None and old.cost.total == "0.64"
    assert await h.call("StopTransaction", late_stop) == {}
    assert await h.tx(str(old_id)) == old


# --- transactionId -1 --------------------------------------------------------------------------


async def test_each_stop_with_transaction_id_minus_one_is_its_own_record(h: Harness) -> None:
    """Two sessions whose StartTransaction never reached the CSMS: neither stop is lost."""
    first = {
        "transactionId": -1,
        "idTag": "TAG2",
        "meterStop": 3000,
        "timestamp": "2025-01-15T10:30:00Z",
        "transactionData": [sample("2025-01-15T10:00:00Z", "1.0", context="Transaction.Begin")],
    }
    second = {
        "transactionId": -1,
        "idTag": "TAG2",
        "meterStop": 5000,
        "timestamp": "2025-01-15T11:30:00Z",
        "transactionData": [sample("2025-01-15T11:00:00Z", "4.0", context="Transaction.Begin")],
    }
    for stop in (first, second, first):  # the first one re-sent at the end
        assert (await h.call("StopTransaction", stop))["idTagInfo"]["status"] == "Accepted"
    one = await h.tx("-1:2025-01-15T10:30:00Z:3000")
    two = await h.tx("-1:2025-01-15T11:30:00Z:5000")
    assert (one.state, one.energy_wh, one.id_token) == (TransactionState.ENDED, 2000, "TAG2")
    assert (two.state, two.energy_wh) == (TransactionState.ENDED, 1000)
    assert one.cost is not None and one.cost.total == "0.80"
    assert two.cost is not None and two.cost.total == "0.40"


async def test_stop_with_minus_one_ends_the_start_whose_answer_was_lost(h: Harness) -> None:
    await h.provision("CP-2")
    tx_id = (await start(h, "TAG1", connector=2, meter=1000))["transactionId"]
    await start(h, "TAG2", connector=1, meter=500)  # another session: another token
    await start(h, "TAG1", station="CP-2")  # same token at another station: not this one
    stop = {
        "transactionId": -1,
        "idTag": "TAG1",
        "meterStop": 4000,
        "timestamp": "2025-01-15T11:00:00Z",
        "reason": "EVDisconnected",
    }
    assert (await h.call("StopTransaction", stop))["idTagInfo"]["status"] == "Accepted"
    tx = await h.tx(str(tx_id))
    assert (tx.state, tx.stop_reason, tx.energy_wh) == (
        TransactionState.ENDED,
        "EVDisconnected",
        3000,
    )
    assert tx.cost is not None and tx.cost.total == "1.20"
    pointer = await h.tx("-1:2025-01-15T11:00:00Z:4000")
    assert (pointer.merged_into, pointer.cost) == (str(tx_id), None)
    assert [t.id_token for t in await h.services.transactions.active(STATION)] == ["TAG2"]
    # A re-sent copy of the stop is recognised: nothing new is recorded or billed.
    assert (await h.call("StopTransaction", stop))["idTagInfo"]["status"] == "Accepted"
    assert await h.tx(str(tx_id)) == tx
    assert await h.tx("-1:2025-01-15T11:00:00Z:4000") == pointer


# --- small messages ------------------------------------------------------------------------


async def test_data_transfer_is_unknown_vendor(h: Harness) -> None:
    response = await h.call(
        "DataTransfer", {"vendorId": "com.acme", "messageId": "x", "data": "{}"}
    )
    assert response == {"status": "UnknownVendorId"}


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("DiagnosticsStatusNotification", {"status": "Uploaded"}),
        ("FirmwareStatusNotification", {"status": "Installed"}),
        ("SignedFirmwareStatusNotification", {"status": "Installed", "requestId": 3}),
        ("LogStatusNotification", {"status": "Uploaded", "requestId": 4}),
        (
            "SecurityEventNotification",
            {"type": "FirmwareUpdated", "timestamp": "2025-01-15T11:00:00Z"},
        ),
    ],
)
async def test_notifications_are_acknowledged(
    h: Harness, action: str, payload: dict[str, Any]
) -> None:
    with capture_logs() as logs:
        assert await h.call(action, payload) == {}
    assert any(entry.get("status", entry.get("type")) for entry in logs)


# --- results -------------------------------------------------------------------------------


def result_ctx(h: Harness, **answer: Any) -> ResultContext:
    return ResultContext(
        station_id=STATION,
        version=OcppVersion.OCPP16,
        request=OriginalCall(
            message_id="c1",
            action="ChangeConfiguration",
            payload={"key": "HeartbeatInterval", "value": "120"},
        ),
        services=h.services,
        settings=h.settings,
        calls=h.calls,
        log=structlog.get_logger(),
        **answer,
    )


@pytest.mark.parametrize(
    ("status", "level"),
    [
        ("Accepted", "info"),
        ("RebootRequired", "info"),
        ("Rejected", "warning"),
        ("NotSupported", "warning"),
    ],
)
async def test_change_configuration_result_is_logged(h: Harness, status: str, level: str) -> None:
    payload = {"status": status}
    validate(OcppVersion.OCPP16, "ChangeConfiguration", Direction.RESPONSE, payload)
    with capture_logs() as logs:
        await RESULT_HANDLERS["ChangeConfiguration"](result_ctx(h, payload=payload))
    assert logs == [
        {
            "event": "configuration_change",
            "key": "HeartbeatInterval",
            "value": "120",
            "status": status,
            "log_level": level,
        }
    ]


async def test_change_configuration_without_answer_is_a_warning(h: Harness) -> None:
    with capture_logs() as logs:
        await RESULT_HANDLERS["ChangeConfiguration"](result_ctx(h, timed_out=True))
        await RESULT_HANDLERS["ChangeConfiguration"](
            result_ctx(h, error_code="NotImplemented", error_description="no")
        )
    assert [(e["event"], e["log_level"]) for e in logs] == [("call_failed", "warning")] * 2
    assert logs[0]["timed_out"] is True
    assert logs[1]["error_code"] == "NotImplemented"
