"""``csms api-key create / list / revoke`` against an in-memory store standing in for Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

import services.factory
from cli.main import main
from csms.config import Settings
from services import Services
from services.api_keys import MemoryApiKeyStore, authenticate, parse_key
from services.memory import (
    MemoryIdempotencyStore,
    MemoryStationRegistry,
    MemoryTokenStore,
    MemoryTransactionStore,
)
from services.tariff import ConfiguredTariff


@pytest.fixture(autouse=True)
def _keep_logging_config() -> Iterator[None]:
    """``main`` configures structlog for the process (caching loggers): undo it, so tests
    that capture logs later still see every logger."""
    saved = structlog.get_config()
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)


REDIS = ["--redis-url", "redis://stores.invalid:6379/0"]  # never opened: see the fixture


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> MemoryApiKeyStore:
    store = MemoryApiKeyStore()
    shared = Services(
        stations=MemoryStationRegistry(),
        tokens=MemoryTokenStore(),
        transactions=MemoryTransactionStore(),
        tariff=ConfiguredTariff(Settings().tariff),
        idempotency=MemoryIdempotencyStore(),
        api_keys=store,
    )

    @contextlib.asynccontextmanager
    async def open_services(settings: Settings) -> AsyncIterator[Services]:
        assert settings.redis_url == REDIS[1]
        yield shared

    monkeypatch.setattr(services.factory, "open_services", open_services)
    return store


def test_create_prints_the_key_once_and_stores_its_hash(
    keys: MemoryApiKeyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["api-key", "create", "ci", "--scope", "operate", *REDIS]) == 0
    out = capsys.readouterr().out.strip()
    parsed = parse_key(out)
    assert parsed is not None
    record = asyncio.run(authenticate(keys, out))
    assert record is not None and record.scope.value == "operate" and record.name == "ci"
    assert parsed[1] not in record.secret_hash


def test_list_and_revoke(keys: MemoryApiKeyStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["api-key", "create", "dash", *REDIS]) == 0
    key = capsys.readouterr().out.strip()
    assert main(["api-key", "list", "--json", *REDIS]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    listed = json.loads(line)
    assert listed["name"] == "dash" and listed["scope"] == "read"
    assert listed["revoked_at"] is None and key not in line
    assert main(["api-key", "revoke", key, *REDIS]) == 0  # a whole key names its id
    assert asyncio.run(authenticate(keys, key)) is None
    assert main(["api-key", "list", *REDIS]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["api-key", "revoke", "0123456789abcdef", *REDIS]) == 2


def test_api_key_commands_need_the_shared_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSMS_REDIS_URL", raising=False)
    with pytest.raises(SystemExit, match="shared stores"):
        main(["api-key", "create", "x"])
