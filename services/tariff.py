"""The built-in tariff: a session fee, a price per kWh and a price per hour plugged in.

Money is :class:`~decimal.Decimal` throughout and rounded once, at the end (half up, to
cents), so a long session does not accumulate rounding error. The parts reported next to
the total are each rounded the same way for display; the total is computed from the exact
parts, so the rounded parts may differ from it by a cent.

Pricing never raises on what a store holds: energy comes from
:func:`services.energy.energy_wh` (implausible readings screened out, bounded by
``MAX_REGISTER_WH``), a stored figure is used only when plausible, and the arithmetic runs in
a Decimal context wide enough for any bounded energy and duration at any configured price.

Pricing costs the same whatever the length of the session: it reads the transaction's
running aggregate of its readings (:class:`~services.models.MeterSummary`), never the
readings themselves.
"""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import ROUND_HALF_UP, Decimal

from csms.config import TariffSettings
from services import energy
from services.models import Cost, Transaction
from services.rules import parse_time

__all__ = [
    "CENT",
    "ConfiguredTariff",
    "charged_hours",
    "charged_kwh",
]

CENT = Decimal("0.01")
_WH_PER_KWH = Decimal(1000)
_SECONDS_PER_HOUR = Decimal(3600)

_MONEY = decimal.Context(prec=60, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
"""60 digits: a bounded energy (at most 10^9 kWh) or duration (at most ~10^8 h between two
OCPP timestamps) times any price with up to ~40 digits quantizes to cents exactly."""


def _money(amount: Decimal) -> str:
    return str(amount.quantize(CENT, rounding=ROUND_HALF_UP, context=_MONEY))


def charged_kwh(tx: Transaction) -> Decimal:
    """Energy to bill in kWh: from the readings, else the stored figure, else zero."""
    wh = energy.energy_wh(tx)
    if wh is None and energy.plausible_wh(tx.energy_wh):
        wh = tx.energy_wh
    if wh is None or wh <= 0:
        return Decimal(0)
    return _MONEY.divide(Decimal(repr(wh)), _WH_PER_KWH)


def charged_hours(tx: Transaction) -> Decimal:
    """Hours from the start to the end (or, while charging, the latest reading); zero when
    either end is unknown or they are out of order. Without a start time, the earliest
    reading stands for it."""
    summary = tx.meter
    first = summary.first_at if summary is not None else None
    last = summary.last_at if summary is not None else None
    start = parse_time(tx.started_at) or parse_time(first)
    end = parse_time(tx.ended_at) or parse_time(last)
    if start is None or end is None or end <= start:
        return Decimal(0)
    span: dt.timedelta = end - start
    seconds = Decimal(span.days * 86_400 + span.seconds) + Decimal(span.microseconds) / 1_000_000
    return _MONEY.divide(seconds, _SECONDS_PER_HOUR)


class ConfiguredTariff:
    """:class:`~services.interfaces.TariffService` priced by :class:`csms.config.TariffSettings`."""

    def __init__(self, settings: TariffSettings | None = None) -> None:
        self.settings = settings if settings is not None else TariffSettings()

    async def price(self, transaction: Transaction) -> Cost:
        return self.quote(transaction)

    def quote(self, transaction: Transaction) -> Cost:
        """The cost, synchronously (pricing is pure arithmetic)."""
        tariff = self.settings
        energy_cost = _MONEY.multiply(charged_kwh(transaction), tariff.energy_price_per_kwh)
        time_cost = _MONEY.multiply(charged_hours(transaction), tariff.time_price_per_hour)
        fee = tariff.session_fee
        return Cost(
            total=_money(_MONEY.add(_MONEY.add(fee, energy_cost), time_cost)),
            currency=tariff.currency,
            energy=_money(energy_cost),
            time=_money(time_cost),
            fee=_money(fee),
        )
