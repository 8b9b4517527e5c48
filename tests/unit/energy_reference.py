"""The energy and price of a transaction computed from scratch over all of its readings: the
algorithm the CSMS used before it kept running aggregates, kept here verbatim as the reference
the incremental path is compared with (tests/unit/test_transactions_incremental.py).

``Session`` stands for a transaction as it was stored then: its facts and the whole list of
its readings, merged by :func:`merge_readings` at every message.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable
from decimal import Decimal

import msgspec

from csms.config import TariffSettings
from services.energy import MAX_REGISTER_WH, plausible_wh
from services.models import Cost, EnergyReading, Transaction, TransactionState
from services.rules import parse_time
from services.tariff import _MONEY, _SECONDS_PER_HOUR, _WH_PER_KWH, _money


class Session(msgspec.Struct, kw_only=True, frozen=True):
    """The facts of a transaction the energy and price depend on, and all its readings."""

    state: TransactionState = TransactionState.ACTIVE
    started_at: str | None = None
    ended_at: str | None = None
    meter_start_wh: float | None = None
    meter_stop_wh: float | None = None
    energy_wh: float | None = None
    readings: tuple[EnergyReading, ...] = ()

    @classmethod
    def of(cls, tx: Transaction, readings: Iterable[EnergyReading]) -> Session:
        """The facts of ``tx`` with ``readings`` (stored in that order)."""
        return cls(
            state=tx.state,
            started_at=tx.started_at,
            ended_at=tx.ended_at,
            meter_start_wh=tx.meter_start_wh,
            meter_stop_wh=tx.meter_stop_wh,
            energy_wh=tx.energy_wh,
            readings=tuple(readings),
        )


def _ordered(readings: Iterable[EnergyReading]) -> list[EnergyReading]:
    items = list(readings)
    keyed: list[tuple[dt.datetime, int, EnergyReading]] = []
    for index, reading in enumerate(items):
        moment = parse_time(reading.at)
        if moment is None:
            return items
        keyed.append((moment, index, reading))
    keyed.sort(key=lambda entry: (entry[0], entry[1]))
    return [reading for _, _, reading in keyed]


def merge_readings(
    existing: Iterable[EnergyReading], new: Iterable[EnergyReading]
) -> tuple[EnergyReading, ...]:
    seen: set[tuple[str, float]] = set()
    merged: list[EnergyReading] = []
    for reading in (*existing, *new):
        key = (reading.at, reading.wh)
        if key not in seen:
            seen.add(key)
            merged.append(reading)
    return tuple(_ordered(merged))


def delivered_wh(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    steps = [later - earlier for earlier, later in itertools.pairwise(values)]
    if all(step >= 0 for step in steps):
        return max(values[-1] - values[0], 0.0)
    return sum(step for step in steps if step > 0)


def counted_readings(tx: Session) -> list[EnergyReading]:
    end = parse_time(tx.ended_at) if tx.state is TransactionState.ENDED else None
    counted: list[EnergyReading] = []
    for reading in _ordered(tx.readings):
        if not plausible_wh(reading.wh):
            continue
        if end is not None:
            moment = parse_time(reading.at)
            if moment is not None and moment > end:
                continue
        counted.append(reading)
    return counted


def energy_wh(tx: Session) -> float | None:
    start, stop = tx.meter_start_wh, tx.meter_stop_wh
    values: list[float] = []
    if start is not None and plausible_wh(start):
        values.append(start)
    values.extend(reading.wh for reading in counted_readings(tx))
    if stop is not None and plausible_wh(stop):
        values.append(stop)
    if not values:
        return None
    return min(delivered_wh(values), MAX_REGISTER_WH)


def charged_kwh(tx: Session) -> Decimal:
    wh = energy_wh(tx)
    if wh is None and plausible_wh(tx.energy_wh):
        wh = tx.energy_wh
    if wh is None or wh <= 0:
        return Decimal(0)
    return _MONEY.divide(Decimal(repr(wh)), _WH_PER_KWH)


def charged_hours(tx: Session) -> Decimal:
    reading_times = [t for t in (parse_time(r.at) for r in tx.readings) if t is not None]
    start = parse_time(tx.started_at) or min(reading_times, default=None)
    end = parse_time(tx.ended_at) or max(reading_times, default=None)
    if start is None or end is None or end <= start:
        return Decimal(0)
    span: dt.timedelta = end - start
    seconds = Decimal(span.days * 86_400 + span.seconds) + Decimal(span.microseconds) / 1_000_000
    return _MONEY.divide(seconds, _SECONDS_PER_HOUR)


def quote(tx: Session, tariff: TariffSettings) -> Cost:
    energy_cost = _MONEY.multiply(charged_kwh(tx), tariff.energy_price_per_kwh)
    time_cost = _MONEY.multiply(charged_hours(tx), tariff.time_price_per_hour)
    fee = tariff.session_fee
    return Cost(
        total=_money(_MONEY.add(_MONEY.add(fee, energy_cost), time_cost)),
        currency=tariff.currency,
        energy=_money(energy_cost),
        time=_money(time_cost),
        fee=_money(fee),
    )


def superseded_end(tx: Session, at: str) -> str | None:
    """Where a superseded transaction ends: its latest reading, else its start, else ``at``."""
    start = parse_time(tx.started_at)
    moments = [(parse_time(r.at), r.at) for r in tx.readings]
    known = [(m, text) for m, text in moments if m is not None and (start is None or m >= start)]
    return max(known)[1] if known else (tx.started_at or at)
