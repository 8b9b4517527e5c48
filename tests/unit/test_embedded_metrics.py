"""``csms run`` serves the gateway's and the manager's metrics on the API's ``/v1/metrics``
(it starts no probe server of its own)."""

from __future__ import annotations

import json

import httpx
from websockets.asyncio.client import connect

from cli import processes
from csms.config import Settings

BOOT = {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}


async def test_the_api_metrics_include_gateway_and_manager() -> None:
    settings = Settings(listen_port=0, api_port=0, ping_interval=None, ping_timeout=None)
    async with processes.embedded(settings) as running:
        assert running.api is not None and running.generated_admin_key is not None
        url = running.gateway.url_for("CS-METRICS")
        async with connect(url, subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps([2, "1", "BootNotification", BOOT]))
            assert json.loads(await ws.recv())[2]["status"] == "Accepted"
            async with httpx.AsyncClient(base_url=running.api.url) as client:
                headers = {"Authorization": f"Bearer {running.generated_admin_key}"}
                assert (await client.get("/v1/stations", headers=headers)).status_code == 200
                response = await client.get("/v1/metrics", headers=headers)
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert 'csms_gateway_connected_stations{version="ocpp2.0.1"} 1.0' in lines
    booted = [
        line
        for line in lines
        if line.startswith("csms_manager_messages_total{")
        and 'action="BootNotification"' in line
        and 'outcome="answered"' in line
    ]
    assert booted and booted[0].endswith(" 1.0")
    assert any(
        line.startswith("csms_api_requests_total{") and 'route="/v1/stations"' in line
        for line in lines
    )
