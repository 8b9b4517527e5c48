"""``csms station add`` and ``csms token add`` against in-memory stores standing in for Redis."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator

import pytest

import services.factory
from cli.main import main
from csms.config import Settings
from services import Services
from services.memory import (
    MemoryIdempotencyStore,
    MemoryStationRegistry,
    MemoryTokenStore,
    MemoryTransactionStore,
)
from services.models import RegistrationStatus, StationRecord, TokenRecord
from services.tariff import ConfiguredTariff

REDIS = ["--redis-url", "redis://stores.invalid:6379/0"]  # never opened: see the fixture


@pytest.fixture
def stores(monkeypatch: pytest.MonkeyPatch) -> Services:
    """The services every CLI command in a test opens: one set, kept between commands."""
    shared = Services(
        stations=MemoryStationRegistry(),
        tokens=MemoryTokenStore(),
        transactions=MemoryTransactionStore(),
        tariff=ConfiguredTariff(Settings().tariff),
        idempotency=MemoryIdempotencyStore(),
    )

    @contextlib.asynccontextmanager
    async def open_services(settings: Settings) -> AsyncIterator[Services]:
        assert settings.redis_url == REDIS[1]
        yield shared

    monkeypatch.setattr(services.factory, "open_services", open_services)
    return shared


def _station(stores: Services, station_id: str) -> StationRecord:
    record = asyncio.run(stores.stations.get(station_id))
    assert record is not None
    return record


def _token(stores: Services, id_token: str) -> TokenRecord | None:
    tokens = stores.tokens
    assert isinstance(tokens, MemoryTokenStore)
    return asyncio.run(tokens.get(id_token))


def test_station_add_accepts_a_new_station_by_default(
    stores: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["station", "add", "CP-1", *REDIS]) == 0
    assert _station(stores, "CP-1").registration is RegistrationStatus.ACCEPTED
    assert "registration Accepted" in capsys.readouterr().out


@pytest.mark.parametrize("status", ["Rejected", "Pending"])
def test_station_add_without_registration_keeps_the_registration(
    stores: Services, status: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["station", "add", "CP-1", "--registration", status, *REDIS]) == 0
    assert main(["station", "add", "CP-1", "--versions", "ocpp2.0.1", *REDIS]) == 0
    record = _station(stores, "CP-1")
    assert record.registration == RegistrationStatus(status)
    assert list(record.allowed_versions or []) == ["ocpp2.0.1"]  # the change asked for
    assert f"registration {status}" in capsys.readouterr().out.splitlines()[-1]
    assert main(["station", "add", "CP-1", "--registration", "Accepted", *REDIS]) == 0
    assert _station(stores, "CP-1").registration is RegistrationStatus.ACCEPTED


def test_station_add_registers_a_station_only_seen_as_unknown(stores: Services) -> None:
    # A station admitted by unknown_stations = "pending" has a record, but is not registered.
    asyncio.run(stores.stations.set_registration("CP-2", RegistrationStatus.PENDING))
    assert not _station(stores, "CP-2").known
    assert main(["station", "add", "CP-2", *REDIS]) == 0
    record = _station(stores, "CP-2")
    assert record.known
    assert record.registration is RegistrationStatus.ACCEPTED


def test_station_add_with_credentials_accepts_a_new_station(stores: Services) -> None:
    args = ["station", "add", "CP-3", "--profile", "1", "--generate-password", *REDIS]
    assert main(args) == 0
    record = _station(stores, "CP-3")
    assert record.registration is RegistrationStatus.ACCEPTED
    assert record.security_profile == 1 and record.password_hash is not None


def test_token_add_stores_a_future_expiry_and_a_type(stores: Services) -> None:
    expiry = "2099-12-31T23:59:59Z"
    args = ["token", "add", "TAG-1", "--expiry", expiry, "--type", "ISO14443", *REDIS]
    assert main(args) == 0
    token = _token(stores, "TAG-1")
    assert token is not None
    assert token.expiry == expiry
    assert token.token_type == "ISO14443"


@pytest.mark.parametrize("expiry", ["2020-01-01T00:00:00Z", "2001-02-03"])
def test_token_add_refuses_an_expiry_in_the_past(
    stores: Services, expiry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "add", "TAG-1", "--expiry", expiry, *REDIS]) == 2
    error = capsys.readouterr().err
    assert "already passed" in error and "--allow-past-expiry" in error
    assert _token(stores, "TAG-1") is None
    assert main(["token", "add", "TAG-1", "--expiry", expiry, "--allow-past-expiry", *REDIS]) == 0
    token = _token(stores, "TAG-1")
    assert token is not None and token.expiry == expiry


def test_token_add_refuses_an_unreadable_expiry(
    stores: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    for expiry in ("tomorrow", "31/12/2099", "2099-13-01T00:00:00Z"):
        assert main(["token", "add", "TAG-1", "--expiry", expiry, *REDIS]) == 2
        assert "not an ISO 8601 date-time" in capsys.readouterr().err
    assert _token(stores, "TAG-1") is None


def test_token_add_takes_a_naive_expiry_as_utc(stores: Services) -> None:
    soon = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).replace(tzinfo=None)
    # Five minutes ago in UTC is in the past whatever the machine's time zone.
    assert main(["token", "add", "TAG-1", "--expiry", soon.isoformat(), *REDIS]) == 2
    assert _token(stores, "TAG-1") is None


def test_token_add_refuses_an_unknown_type(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["token", "add", "TAG-1", "--type", "Magic", *REDIS])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
