"""The dashboard's other pages and station commands in a real browser: tokens, transactions,
webhooks, the faulted count, the message log and security events, each command's answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request, Response
from playwright.async_api import Page, expect

from csms.versions import OcppVersion
from tests.browser.conftest import ADMIN_KEY, Csms
from tests.unit.test_webhooks import SECRET, receiver, wait_for

pytestmark = pytest.mark.slow


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


async def test_tokens_page_adds_a_token_and_blocks_it(csms: Csms, page: Page) -> None:
    key = await csms.key("operate")
    await page.goto(f"{csms.url}/?key={key}#/tokens")
    await page.get_by_label("Token", exact=True).fill("RFID-B1")
    await page.get_by_label("Type").select_option("ISO14443")
    await page.get_by_role("button", name="Add token").click()
    listed = page.get_by_role("row").filter(has_text="RFID-B1")
    await expect(listed).to_contain_text("Accepted")
    await expect(listed).to_contain_text("ISO14443")
    await listed.get_by_role("button", name="Block RFID-B1").click()
    await expect(listed.get_by_role("button", name="Unblock RFID-B1")).to_be_visible()
    await expect(listed).to_contain_text("Blocked")
    async with httpx.AsyncClient(base_url=csms.url, headers=admin()) as client:
        stored = (await client.get("/v1/tokens", params={"prefix": "RFID-B"})).json()["items"]
    assert [(t["id_token"], t["status"]) for t in stored] == [("RFID-B1", "Blocked")]
    # A station presenting it is refused.
    station = csms.station("CS-TOKENS")
    await station.connect()
    try:
        assert await station.boot()
        answer = await station.call(
            "Authorize", {"idToken": {"idToken": "RFID-B1", "type": "ISO14443"}}
        )
    finally:
        await station.close()
    assert answer["idTokenInfo"]["status"] == "Blocked"


async def test_transactions_page_filters_shows_a_chart_and_exports_csv(
    csms: Csms, page: Page, tmp_path: Path
) -> None:
    charging, other = csms.station("TXP-1"), csms.station("TXP-2")
    async with httpx.AsyncClient(base_url=csms.url, headers=admin()) as client:
        token = await client.put(f"/v1/tokens/{charging.token}", json={"status": "Accepted"})
        assert token.status_code == 200, token.text
    for station in (charging, other):
        await station.connect()
    try:
        for station in (charging, other):
            assert await station.boot()
            assert await station.start_session()
        await charging.meter(400)
        await charging.meter(600)
        assert charging.session is not None and charging.session.transaction_id is not None
        tx_id = charging.session.transaction_id
        await page.goto(f"{csms.url}/?key={ADMIN_KEY}#/transactions")
        await expect(page.get_by_role("link", name="TXP-2", exact=True)).to_be_visible()
        await page.get_by_label("Station", exact=True).fill("TXP-1")
        await page.get_by_label("State").select_option("Active")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.get_by_role("link", name="TXP-2", exact=True)).to_have_count(0)
        await expect(page.get_by_role("link", name="TXP-1", exact=True)).to_be_visible()

        async with page.expect_download() as downloading:
            await page.get_by_role("button", name="Export CSV").click()
        download = await downloading.value
        assert download.suggested_filename == "transactions.csv"
        saved = tmp_path / "transactions.csv"
        await download.save_as(saved)
        lines = saved.read_bytes().decode().split("\r\n")
        assert lines[0].startswith("station_id,transaction_id,version,")
        assert [line.split(",")[:2] for line in lines[1:] if line] == [["TXP-1", tx_id]]

        await page.get_by_role("link", name=tx_id).click()
        await expect(page.get_by_role("heading", name=f"Transaction {tx_id}")).to_be_visible()
        chart = page.locator("svg.chart")
        await expect(chart).to_have_attribute("data-last-wh", "1000")
        await expect(page.get_by_role("listitem").filter(has_text="started")).to_have_count(1)
    finally:
        for station in (charging, other):
            await station.close()


async def test_webhooks_page_shows_a_subscription_and_its_delivery(csms: Csms, page: Page) -> None:
    async def accept(_request: Request, _body: bytes, _n: int) -> Response:
        return Response(status_code=204)

    async with (
        receiver(accept) as (url, seen),
        httpx.AsyncClient(base_url=csms.url, headers=admin()) as client,
    ):
        created = await client.post(
            "/v1/webhooks",
            json={"url": url, "secret": SECRET, "events": ["*"], "description": "billing"},
        )
        assert created.status_code == 201, created.text
        hook = created.json()["id"]
        assert (await client.post(f"/v1/webhooks/{hook}/test")).status_code == 202

        async def delivered() -> bool:
            items: list[dict[str, Any]] = (
                await client.get(f"/v1/webhooks/{hook}/deliveries")
            ).json()["items"]
            return [item["state"] for item in items] == ["delivered"]

        await wait_for(delivered, seconds=15)
        assert len(seen.events) == 1
        await page.goto(f"{csms.url}/?key={ADMIN_KEY}#/webhooks")
        listed = page.get_by_role("row").filter(has_text=url)
        await expect(listed).to_contain_text("yes")
        await listed.get_by_role("button", name="Deliveries of billing").click()
        delivery = page.get_by_role("row").filter(has_text="webhook.test")
        await expect(delivery).to_contain_text("delivered")
        await expect(delivery).to_contain_text("204")


async def test_station_commands_show_the_answers_of_a_201_station(csms: Csms, page: Page) -> None:
    station = csms.station("OPS-201")
    await station.connect()
    try:
        assert await station.boot()
        await page.goto(f"{csms.url}/?key={ADMIN_KEY}#/stations/OPS-201")
        start = page.locator("#cmd-remote-start")
        await start.get_by_role("button", name="Remote start").click()
        await expect(start.get_by_role("status")).to_contain_text("start started")
        running = page.get_by_role("region", name="Transaction ")
        await running.get_by_role("button", name="Stop transaction").click()
        await expect(running.get_by_role("status")).to_contain_text("station answered Accepted")
        await expect(page.get_by_text("No transaction running.")).to_be_visible()
        assert station.session is None

        unlock = page.locator("#cmd-unlock")
        await unlock.get_by_role("button", name="Unlock").click()
        await expect(unlock.get_by_role("status")).to_contain_text("station answered Unlocked")

        availability = page.locator("#cmd-availability")
        await availability.get_by_label("Availability").select_option("false")
        await availability.get_by_role("button", name="Change availability").click()
        await expect(availability.get_by_role("status")).to_contain_text(
            "station answered Accepted"
        )

        get = page.locator("#cmd-get-variable")
        await get.get_by_role("button", name="Get variable").click()
        await expect(get.get_by_role("status")).to_contain_text('"attributeValue": "300"')

        put = page.locator("#cmd-set-variable")
        await put.get_by_label("Value").fill("120")
        await put.get_by_role("button", name="Set variable").click()
        await expect(put.get_by_role("status")).to_contain_text('"attributeStatus": "Accepted"')
    finally:
        await station.close()
    for action in (
        "RequestStartTransaction",
        "RequestStopTransaction",
        "UnlockConnector",
        "ChangeAvailability",
        "GetVariables",
        "SetVariables",
    ):
        assert station.stats.csms_calls[action] == 1, action


async def test_configuration_keys_of_a_16_station(csms: Csms, page: Page) -> None:
    station = csms.station("OPS-16", OcppVersion.OCPP16)
    await station.connect()
    try:
        assert await station.boot()
        await page.goto(f"{csms.url}/?key={ADMIN_KEY}#/stations/OPS-16")
        get = page.locator("#cmd-get-config")
        await get.get_by_label("Key (empty: all)").fill("HeartbeatInterval")
        await get.get_by_role("button", name="Get configuration").click()
        await expect(get.get_by_role("status")).to_contain_text('"key": "HeartbeatInterval"')
        await expect(get.get_by_role("status")).to_contain_text('"value": "300"')
        await expect(get.get_by_role("status")).not_to_contain_text("MeterValueSampleInterval")

        change = page.locator("#cmd-set-config")
        await change.get_by_label("Key", exact=True).fill("HeartbeatInterval")
        await change.get_by_label("Value").fill("60")
        await change.get_by_role("button", name="Change configuration").click()
        await expect(change.get_by_role("status")).to_contain_text("station answered Accepted")
    finally:
        await station.close()
    assert station.stats.csms_calls["GetConfiguration"] == 1
    assert station.stats.csms_calls["ChangeConfiguration"] == 1


async def test_the_faulted_count_follows_connector_statuses_live(csms: Csms, page: Page) -> None:
    station = csms.station("FAULT-1")
    await station.connect()
    try:
        assert await station.boot()
        await page.goto(f"{csms.url}/?key={ADMIN_KEY}")
        await expect(page.locator("[data-live=live]")).to_be_visible()
        faulted = page.locator("[data-count=faulted] .n")
        await expect(faulted).to_have_text("0")
        await station.status("Faulted")
        await expect(faulted).to_have_text("1")  # no reload
        await station.status("Available")
        await expect(faulted).to_have_text("0")
    finally:
        await station.close()


async def test_the_message_log_and_security_events_show_live(csms: Csms, page: Page) -> None:
    station = csms.station("LOG-1")
    await station.connect()
    try:
        assert await station.boot()
        await station.call(
            "SecurityEventNotification",
            {"type": "FirmwareUpdated", "timestamp": "2026-01-15T12:00:00Z"},
        )
        await page.goto(f"{csms.url}/?key={ADMIN_KEY}#/stations/LOG-1")
        log = page.locator("#message-log")
        await expect(log.locator("[data-live=live]")).to_be_visible()
        boot = log.get_by_role("row").filter(has_text="BootNotification")
        await expect(boot).to_have_count(2)  # the Call and its answer
        await expect(boot.filter(has_text="from station")).to_contain_text('"reason":"PowerUp"')
        security = page.locator("#security-events")
        await expect(security.get_by_role("row").filter(has_text="FirmwareUpdated")).to_be_visible()

        await station.heartbeat()
        heartbeat = log.get_by_role("row").filter(has_text="Heartbeat")
        await expect(heartbeat.filter(has_text="from station")).to_have_count(1)  # no reload
        await expect(heartbeat.filter(has_text="to station")).to_contain_text("currentTime")
        await station.call(
            "SecurityEventNotification",
            {
                "type": "TamperDetectionActivated",
                "timestamp": "2026-01-15T12:05:00Z",
                "techInfo": "lid opened",
            },
        )
        tamper = security.get_by_role("row").filter(has_text="TamperDetectionActivated")
        await expect(tamper).to_contain_text("lid opened")
        # Newest first.
        await expect(security.locator("tbody tr").first).to_contain_text("TamperDetection")
    finally:
        await station.close()
