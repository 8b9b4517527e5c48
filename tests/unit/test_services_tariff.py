"""The built-in tariff's arithmetic: Decimal, rounded once, half up."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from csms.config import TariffSettings
from services.energy import summarized
from services.interfaces import TariffService
from services.models import Cost, EnergyReading, Transaction
from services.tariff import ConfiguredTariff


def tx(
    readings: tuple[EnergyReading, ...] | list[EnergyReading] = (), **fields: Any
) -> Transaction:
    """A transaction with ``readings`` (in arrival order) counted as a store counts them."""
    bare = Transaction(station_id="CS1", transaction_id="1", version="ocpp1.6", **fields)
    return summarized(bare, readings)


def tariff(energy: str = "0.30", hour: str = "0", fee: str = "0") -> ConfiguredTariff:
    return ConfiguredTariff(
        TariffSettings(
            energy_price_per_kwh=Decimal(energy),
            time_price_per_hour=Decimal(hour),
            session_fee=Decimal(fee),
            currency="EUR",
        )
    )


async def test_energy_time_and_fee() -> None:
    service = tariff(energy="0.39", hour="1.20", fee="0.50")
    assert isinstance(service, TariffService)
    cost = await service.price(
        tx(
            started_at="2026-01-15T12:00:00Z",
            ended_at="2026-01-15T13:30:00Z",
            meter_start_wh=1000.0,
            meter_stop_wh=13345.0,
        )
    )
    # 12.345 kWh * 0.39 = 4.81455; 1.5 h * 1.20 = 1.80; + 0.50 = 7.11455 -> 7.11
    assert cost == Cost(total="7.11", currency="EUR", energy="4.81", time="1.80", fee="0.50")


async def test_rounds_half_up_once_at_the_end() -> None:
    cost = await tariff(energy="0.10").price(tx(meter_start_wh=0.0, meter_stop_wh=50.0))
    assert cost.total == "0.01"  # 0.005 -> 0.01 (half up, not banker's 0.00)
    cost = await tariff(energy="0.10").price(tx(meter_start_wh=0.0, meter_stop_wh=149.0))
    assert cost.total == "0.01"  # 0.0149 -> 0.01


async def test_no_energy_no_times_is_just_the_fee() -> None:
    cost = await tariff(hour="2.00", fee="1.00").price(tx())
    assert cost == Cost(total="1.00", currency="EUR", energy="0.00", time="0.00", fee="1.00")


async def test_running_transaction_is_priced_up_to_its_latest_reading() -> None:
    readings = [
        EnergyReading(at="2026-01-15T12:30:00Z", wh=3000.0),
        EnergyReading(at="2026-01-15T12:15:00Z", wh=2000.0),
    ]
    cost = await tariff(energy="0.20", hour="4.00").price(
        tx(started_at="2026-01-15T12:00:00Z", meter_start_wh=1000.0, readings=readings)
    )
    # 2 kWh * 0.20 = 0.40; 0.5 h * 4.00 = 2.00
    assert (cost.energy, cost.time, cost.total) == ("0.40", "2.00", "2.40")


async def test_end_before_start_and_stored_energy_fallback() -> None:
    cost = await tariff(energy="1.00", hour="10").price(
        tx(started_at="2026-01-15T12:00:00Z", ended_at="2026-01-15T11:00:00Z", energy_wh=2500.0)
    )
    assert (cost.energy, cost.time, cost.total) == ("2.50", "0.00", "2.50")


async def test_default_settings() -> None:
    cost = await ConfiguredTariff().price(tx(meter_start_wh=0.0, meter_stop_wh=10_000.0))
    assert cost == Cost(total="3.00", currency="EUR", energy="3.00", time="0.00", fee="0.00")


async def test_pricing_never_raises_on_absurd_stored_data() -> None:
    """Records written before readings were screened may hold any float."""
    readings = [
        EnergyReading(at="2026-01-15T12:10:00Z", wh=float("inf")),
        EnergyReading(at="2026-01-15T12:20:00Z", wh=1e30),
        EnergyReading(at="2026-01-15T12:30:00Z", wh=float("nan")),
        EnergyReading(at="2026-01-15T12:40:00Z", wh=3000.0),
    ]
    cost = await tariff(energy="0.50").price(
        tx(meter_start_wh=1000.0, readings=readings, energy_wh=float("inf"))
    )
    assert cost.total == "1.00"  # 2 kWh from the plausible values only
    # Only absurd figures: nothing to bill but the fee, and the stored total is not trusted.
    cost = await tariff(fee="0.25").price(tx(meter_start_wh=-1e300, energy_wh=1e40))
    assert (cost.energy, cost.total) == ("0.00", "0.25")


async def test_largest_bounded_session_prices_to_the_cent() -> None:
    # The most energy a transaction can count, over the longest span OCPP times allow.
    cost = await tariff(energy="12345.6789", hour="9876.54321", fee="0.01").price(
        tx(
            started_at="0001-01-01T00:00:00Z",
            ended_at="9999-12-31T23:59:59Z",
            meter_start_wh=0.0,
            meter_stop_wh=1e12,
        )
    )
    assert cost.energy == "12345678900000.00"  # 10^9 kWh
    assert Decimal(cost.total) > Decimal(cost.energy)
