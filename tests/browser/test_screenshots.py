"""Screenshots of every page at desktop and phone width, for a reviewer to look at.

Saved under ``artifacts/screenshots/`` (``CSMS_ARTIFACTS`` moves it; not committed). Each
page must have rendered its content before the shot: a blank or still-loading page fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from tests.browser.conftest import ADMIN_KEY, Csms

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WIDTHS = {"desktop": (1280, 900), "phone": (375, 812)}
PNG = b"\x89PNG\r\n\x1a\n"


async def test_every_page_at_desktop_and_phone_width(csms: Csms, browser: Browser) -> None:
    station = csms.station("CS-SHOT")
    await station.connect()
    assert await station.boot()
    await station.status("Available")
    assert await station.start_session(authorize=False)
    await station.meter(1000)
    pages = {
        "overview": "#/",
        "station": "#/stations/CS-SHOT",
        "transactions": "#/transactions",
        "tokens": "#/tokens",
        "webhooks": "#/webhooks",
    }
    out = Path(os.environ.get("CSMS_ARTIFACTS", ROOT / "artifacts")) / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    try:
        for width_name, (width, height) in WIDTHS.items():
            context = await browser.new_context(viewport={"width": width, "height": height})
            page = await context.new_page()
            await page.goto(f"{csms.url}/?key={ADMIN_KEY}#/")
            for name, route in pages.items():
                await page.goto(f"{csms.url}/{route}")
                # The router's placeholder is gone: the page itself has rendered.
                placeholder = page.locator("main > p.muted", has_text="loading…")
                await expect(placeholder).to_have_count(0)
                await expect(page.locator("main h1, main h2").first).to_be_visible()
                path = out / f"{name}-{width_name}.png"
                await page.screenshot(path=str(path), full_page=True)
                saved.append(path)
            await context.close()
    finally:
        await station.close()
    assert len(saved) == len(pages) * len(WIDTHS)
    assert all(path.read_bytes().startswith(PNG) and path.stat().st_size > 2000 for path in saved)
