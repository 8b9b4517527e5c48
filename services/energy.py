"""Energy delivered, from energy-register readings. Pure functions, no I/O.

Stations report the *register* (Energy.Active.Import.Register, a cumulative meter value),
not the energy of a session, and in many shapes: Wh or kWh, 1.6 decimal strings or 2.0.1
numbers with a power-of-ten multiplier, per phase and in total, signed blobs. Everything
here normalises that to Wh so the rest of the CSMS computes energy in exactly one way.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

import msgspec

from csms.versions import spec
from services.models import EnergyReading, MeterSummary, Transaction, TransactionState
from services.rules import parse_time

__all__ = [
    "MAX_REGISTER_WH",
    "NEGATIVE",
    "NOT_A_NUMBER",
    "NOT_FINITE",
    "OUT_OF_RANGE",
    "REGISTER",
    "Advanced",
    "RejectedReading",
    "Screened",
    "advance",
    "cutoff",
    "delivered_wh",
    "derived",
    "display_value",
    "energy_wh",
    "merge_readings",
    "ordered_readings",
    "plausible_wh",
    "readings_from_meter_values",
    "rebuild",
    "register_wh",
    "screen_meter_values",
    "screen_sampled_value",
    "screen_wh",
    "series_start",
    "summarize",
    "summarized",
]

REGISTER = "Energy.Active.Import.Register"
"""The measurand we accept; it is also the default when a sampledValue names none."""

_UNIT_TO_WH = {"wh": Decimal(1), "kwh": Decimal(1000)}

MAX_REGISTER_WH = 1e12
"""Largest plausible energy-register value (and energy of one transaction), in Wh: 1 TWh,
i.e. 10^9 kWh. A 350 kW charger delivering flat out for 30 years registers under 10^11 Wh,
so anything above is a fault, not energy. The bound also keeps every sum and price far inside
float and Decimal range."""

NOT_A_NUMBER = "not_a_number"
NOT_FINITE = "not_finite"
NEGATIVE = "negative"
OUT_OF_RANGE = "out_of_range"
"""Reasons a register reading is rejected (the ``reason`` of :class:`RejectedReading`)."""

# Enough range that parsing and scaling any schema-valid value cannot trap; the result is
# then compared with MAX_REGISTER_WH.
_WIDE = decimal.Context(prec=28, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])


class RejectedReading(NamedTuple):
    """An energy-register value left out of the energy, and why."""

    at: str | None
    value: str
    """The value as the station sent it (repr of a number, the 1.6 string as is), capped."""
    reason: str
    """:data:`NOT_A_NUMBER`, :data:`NOT_FINITE`, :data:`NEGATIVE` or :data:`OUT_OF_RANGE`."""


class Screened(NamedTuple):
    """The energy-register readings of a ``meterValue`` list, and the values rejected."""

    readings: list[EnergyReading]
    rejected: list[RejectedReading]


def plausible_wh(value: float | None) -> bool:
    """True for a register value (Wh) that can be energy: finite, 0 to MAX_REGISTER_WH."""
    return value is not None and math.isfinite(value) and 0.0 <= value <= MAX_REGISTER_WH


def screen_wh(value: Decimal | int | float) -> float | str:
    """``value`` (Wh) as a float when plausible, else the reason it is rejected.

    For values that did not come through a sampledValue: the 1.6 meterStart / meterStop
    integers (a JSON integer may have any number of digits; ``float()`` of one can overflow).
    """
    if isinstance(value, bool):
        return NOT_A_NUMBER
    try:
        number = value if isinstance(value, Decimal) else _WIDE.create_decimal(value)
    except (ArithmeticError, ValueError, TypeError):
        return NOT_A_NUMBER
    if not number.is_finite():
        return NOT_FINITE
    if number < 0:
        return NEGATIVE
    if number > MAX_REGISTER_WH:
        return OUT_OF_RANGE
    return float(number)


def _is_v16(version: str) -> bool:
    """1.6 message shapes: sampled values are strings, with 1.6's measurand names."""
    return spec(version).generation == 1


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


def ordered_readings(
    readings: Sequence[EnergyReading], arrival_from: int | None = None
) -> list[EnergyReading]:
    """Stored readings (in the order they arrived) in the order the energy counts them: by
    time (stable), except from position ``arrival_from`` on (see
    :attr:`MeterSummary.arrival_from <services.models.MeterSummary.arrival_from>`), where
    some time is unreadable and arrival order is all there is."""
    if arrival_from is None:
        return _ordered(readings)
    return [*_ordered(readings[:arrival_from]), *readings[arrival_from:]]


def delivered_wh(values: list[float]) -> float:
    """Energy between the first and last of successive register values (in time order).

    Normally last - first. When the register went backwards anywhere (a reset, a rollover,
    a replaced meter) that difference is meaningless, so the positive steps are summed
    instead: the energy counted before the drop is kept, the drop itself is ignored.
    :class:`~services.models.MeterSummary` keeps the same figures as a running aggregate.
    """
    if len(values) < 2:
        return 0.0
    steps = [later - earlier for earlier, later in itertools.pairwise(values)]
    if all(step >= 0 for step in steps):
        return max(values[-1] - values[0], 0.0)
    return sum(step for step in steps if step > 0)


# --- the running aggregate -------------------------------------------------------------------

_COMPENSATED_SUM = sum([1e100, 1.0, -1e100]) == 1.0
"""Python 3.12+ sums floats with Neumaier's compensation; the aggregate sums the same way
as ``sum`` does here, so a running total equals the sum of the whole series exactly."""

_EMPTY = MeterSummary()


class Advanced(NamedTuple):
    """A transaction's aggregate after a change, and the readings to store with it."""

    summary: MeterSummary
    added: tuple[EnergyReading, ...]
    """The change's readings not stored yet (duplicates left out), in arrival order."""


def _add_step(summary: MeterSummary, step: float) -> tuple[float, float]:
    """``rise_wh``, ``rise_error`` after adding a positive ``step`` (as ``sum`` would)."""
    total, error = summary.rise_wh, summary.rise_error
    result = total + step
    if _COMPENSATED_SUM:
        if abs(total) >= abs(step):
            error += (total - result) + step
        else:
            error += (step - result) + total
    return result, error


def _push(summary: MeterSummary, value: float) -> MeterSummary:
    """``summary`` with ``value`` appended to its energy series."""
    if summary.values == 0 or summary.last_wh is None:
        return msgspec.structs.replace(summary, values=1, first_wh=value, last_wh=value)
    step = value - summary.last_wh
    rise, error = _add_step(summary, step) if step > 0 else (summary.rise_wh, summary.rise_error)
    return msgspec.structs.replace(
        summary,
        values=summary.values + 1,
        last_wh=value,
        dropped=summary.dropped or step < 0,
        rise_wh=rise,
        rise_error=error,
    )


def _rise(rise: float, error: float) -> float:
    """The final value of a running sum (``sum`` adds the compensation when finite)."""
    return rise + error if error and math.isfinite(error) else rise


def series_start(tx: Transaction) -> float | None:
    """The meter start that begins the energy series: ``meter_start_wh`` when plausible."""
    start = tx.meter_start_wh
    return start if start is not None and plausible_wh(start) else None


def cutoff(tx: Transaction) -> str | None:
    """The end readings are filtered by: ``ended_at`` of an ended transaction, when readable."""
    if tx.state is not TransactionState.ENDED or parse_time(tx.ended_at) is None:
        return None
    return tx.ended_at


def _based(summary: MeterSummary, start: float | None) -> MeterSummary:
    """``summary`` with no counted reading, its series restarted from ``start``."""
    reset = msgspec.structs.replace(
        summary,
        start_wh=start,
        values=0,
        first_wh=None,
        last_wh=None,
        dropped=False,
        rise_wh=0.0,
        rise_error=0.0,
    )
    return _push(reset, start) if start is not None else reset


def _later(first: str | None, second: str) -> bool:
    """True when ``second`` is strictly later than ``first`` (None: no time yet)."""
    if first is None:
        return True
    a, b = parse_time(first), parse_time(second)
    return a is not None and b is not None and b > a


def advance(
    summary: MeterSummary | None, tx: Transaction, readings: Sequence[EnergyReading]
) -> Advanced | None:
    """The aggregate after ``readings`` arrive for ``tx`` (its facts as changed), in constant
    time per reading; None when the stored readings are needed (:func:`rebuild`): a reading
    not later than every stored one (it may be a duplicate, or sort before them), one with an
    unreadable time, a new meter start once readings count, or an end that leaves out
    readings already counted.
    """
    current = summary or _EMPTY
    start = series_start(tx)
    if start != current.start_wh:
        if current.values != (0 if current.start_wh is None else 1):
            return None
        current = _based(current, start)
    end = cutoff(tx)
    if end != current.cutoff:
        if current.cutoff is not None or end is None:
            return None
        if current.counted_at is not None and _later(end, current.counted_at):
            return None
        current = msgspec.structs.replace(current, cutoff=end)
    end_moment = parse_time(end)
    added: list[EnergyReading] = []
    seen: set[tuple[str, float]] = set()
    latest = parse_time(current.last_at)
    for reading in readings:
        key = (reading.at, reading.wh)
        if key in seen:
            continue
        moment = parse_time(reading.at)
        if moment is None or (latest is not None and moment <= latest):
            return None
        seen.add(key)
        added.append(reading)
        latest = moment
        current = msgspec.structs.replace(
            current,
            count=current.count + 1,
            first_at=current.first_at or reading.at,
            last_at=reading.at,
        )
        if plausible_wh(reading.wh) and (end_moment is None or moment <= end_moment):
            current = msgspec.structs.replace(_push(current, reading.wh), counted_at=reading.at)
    return Advanced(current, tuple(added))


def summarize(
    readings: Sequence[EnergyReading], tx: Transaction, arrival_from: int | None = None
) -> MeterSummary:
    """The aggregate of ``tx``'s stored ``readings`` (in arrival order), from scratch."""
    times = [(moment, reading.at) for reading in readings if (moment := parse_time(reading.at))]
    end = cutoff(tx)
    end_moment = parse_time(end)
    current = _based(
        MeterSummary(
            count=len(readings),
            first_at=min(times)[1] if times else None,
            last_at=max(times)[1] if times else None,
            arrival_from=arrival_from,
            cutoff=end,
        ),
        series_start(tx),
    )
    counted: dt.datetime | None = None
    for reading in ordered_readings(readings, arrival_from):
        if not plausible_wh(reading.wh):
            continue
        moment = parse_time(reading.at)
        if end_moment is not None and moment is not None and moment > end_moment:
            continue
        current = _push(current, reading.wh)
        if moment is not None and (counted is None or moment > counted):
            counted = moment
            current = msgspec.structs.replace(current, counted_at=reading.at)
    return current


def rebuild(
    stored: Sequence[EnergyReading],
    tx: Transaction,
    readings: Sequence[EnergyReading],
    previous: MeterSummary | None,
) -> Advanced:
    """:func:`advance` with the ``stored`` readings at hand (arrival order): ``readings``
    already stored (same time and value) are left out, the aggregate is computed again.

    ``previous`` is the aggregate the stored readings had (None for readings kept in the
    record itself by older versions, whose order is the counting order already).
    """
    keys = {(reading.at, reading.wh) for reading in stored}
    added: list[EnergyReading] = []
    for reading in readings:
        key = (reading.at, reading.wh)
        if key not in keys:
            keys.add(key)
            added.append(reading)
    if previous is not None:
        arrival_from = previous.arrival_from
    else:
        unreadable = any(parse_time(reading.at) is None for reading in stored)
        arrival_from = 0 if unreadable else None
    if arrival_from is None and any(parse_time(reading.at) is None for reading in added):
        arrival_from = len(stored)
    return Advanced(summarize([*stored, *added], tx, arrival_from), tuple(added))


def energy_wh(tx: Transaction) -> float | None:
    """Energy delivered in ``tx`` so far (final once it has ended); None without any value.

    The series is meterStart, then the counted readings by time (plausible values; once the
    transaction has ended, none timestamped after its end: the energy and cost of a finished
    transaction do not change with what the meter showed later), then meterStop: the start
    and stop values, when present, are the authoritative ends of the series. Normally last -
    first; across a register reset the sum of the positive steps (:func:`delivered_wh`). The
    readings are known through ``tx.meter``, the aggregate the store keeps. The result never
    exceeds :data:`MAX_REGISTER_WH`.
    """
    summary = tx.meter if tx.meter is not None else _based(_EMPTY, series_start(tx))
    stop = tx.meter_stop_wh
    if stop is not None and plausible_wh(stop):
        summary = _push(summary, stop)
    if summary.values == 0 or summary.first_wh is None or summary.last_wh is None:
        return None
    if summary.values < 2:
        return 0.0
    if not summary.dropped:
        delivered = max(summary.last_wh - summary.first_wh, 0.0)
    else:
        delivered = _rise(summary.rise_wh, summary.rise_error)
    return min(delivered, MAX_REGISTER_WH)


def derived(tx: Transaction, summary: MeterSummary) -> Transaction:
    """``tx`` with the aggregate ``summary`` of its readings and the energy it gives. A
    transaction with no reading and no meter start or stop at all keeps its ``energy_wh``
    (a figure given by whoever made the record: nothing here can compute one)."""
    counted = msgspec.structs.replace(tx, meter=summary if summary != _EMPTY else None)
    wh = energy_wh(counted)
    if wh is None and summary.count == 0 and tx.meter_start_wh is None and tx.meter_stop_wh is None:
        return counted
    return msgspec.structs.replace(counted, energy_wh=wh)


def summarized(tx: Transaction, readings: Iterable[EnergyReading]) -> Transaction:
    """``tx`` with its aggregate and energy computed from all its ``readings`` (in arrival
    order, duplicates left out): the transaction as a store would hold it."""
    return derived(tx, rebuild([], tx, list(readings), None).summary)


def _number(value: Any, version: str) -> Decimal | str | None:
    """The numeric value of a sampledValue; a rejection reason when it is not a number, None
    when the value is not of the version's type (1.6 strings, 2.0.1 numbers)."""
    if _is_v16(version):
        if not isinstance(value, str):
            return None
        try:
            number = _WIDE.create_decimal(value.strip())
        except (ArithmeticError, ValueError):
            return NOT_A_NUMBER
        if number.is_nan() and value.strip().lower().lstrip("+-") not in ("nan", "snan"):
            return NOT_A_NUMBER  # the context turned an unparsable string into NaN
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return NOT_FINITE
        try:
            number = _WIDE.create_decimal(value if isinstance(value, int) else repr(value))
        except (ArithmeticError, ValueError):
            return OUT_OF_RANGE
    return number if number.is_finite() else NOT_FINITE


def display_value(value: Any) -> str:
    """``value`` for a log line, at most 40 characters (a JSON number may be any length)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<integer of {value.bit_length()} bits>"
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def register_wh(sampled_value: Mapping[str, Any], version: str) -> float | None:
    """The energy-register value of one OCPP sampledValue, in Wh; None when it is not one or
    when it is rejected (see :func:`screen_sampled_value`)."""
    result = screen_sampled_value(sampled_value, version)
    return result if isinstance(result, float) else None


def screen_sampled_value(sampled_value: Mapping[str, Any], version: str) -> float | str | None:
    """The energy-register value of one sampledValue in Wh, the reason it is rejected
    (not a number, not finite, negative, above :data:`MAX_REGISTER_WH` after unit
    conversion), or None when the sampledValue is no total energy-register value at all.

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
    if number is None or isinstance(number, str):
        return number
    try:
        wh = _WIDE.multiply(_WIDE.scaleb(number, multiplier), _UNIT_TO_WH[unit.lower()])
    except (ArithmeticError, ValueError):
        return OUT_OF_RANGE
    return screen_wh(wh) if wh.is_finite() else OUT_OF_RANGE


def readings_from_meter_values(
    meter_values: Iterable[Mapping[str, Any]], version: str
) -> list[EnergyReading]:
    """The energy-register readings in a MeterValues / TransactionEvent ``meterValue`` list
    (:func:`screen_meter_values` without the rejected values)."""
    return screen_meter_values(meter_values, version).readings


def screen_meter_values(meter_values: Iterable[Mapping[str, Any]], version: str) -> Screened:
    """The energy-register readings in a ``meterValue`` list, and the register values rejected.

    At most one reading per meterValue (its first acceptable total register value);
    meterValues without a timestamp or without such a value contribute nothing.
    """
    readings: list[EnergyReading] = []
    rejected: list[RejectedReading] = []
    for meter_value in meter_values:
        raw_at = meter_value.get("timestamp")
        at = raw_at if isinstance(raw_at, str) else None
        for sampled_value in meter_value.get("sampledValue") or ():
            if not isinstance(sampled_value, Mapping):
                continue
            wh = screen_sampled_value(sampled_value, version)
            if wh is None:
                continue
            if isinstance(wh, str):
                rejected.append(RejectedReading(at, display_value(sampled_value.get("value")), wh))
                continue
            if at is not None:
                context = sampled_value.get("context")
                readings.append(
                    EnergyReading(
                        at=at, wh=wh, context=context if isinstance(context, str) else None
                    )
                )
            break
    return Screened(readings, rejected)


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
