"""The operator API as ``csms run`` mounts it, and ``csms api``'s start-up checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog

from cli import processes
from cli.main import main
from csms.config import Settings
from gateway.listeners import decide_first_try


@pytest.fixture(autouse=True)
def _keep_logging_config() -> Iterator[None]:
    """``main`` configures structlog for the process (caching loggers): undo it, so tests
    that capture logs later still see every logger."""
    saved = structlog.get_config()
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)


BASE: dict[str, Any] = {
    "listen_port": 0,
    "api_port": 0,
    "ping_interval": None,
    "ping_timeout": None,
}


async def test_csms_run_mounts_the_api_with_a_generated_admin_key() -> None:
    settings = Settings(**BASE)
    async with processes.embedded(settings) as running:
        assert running.api is not None and running.generated_admin_key is not None
        banner = processes._banner(
            settings, running.gateway, decide_first_try(settings, embedded=True), running
        )
        assert f"Operator API: {running.api.url}/v1" in banner
        assert f"Dashboard:    {running.api.url}/ " in banner
        assert running.generated_admin_key in banner
        async with httpx.AsyncClient(base_url=running.api.url) as client:
            key = {"Authorization": f"Bearer {running.generated_admin_key}"}
            assert (await client.get("/v1/stations", headers=key)).status_code == 200
            assert (await client.get("/v1/ready")).json()["status"] == "ready"
            created = await client.post(
                "/v1/api-keys", json={"name": "ops", "scope": "read"}, headers=key
            )
            assert created.status_code == 201
            assert (await client.get("/v1/stations")).status_code == 401


async def test_a_configured_admin_key_replaces_the_generated_one() -> None:
    settings = Settings.model_validate({**BASE, "api_admin_key": "configured-admin-key-0123"})
    async with processes.embedded(settings) as running:
        assert running.api is not None and running.generated_admin_key is None
        async with httpx.AsyncClient(base_url=running.api.url) as client:
            key = {"X-API-Key": "configured-admin-key-0123"}
            assert (await client.get("/v1/api-keys", headers=key)).status_code == 200


async def test_no_key_is_generated_outside_first_try() -> None:
    settings = Settings(**BASE, first_try=False)
    async with processes.embedded(settings) as running:
        assert running.api is not None and running.generated_admin_key is None
        banner = processes._banner(
            settings, running.gateway, decide_first_try(settings, embedded=True), running
        )
        assert "set api_admin_key" in banner


async def test_all_in_one_runs_without_the_api() -> None:
    async with processes.embedded(Settings(**BASE), api=False) as running:
        assert running.api is None


def test_csms_api_needs_a_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSMS_BROKER_URL", raising=False)
    with pytest.raises(SystemExit, match="csms api needs a broker"):
        main(["api"])


@pytest.mark.parametrize("key", ["short", "has spaces in the key value", "é" * 20])
def test_admin_key_setting_is_checked(key: str) -> None:
    with pytest.raises(ValueError, match="api_admin_key"):
        Settings.model_validate({"api_admin_key": key})
