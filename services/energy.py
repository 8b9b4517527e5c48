"""Energy delivered, from energy-register readings. Pure functions, no I/O.

Stations report the *register* (Energy.Active.Import.Register, a cumulative meter value),
not the energy of a session, and in many shapes: Wh or kWh, 1.6 decimal strings or 2.0.1
numbers with a power-of-ten multiplier, per phase and in total, signed blobs. Everything
here normalises that to Wh so the rest of the CSMS computes energy in exactly one way.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from services.models import EnergyReading, Transaction
from services.rules import parse_time

REGISTER = "Energy.Active.Import.Register"
"""The measurand we accept; it is also the default when a sampledValue names none."""

_UNIT_TO_WH = {"wh": 1.0, "kwh": 1000.0}


def _is_v16(version: str) -> bool:
    return version.removeprefix("ocpp") == "1.6"


def _ordered(readings: Iterable[EnergyReading]) -> list[EnergyReading]:
    """Readings sorted by time (stable); arrival order if any timestamp is unreadable."""
    items = list(readings)
    keyed: list[tuple[dt.datetime, int, EnergyReading]] = []
    for index, reading in enumerate(items):
        moment = parse_time(reading.at)
        if moment is None:
            return items
        keyed.append((moment, index, reading))
    keyed.sort(key=lambda entry: (entry[0], entry[1]))
    return [reading for _, _, reading in keyed]


def delivered_wh(values: list[float]) -> float:
    """Energy between the first and last of successive register values (in time order).

    Normally last - first. When the register went backwards anywhere (a reset, a rollover,
    a replaced meter) that difference is meaningless, so the positive steps are summed
    instead: the energy counted before the drop is kept, the drop itself is ignored.
    """
    if len(values) < 2:
        return 0.0
    steps = [later - earlier for earlier, later in itertools.pairwise(values)]
    if all(step >= 0 for step in steps):
        return max(values[-1] - values[0], 0.0)
    return sum(step for step in steps if step > 0)


def energy_wh(tx: Transaction) -> float | None:
    """Energy delivered in ``tx`` so far (final once it has ended); None without any value.

    The series is meterStart, then the readings by time, then meterStop: the start and
    stop values, when present, are the authoritative ends of the series.
    """
    values: list[float] = []
    if tx.meter_start_wh is not None:
        values.append(tx.meter_start_wh)
    values.extend(reading.wh for reading in _ordered(tx.readings))
    if tx.meter_stop_wh is not None:
        values.append(tx.meter_stop_wh)
    if not values:
        return None
    return delivered_wh(values)


def _number(value: Any, version: str) -> Decimal | None:
    """The numeric value of a sampledValue; None when it is not a finite number."""
    if _is_v16(version):
        if not isinstance(value, str):
            return None
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        number = Decimal(str(value))
    return number if number.is_finite() else None


def register_wh(sampled_value: Mapping[str, Any], version: str) -> float | None:
    """The energy-register value of one OCPP sampledValue, in Wh; None when it is not one.

    Accepted: measurand Energy.Active.Import.Register (or no measurand: the default in both
    versions), no phase (the total, not one phase of it), numeric (1.6 SignedData is not),
    unit Wh or kWh (default Wh). 1.6 carries ``unit`` and a decimal string; 2.0.1 carries a
    number and ``unitOfMeasure`` {unit, multiplier} where multiplier is a power of ten.
    """
    if sampled_value.get("measurand", REGISTER) != REGISTER:
        return None
    if "phase" in sampled_value:
        return None
    multiplier = 0
    if _is_v16(version):
        if sampled_value.get("format", "Raw") != "Raw":
            return None
        unit = sampled_value.get("unit", "Wh")
    else:
        measure = sampled_value.get("unitOfMeasure") or {}
        if not isinstance(measure, Mapping):
            return None
        unit = measure.get("unit", "Wh")
        multiplier = measure.get("multiplier", 0)
        if isinstance(multiplier, bool) or not isinstance(multiplier, int):
            return None
    if not isinstance(unit, str) or unit.lower() not in _UNIT_TO_WH:
        return None
    number = _number(sampled_value.get("value"), version)
    if number is None:
        return None
    wh = number.scaleb(multiplier) * Decimal(str(_UNIT_TO_WH[unit.lower()]))
    return float(wh)


def readings_from_meter_values(
    meter_values: Iterable[Mapping[str, Any]], version: str
) -> list[EnergyReading]:
    """The energy-register readings in a MeterValues / TransactionEvent ``meterValue`` list.

    At most one reading per meterValue (its first total register value); meterValues
    without a timestamp or without such a value contribute nothing.
    """
    readings: list[EnergyReading] = []
    for meter_value in meter_values:
        at = meter_value.get("timestamp")
        if not isinstance(at, str):
            continue
        for sampled_value in meter_value.get("sampledValue") or ():
            if not isinstance(sampled_value, Mapping):
                continue
            wh = register_wh(sampled_value, version)
            if wh is not None:
                context = sampled_value.get("context")
                readings.append(
                    EnergyReading(
                        at=at, wh=wh, context=context if isinstance(context, str) else None
                    )
                )
                break
    return readings


def merge_readings(
    existing: Iterable[EnergyReading], new: Iterable[EnergyReading]
) -> list[EnergyReading]:
    """``existing`` plus ``new`` without duplicates (same time and value), in time order.

    A retried message re-delivers the same readings; merging them again changes nothing.
    """
    seen: set[tuple[str, float]] = set()
    merged: list[EnergyReading] = []
    for reading in (*existing, *new):
        key = (reading.at, reading.wh)
        if key not in seen:
            seen.add(key)
            merged.append(reading)
    return _ordered(merged)
