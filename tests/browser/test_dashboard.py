"""The operator dashboard in a real browser: logging in, what it shows, what it sends."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.browser.conftest import ADMIN_KEY, Csms

pytestmark = pytest.mark.slow


async def test_the_login_form_takes_a_key_and_a_wrong_one_is_refused(
    csms: Csms, page: Page
) -> None:
    await page.goto(csms.url + "/")
    await page.get_by_label("API key").fill("csms_nope_wrong")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_contain_text("not valid")
    await page.get_by_label("API key").fill(ADMIN_KEY)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Network")).to_be_visible()
    await expect(page.locator("[data-count=stations] .n")).to_have_text("0")


async def test_key_in_the_address_logs_in_and_is_removed_from_it(csms: Csms, page: Page) -> None:
    await page.goto(f"{csms.url}/?key={ADMIN_KEY}#/tokens")
    await expect(page.get_by_role("heading", name="Tokens")).to_be_visible()
    assert "key=" not in page.url
    assert page.url.endswith("#/tokens")
    stored = await page.evaluate("sessionStorage.getItem('csms.apiKey')")
    assert stored == ADMIN_KEY


async def test_the_page_and_its_assets_come_from_the_csms_only(csms: Csms) -> None:
    async with httpx.AsyncClient(base_url=csms.url) as client:
        index = await client.get("/")
        assert index.status_code == 200
        assert "default-src 'self'" in index.headers["content-security-policy"]
        assert "http" not in index.text.replace("http-equiv", "")
        script = await client.get("/ui/js/main.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        assert (await client.get("/ui/js/nope.js")).status_code == 404


async def test_a_read_only_key_sees_no_command_buttons(csms: Csms, page: Page) -> None:
    station = csms.station("RO-1")
    await station.connect()
    try:
        assert await station.boot()
        key = await csms.key("read")
        await page.goto(f"{csms.url}/?key={key}#/stations/RO-1")
        await expect(page.locator("#read-only")).to_be_visible()
        await expect(page.get_by_role("button", name="Reset")).to_have_count(0)
        await expect(page.get_by_role("button", name="Remote start")).to_have_count(0)
    finally:
        await station.close()


async def test_reset_and_the_generic_form_show_the_stations_answers(csms: Csms, page: Page) -> None:
    station = csms.station("CMD-1")
    await station.connect()
    try:
        assert await station.boot()
        key = await csms.key("operate")
        await page.goto(f"{csms.url}/?key={key}#/stations/CMD-1")
        reset = page.locator("#cmd-reset")
        await reset.get_by_role("button", name="Reset").click()
        await expect(reset.get_by_role("status")).to_contain_text("station answered Accepted")
        generic = page.locator("#cmd-generic")
        await generic.get_by_label("Action (ocpp2.0.1)").select_option("ClearCache")
        await generic.get_by_role("button", name="Send").click()
        await expect(generic.get_by_role("status")).to_contain_text("outcome: result")
        await expect(generic.get_by_role("status")).to_contain_text('"action": "ClearCache"')
        # A generated form with required fields: TriggerMessage needs requestedMessage.
        await generic.get_by_label("Action (ocpp2.0.1)").select_option("TriggerMessage")
        await generic.get_by_label("requestedMessage (required)").select_option("Heartbeat")
        await generic.get_by_role("button", name="Send").click()
        await expect(generic.get_by_role("status")).to_contain_text('"action": "TriggerMessage"')
    finally:
        await station.close()
    assert station.stats.csms_calls["Reset"] == 1
    assert station.stats.csms_calls["ClearCache"] == 1
    assert station.stats.csms_calls["TriggerMessage"] == 1


async def test_keyboard_alone_reaches_the_command_buttons(csms: Csms, page: Page) -> None:
    station = csms.station("KB-1")
    await station.connect()
    try:
        assert await station.boot()
        await page.goto(f"{csms.url}/?key={ADMIN_KEY}#/stations/KB-1")
        await expect(page.locator("#cmd-reset")).to_be_visible()
        reached: set[str] = set()
        for _ in range(80):
            await page.keyboard.press("Tab")
            focused = await page.evaluate(
                "document.activeElement.tagName + ':' + document.activeElement.textContent.trim()"
            )
            reached.add(focused)
            if "BUTTON:Reset" in reached and "BUTTON:Remote start" in reached:
                break
        assert "BUTTON:Remote start" in reached
        assert "BUTTON:Reset" in reached
        # Pressing Enter on the focused Reset button sends it.
        await page.locator("#cmd-reset button").focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#cmd-reset [role=status]")).to_contain_text("Accepted")
    finally:
        await station.close()


async def test_the_page_fits_a_phone(csms: Csms, page: Page) -> None:
    station = csms.station("PHONE-1")
    await station.connect()
    try:
        assert await station.boot()
        await page.set_viewport_size({"width": 375, "height": 800})
        await page.goto(f"{csms.url}/?key={ADMIN_KEY}")
        await expect(page.get_by_role("link", name="PHONE-1")).to_be_visible()
        for route in ("#/", "#/stations/PHONE-1", "#/transactions", "#/tokens"):
            await page.goto(f"{csms.url}/{route}")
            await expect(page.locator("h1")).to_be_visible()
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, f"{route} is {width}px wide"
    finally:
        await station.close()


async def test_stations_status_and_energy_show_live(csms: Csms, page: Page) -> None:
    await page.goto(f"{csms.url}/?key={ADMIN_KEY}")
    await expect(page.locator("[data-live=live]")).to_be_visible()
    station = csms.station("LIVE-1")
    await station.connect()
    try:
        assert await station.boot()
        row = page.locator("tr[data-station='LIVE-1']")
        await expect(row).to_contain_text("online")  # no reload
        await expect(page.locator("[data-count=online] .n")).to_have_text("1")

        await row.get_by_role("link", name="LIVE-1").click()
        # The station's own event stream (the message log, #message-log, has one of its own).
        station_stream = page.locator("[data-live=live]:not(#message-log [data-live])")
        await expect(station_stream).to_be_visible()
        await station.status("Available")
        status = page.locator("[data-connector-status='1/1']")
        await expect(status).to_have_text("Available")
        await station.status("Faulted")
        await expect(status).to_have_text("Faulted")
        await station.status("Available")

        start = page.locator("#cmd-remote-start")
        await start.get_by_role("button", name="Remote start").click()
        await expect(start.get_by_role("status")).to_contain_text("start started")
        assert station.session is not None
        chart = page.locator("svg.chart")
        await expect(chart).to_be_visible()
        before = int(await chart.get_attribute("data-points") or "0")
        await station.meter(500)
        await expect(chart).not_to_have_attribute("data-points", str(before))
        await station.meter(500)
        await expect(chart).to_have_attribute("data-points", str(before + 2))
        await expect(chart).to_have_attribute("data-last-wh", "1000")
    finally:
        await station.close()


async def test_schema_routes_give_csms_actions_and_their_request_schemas(csms: Csms) -> None:
    key = {"Authorization": f"Bearer {await csms.key('read')}"}
    async with httpx.AsyncClient(base_url=csms.url, headers=key) as client:
        listed = (await client.get("/v1/schemas/ocpp1.6")).json()
        assert "ChangeConfiguration" in listed["actions"]
        assert "BootNotification" not in listed["actions"]
        reset = (await client.get("/v1/schemas/ocpp2.0.1/Reset")).json()
        assert reset["required"] == ["type"]
        station_only = await client.get("/v1/schemas/ocpp2.0.1/BootNotification")
        assert station_only.status_code == 422
        assert station_only.json()["code"] == "not_a_csms_action"
        unknown = await client.get("/v1/schemas/ocpp9/Reset")
        assert unknown.status_code == 404
        assert unknown.json()["details"]["field"] == "version"
        assert (await client.get("/v1/schemas/ocpp1.6/Nope")).status_code == 404
