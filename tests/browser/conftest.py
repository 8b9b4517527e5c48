"""The dashboard in headless Chromium (Debian's ``chromium``, no browser download) against
``csms run``'s composition with simulated stations."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from cli import processes
from cli.processes import Embedded
from csms.config import Settings
from csms.versions import OcppVersion
from simulator.station import SimulatedStation
from simulator.stats import Stats

ADMIN_KEY = "browser-admin-key-0123456789"

SETTINGS: dict[str, Any] = {
    "listen_port": 0,
    "api_port": 0,
    "ping_interval": None,
    "ping_timeout": None,
    "api_admin_key": ADMIN_KEY,
    "running_cost_interval": 0,  # a transaction.updated for every reading
}


@dataclass
class Csms:
    running: Embedded
    url: str

    async def key(self, scope: str) -> str:
        """A new API key of ``scope``."""
        async with httpx.AsyncClient(base_url=self.url) as client:
            answer = await client.post(
                "/v1/api-keys",
                json={"name": f"browser-{scope}", "scope": scope},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
        answer.raise_for_status()
        key: str = answer.json()["key"]
        return key

    def station(
        self, station_id: str, version: OcppVersion = OcppVersion.OCPP201
    ) -> SimulatedStation:
        return SimulatedStation(
            station_id, self.running.gateway.url_for(station_id), version, Stats(), call_timeout=10
        )


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    async with processes.embedded(Settings(**SETTINGS)) as running:
        assert running.api is not None
        yield Csms(running, running.api.url)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = shutil.which("chromium")
    assert executable is not None, "install Debian's chromium package (apt-get install chromium)"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    await context.close()
    assert errors == [], f"the page raised: {errors}"
