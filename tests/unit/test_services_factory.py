"""open_services in memory mode: preloading, first-try mode, plug-ins, fail-fast Redis."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from csms.config import Settings, StationSettings, TokenSettings
from services import StoreUnavailable
from services.factory import open_services, redact_url
from services.memory import MemoryStationRegistry, MemoryTokenStore
from services.models import AuthorizationStatus, RegistrationStatus, Transaction
from services.tariff import ConfiguredTariff
from tests.servers import free_port

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


async def test_memory_services_with_preloaded_tokens_and_stations() -> None:
    settings = Settings(
        tokens=[
            TokenSettings(id_token="A"),
            TokenSettings(id_token="B", status="Blocked", group_id="g"),
            TokenSettings(id_token="R", token_type="ISO14443"),
        ],
        stations=[StationSettings(station_id="CS1", registration="Pending")],
    )
    async with open_services(settings) as services:
        assert isinstance(services.stations, MemoryStationRegistry)
        assert isinstance(services.tokens, MemoryTokenStore)
        assert isinstance(services.tariff, ConfiguredTariff)
        assert (await services.tokens.authorize("A")).status is AuthorizationStatus.ACCEPTED
        blocked = await services.tokens.authorize("B")
        assert (blocked.status, blocked.group_id) == (AuthorizationStatus.BLOCKED, "g")
        assert (await services.tokens.authorize("C")).status is AuthorizationStatus.UNKNOWN
        # A configured token type is kept: the token is accepted for that type only.
        assert (await services.tokens.authorize("R", "ISO14443")).status.value == "Accepted"
        assert (await services.tokens.authorize("R", "eMAID")).status.value == "Unknown"
        station = await services.stations.get("CS1")
        assert station is not None
        assert (station.known, station.registration) == (True, RegistrationStatus.PENDING)


async def test_first_try_mode() -> None:
    async with open_services(Settings(unknown_tokens="accept")) as services:
        assert (await services.tokens.authorize("C")).status is AuthorizationStatus.ACCEPTED


async def test_plugins_replace_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))
    settings = Settings(
        tariff_service="sample_tariff:create_async",
        token_store="sample_tariff:allow_list",
        tokens=[TokenSettings(id_token="ignored")],
    )
    async with open_services(settings) as services:
        tx = Transaction(station_id="CS1", transaction_id="1", version="ocpp1.6")
        assert (await services.tariff.price(tx)).total == "1.00"
        assert (await services.tokens.authorize("OK-1")).status is AuthorizationStatus.ACCEPTED
        assert (await services.tokens.authorize("x")).status is AuthorizationStatus.INVALID


async def test_broken_plugin_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))
    with pytest.raises(TypeError, match="missing price"):
        async with open_services(Settings(tariff_service="sample_tariff:broken")):
            pass


async def test_unreachable_redis_fails_fast_without_password() -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"redis://user:\*\*\*@127\.0\.0\.1") as info:
        async with open_services(Settings(redis_url=url)):
            pass
    assert time.monotonic() - started < 3
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://u:pw@h/1", "rediss://u:***@h/1"),
        ("redis://u:pw@[::1]:7000", "redis://u:***@[::1]:7000"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
