"""Plug-in loading: clear errors naming the spec, sync and async factories, Protocol checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from csms.config import Settings
from services.interfaces import TariffService
from services.loader import instantiate, load_factory, protocol_methods
from services.models import Cost, Transaction

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


@pytest.fixture(autouse=True)
def plugin_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make tests/plugins importable as an operator's own directory would be."""
    monkeypatch.syspath_prepend(str(PLUGINS))


TX = Transaction(station_id="CS1", transaction_id="1", version="ocpp1.6")


@pytest.mark.parametrize("factory", ["create", "create_async", "Factories.nested"])
async def test_instantiates_sync_async_and_nested_factories(factory: str) -> None:
    service = await instantiate(f"sample_tariff:{factory}", TariffService, Settings())
    assert isinstance(service, TariffService)
    cost = await service.price(TX)
    assert isinstance(cost, Cost)


def test_load_factory_returns_the_callable() -> None:
    factory = load_factory("services.tariff:ConfiguredTariff")
    from services.tariff import ConfiguredTariff

    assert factory is ConfiguredTariff


@pytest.mark.parametrize("spec", ["sample_tariff", "sample_tariff:", ":create", ""])
def test_malformed_spec(spec: str) -> None:
    with pytest.raises(ValueError, match=r"package\.module:attribute") as info:
        load_factory(spec)
    assert repr(spec) in str(info.value)


def test_missing_module() -> None:
    with pytest.raises(ImportError, match=r"'no_such_plugin:create'.*cannot import module"):
        load_factory("no_such_plugin:create")


def test_missing_attribute() -> None:
    with pytest.raises(ImportError, match=r"'sample_tariff:nope'.*has no attribute 'nope'"):
        load_factory("sample_tariff:nope")


def test_not_callable() -> None:
    with pytest.raises(TypeError, match=r"'sample_tariff:NOT_CALLABLE'.*not callable"):
        load_factory("sample_tariff:NOT_CALLABLE")


async def test_result_missing_methods_names_them() -> None:
    with pytest.raises(TypeError, match=r"NoPrice, which is not a TariffService: missing price"):
        await instantiate("sample_tariff:broken", TariffService, Settings())


def test_protocol_methods() -> None:
    from services.interfaces import StationRegistry

    assert protocol_methods(TariffService) == ["price"]
    assert "mark_disconnected" in protocol_methods(StationRegistry)
