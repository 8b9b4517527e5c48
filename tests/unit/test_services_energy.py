"""Energy delivered from register readings, and OCPP sampledValues normalised to Wh."""

from __future__ import annotations

from typing import Any

import pytest

from services.energy import (
    MAX_REGISTER_WH,
    energy_wh,
    merge_readings,
    readings_from_meter_values,
    register_wh,
    screen_meter_values,
    screen_sampled_value,
    screen_wh,
    summarized,
)
from services.models import EnergyReading, Transaction, TransactionState

V16, V201 = "ocpp1.6", "ocpp2.0.1"


def tx(
    readings: tuple[EnergyReading, ...] | list[EnergyReading] = (), **fields: Any
) -> Transaction:
    """A transaction with ``readings`` (in arrival order) counted as a store counts them."""
    bare = Transaction(station_id="CS1", transaction_id="1", version=V201, **fields)
    return summarized(bare, readings)


def r(at: str, wh: float, context: str | None = None) -> EnergyReading:
    return EnergyReading(at=f"2026-01-15T{at}Z", wh=wh, context=context)


# --- energy_wh -------------------------------------------------------------------------------


def test_no_values_is_unknown() -> None:
    assert energy_wh(tx()) is None


def test_single_value_is_zero() -> None:
    assert energy_wh(tx(meter_start_wh=1234.0)) == 0.0
    assert energy_wh(tx(readings=[r("12:00:00", 50.0)])) == 0.0


def test_start_and_stop_win_over_readings() -> None:
    readings = [r("12:10:00", 1500.0), r("12:20:00", 2500.0)]
    assert energy_wh(tx(meter_start_wh=1000.0, readings=readings)) == 1500.0
    assert energy_wh(tx(meter_start_wh=1000.0, meter_stop_wh=3000.0, readings=readings)) == 2000.0


def test_readings_alone_use_first_and_last_by_time_not_arrival() -> None:
    readings = [r("12:20:00", 2500.0), r("12:00:00", 1000.0), r("12:10:00", 1500.0)]
    assert energy_wh(tx(readings=readings)) == 1500.0


def test_unreadable_timestamps_fall_back_to_arrival_order() -> None:
    readings = [EnergyReading(at="garbage", wh=10.0), r("12:00:00", 30.0)]
    assert energy_wh(tx(readings=readings)) == 20.0


def test_register_reset_sums_positive_steps() -> None:
    # 1000 -> 1500 (+500), reset to 0, 0 -> 200 (+200), stop 300 (+100)
    readings = [r("12:10:00", 1500.0), r("12:20:00", 0.0), r("12:30:00", 200.0)]
    value = energy_wh(tx(meter_start_wh=1000.0, meter_stop_wh=300.0, readings=readings))
    assert value == 800.0


def test_never_negative() -> None:
    assert energy_wh(tx(meter_start_wh=5000.0, meter_stop_wh=10.0)) == 0.0


# --- register_wh -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampled", "expected"),
    [
        ({"value": "1234"}, 1234.0),
        ({"value": "1234.5", "unit": "Wh"}, 1234.5),
        ({"value": "1.5", "unit": "kWh"}, 1500.0),
        ({"value": " 2.25 ", "unit": "kWh", "measurand": "Energy.Active.Import.Register"}, 2250.0),
        ({"value": "7", "format": "Raw", "context": "Sample.Periodic"}, 7.0),
    ],
)
def test_v16_register_values(sampled: dict[str, Any], expected: float) -> None:
    assert register_wh(sampled, V16) == expected


@pytest.mark.parametrize(
    "sampled",
    [
        {"value": "12", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": "12", "phase": "L1"},
        {"value": "AQIDBAU=", "format": "SignedData"},
        {"value": "abc"},
        {"value": "NaN"},
        {"value": 12},
        {"value": "12", "unit": "varh"},
        {},
    ],
)
def test_v16_not_register_values(sampled: dict[str, Any]) -> None:
    assert register_wh(sampled, V16) is None


@pytest.mark.parametrize(
    ("sampled", "expected"),
    [
        ({"value": 1234}, 1234.0),
        ({"value": 1234.5, "unitOfMeasure": {"unit": "Wh"}}, 1234.5),
        ({"value": 1.5, "unitOfMeasure": {"unit": "kWh"}}, 1500.0),
        ({"value": 15, "unitOfMeasure": {"unit": "Wh", "multiplier": 3}}, 15000.0),
        ({"value": 15, "unitOfMeasure": {"unit": "kWh", "multiplier": -1}}, 1500.0),
        ({"value": 3, "unitOfMeasure": {"multiplier": 2}}, 300.0),
        ({"value": 9, "measurand": "Energy.Active.Import.Register"}, 9.0),
    ],
)
def test_v201_register_values(sampled: dict[str, Any], expected: float) -> None:
    assert register_wh(sampled, V201) == pytest.approx(expected)


@pytest.mark.parametrize(
    "sampled",
    [
        {"value": 5, "measurand": "Energy.Active.Import.Interval"},
        {"value": 5, "phase": "L2"},
        {"value": "5"},
        {"value": True},
        {"value": float("inf")},
        {"value": 5, "unitOfMeasure": {"unit": "W"}},
        {"value": 5, "unitOfMeasure": {"unit": "Wh", "multiplier": 1.5}},
    ],
)
def test_v201_not_register_values(sampled: dict[str, Any]) -> None:
    assert register_wh(sampled, V201) is None


# --- readings_from_meter_values / merge_readings ---------------------------------------------


def test_readings_from_v16_meter_values_prefers_total() -> None:
    meter_values: list[dict[str, Any]] = [
        {
            "timestamp": "2026-01-15T12:00:00Z",
            "sampledValue": [
                {"value": "400", "phase": "L1", "unit": "Wh"},
                {"value": "16", "measurand": "Current.Import", "unit": "A"},
                {"value": "1.2", "unit": "kWh", "context": "Transaction.Begin"},
            ],
        },
        {"timestamp": "2026-01-15T12:05:00Z", "sampledValue": [{"value": "9", "unit": "A"}]},
        {"sampledValue": [{"value": "1"}]},
    ]
    assert readings_from_meter_values(meter_values, V16) == [
        EnergyReading(at="2026-01-15T12:00:00Z", wh=1200.0, context="Transaction.Begin")
    ]


def test_readings_from_v201_meter_values() -> None:
    meter_values = [
        {
            "timestamp": "2026-01-15T12:00:00Z",
            "sampledValue": [
                {"value": 1.5, "unitOfMeasure": {"unit": "kWh"}, "context": "Sample.Periodic"}
            ],
        },
        {"timestamp": "2026-01-15T12:01:00Z", "sampledValue": [{"value": 1600}]},
    ]
    assert readings_from_meter_values(meter_values, V201) == [
        EnergyReading(at="2026-01-15T12:00:00Z", wh=1500.0, context="Sample.Periodic"),
        EnergyReading(at="2026-01-15T12:01:00Z", wh=1600.0),
    ]


def test_merge_readings_dedups_and_sorts() -> None:
    existing = [r("12:10:00", 20.0), r("12:00:00", 10.0)]
    new = [r("12:10:00", 20.0), r("12:05:00", 15.0), r("12:10:00", 21.0)]
    merged = merge_readings(existing, new)
    assert [(x.at[11:19], x.wh) for x in merged] == [
        ("12:00:00", 10.0),
        ("12:05:00", 15.0),
        ("12:10:00", 20.0),
        ("12:10:00", 21.0),
    ]
    assert merge_readings(merged, new) == merged


# --- plausibility ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampled", "version", "reason"),
    [
        ({"value": "1e400"}, V16, "out_of_range"),
        ({"value": "1e999999999999999999", "unit": "kWh"}, V16, "out_of_range"),
        ({"value": "NaN"}, V16, "not_finite"),
        ({"value": "inf"}, V16, "not_finite"),
        ({"value": "-Infinity"}, V16, "not_finite"),
        ({"value": "-0.5", "unit": "kWh"}, V16, "negative"),
        ({"value": "abc"}, V16, "not_a_number"),
        ({"value": "1000000001", "unit": "kWh"}, V16, "out_of_range"),
        ({"value": 1e30}, V201, "out_of_range"),
        ({"value": 10**5000}, V201, "out_of_range"),
        ({"value": float("nan")}, V201, "not_finite"),
        ({"value": -1}, V201, "negative"),
        ({"value": 2, "unitOfMeasure": {"unit": "kWh", "multiplier": 9}}, V201, "out_of_range"),
        ({"value": 2, "unitOfMeasure": {"multiplier": 10**20}}, V201, "out_of_range"),
    ],
)
def test_implausible_register_values_are_rejected(
    sampled: dict[str, Any], version: str, reason: str
) -> None:
    assert register_wh(sampled, version) is None
    assert screen_sampled_value(sampled, version) == reason


def test_the_plausible_bound_is_inclusive() -> None:
    assert MAX_REGISTER_WH == 1e12
    assert register_wh({"value": "1000000000", "unit": "kWh"}, V16) == MAX_REGISTER_WH
    assert register_wh({"value": 0}, V201) == 0.0
    assert screen_wh(10**400) == "out_of_range"
    assert screen_wh(-1) == "negative"
    assert screen_wh(1500) == 1500.0


def test_screen_meter_values_reports_what_it_leaves_out() -> None:
    meter_values: list[dict[str, Any]] = [
        {"timestamp": "2026-01-15T12:00:00Z", "sampledValue": [{"value": "1e400"}]},
        {
            "timestamp": "2026-01-15T12:01:00Z",
            "sampledValue": [{"value": "NaN"}, {"value": "1.5", "unit": "kWh"}],
        },
        {"timestamp": "2026-01-15T12:02:00Z", "sampledValue": [{"value": "1" * 60}]},
    ]
    screened = screen_meter_values(meter_values, V16)
    assert screened.readings == [EnergyReading(at="2026-01-15T12:01:00Z", wh=1500.0)]
    assert [(item.at, item.reason) for item in screened.rejected] == [
        ("2026-01-15T12:00:00Z", "out_of_range"),
        ("2026-01-15T12:01:00Z", "not_finite"),
        ("2026-01-15T12:02:00Z", "out_of_range"),
    ]
    assert screened.rejected[0].value == "1e400"
    assert len(screened.rejected[2].value) == 40  # a long value is shortened for the log


def test_stored_implausible_values_do_not_count() -> None:
    readings = [
        r("12:10:00", 1500.0),
        r("12:15:00", float("inf")),
        r("12:20:00", 1e30),
        r("12:25:00", -20.0),
        r("12:30:00", 2500.0),
    ]
    assert energy_wh(tx(meter_start_wh=1000.0, readings=readings)) == 1500.0
    assert energy_wh(tx(meter_start_wh=float("nan"), meter_stop_wh=1e300)) is None


def test_energy_is_bounded_even_across_resets() -> None:
    readings = [r(f"12:{m:02d}:00", MAX_REGISTER_WH if m % 2 else 0.0) for m in range(10)]
    assert energy_wh(tx(readings=readings)) == MAX_REGISTER_WH


def test_readings_after_the_end_do_not_count() -> None:
    readings = [r("12:10:00", 1500.0), r("12:30:00", 2500.0), r("12:40:00", 9000.0)]
    active = tx(meter_start_wh=1000.0, readings=readings)
    assert energy_wh(active) == 8000.0
    ended = tx(
        meter_start_wh=1000.0,
        readings=readings,
        state=TransactionState.ENDED,
        ended_at="2026-01-15T12:30:00Z",
    )
    assert energy_wh(ended) == 1500.0
