"""Probes and metrics on the real fleet: a ``csms gateway`` and a ``csms manager`` process on
the private Mosquitto and Redis, each with its probe server on a port of its own; a station
from the ``ocpp`` package boots, and both processes' metrics show it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.fleet import Fleet
from tests.servers import free_port
from tests.timing import timeout as scaled

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def fleet(mqtt_url: str, redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    probes = {
        "CSMS_METRICS_HOST": "127.0.0.1",
        "CSMS_GATEWAY_METRICS_PORT": str(free_port()),
        "CSMS_MANAGER_METRICS_PORT": str(free_port()),
    }
    fleet = Fleet(mqtt_url, redis_url, tmp_path, managers=1, extra_env=probes)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


def probes_url(fleet: Fleet, role: str) -> str:
    """The probes' URL from the role's start log line."""
    process = fleet.gateway if role == "gateway" else fleet.manager_processes[0]
    (ready,) = [r for r in process.log_records() if r.get("event") == f"{role} ready"]
    url: str = ready["probes"]
    return url


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and item.labels == labels:
                return float(item.value)
    return 0.0


async def scrape_until(client: httpx.AsyncClient, url: str, name: str, **labels: str) -> str:
    """The metrics text of ``url`` once ``name{labels}`` is 1."""
    text = ""
    for _ in range(200):
        text = (await client.get(url + "/metrics")).text
        if sample(text, name, **labels) == 1:
            return text
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}{labels} never 1:\n{text}")


async def test_a_boot_moves_the_metrics_and_both_roles_are_ready(fleet: Fleet) -> None:
    gateway_url, manager_url = probes_url(fleet, "gateway"), probes_url(fleet, "manager")
    assert gateway_url == f"http://127.0.0.1:{fleet._env()['CSMS_GATEWAY_METRICS_PORT']}"
    assert manager_url == f"http://127.0.0.1:{fleet._env()['CSMS_MANAGER_METRICS_PORT']}"
    boots = {"version": "ocpp2.0.1", "action": "BootNotification", "outcome": "answered"}
    async with httpx.AsyncClient(timeout=scaled(10)) as client:
        for url in (gateway_url, manager_url):
            assert (await client.get(url + "/health")).json() == {"status": "ok"}
        before = (await client.get(manager_url + "/metrics")).text
        assert sample(before, "csms_manager_messages_total", **boots) == 0

        station_id = f"PRB-{uuid.uuid4().hex[:6]}"
        ws = await websockets.connect(fleet.url(station_id), subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
        station = ChargePoint201(station_id, ws, response_timeout=10)
        task = asyncio.create_task(station.start())
        try:
            boot = await station.call(
                call201.BootNotification(
                    charging_station={"model": "Probe", "vendor_name": "Acme"}, reason="PowerUp"
                )
            )
            assert boot.status == "Accepted"
            managed = await scrape_until(
                client, manager_url, "csms_manager_messages_total", **boots
            )
            assert (
                sample(
                    managed,
                    "csms_manager_handler_seconds_count",
                    version="ocpp2.0.1",
                    action="BootNotification",
                )
                == 1
            )
            assert sample(managed, "csms_manager_connection_events_total", event="connected") == 1
            gated = await scrape_until(
                client, gateway_url, "csms_gateway_connected_stations", version="ocpp2.0.1"
            )
            assert sample(gated, "csms_gateway_frames_received_total", version="ocpp2.0.1") == 1
            assert sample(gated, "csms_gateway_broker_connected") == 1
            assert sample(gated, "process_open_fds") > 0

            gateway_ready = await client.get(gateway_url + "/ready")
            assert gateway_ready.status_code == 200
            assert gateway_ready.json() == {"status": "ready", "checks": {"bus": True}}
            manager_ready = await client.get(manager_url + "/ready")
            assert manager_ready.status_code == 200
            assert manager_ready.json()["checks"] == {"bus": True, "store": True}
        finally:
            task.cancel()
            await ws.close()
        await scrape_until(
            client, gateway_url, "csms_gateway_connections_closed_total", reason="station"
        )
