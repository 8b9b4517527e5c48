"""Security profiles through the real fleet: ``csms gateway`` with a ws and a wss listener,
two ``csms manager`` processes, private Mosquitto and Redis; the station registered with
``csms station add --profile 2``; refused connections publish nothing to the broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from csms.bus import Message
from csms.bus.mqtt import MqttBus
from tests.certs import Pki, client_context, make_pki
from tests.integration.fleet import Fleet
from tests.integration.test_security_profiles import (
    TOKEN,
    basic,
    charge_201,
    open_ws,
    refused,
)
from tests.servers import free_port

pytestmark = pytest.mark.integration

PASSWORD = "Fleet-pass-012345678"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def fleet(
    _mosquitto: tuple[str, Any],
    _redis: tuple[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    pki: Pki,
) -> Iterator[tuple[Fleet, int]]:
    tls_port = free_port()
    workdir = tmp_path_factory.mktemp("secure-fleet")
    fleet = Fleet(_mosquitto[0], _redis[0], workdir, managers=2)
    listeners = [
        {"host": "127.0.0.1", "port": fleet.port, "profiles": [1]},
        {
            "host": "127.0.0.1",
            "port": tls_port,
            "profiles": [2, 3],
            "tls": {
                "cert_file": str(pki.server.cert),
                "key_file": str(pki.server.key),
                "client_ca_files": [str(pki.ca.cert)],
            },
        },
    ]
    fleet.extra_env.update({"CSMS_FIRST_TRY": "false", "CSMS_LISTENERS": json.dumps(listeners)})
    fleet.start()
    try:
        yield fleet, tls_port
    finally:
        fleet.stop()


def wss_url(tls_port: int, station_id: str) -> str:
    return f"wss://127.0.0.1:{tls_port}/ocpp/{station_id}"


def register(fleet: Fleet, station_id: str, *args: str) -> None:
    result = fleet.cli("station", "add", station_id, *args)
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr


async def test_registered_profile_2_station_charges_through_the_fleet(
    fleet: tuple[Fleet, int], pki: Pki
) -> None:
    csms, tls_port = fleet
    station_id = f"P2-{uuid.uuid4().hex[:6]}"
    register(csms, station_id, "--profile", "2", "--password", PASSWORD)
    assert csms.cli("token", "add", TOKEN).returncode == 0
    async with await open_ws(
        wss_url(tls_port, station_id), headers=basic(station_id, PASSWORD), tls=client_context(pki)
    ) as ws:
        assert await charge_201(ws, station_id) == "Accepted"
    admitted = [
        record
        for record in csms.gateway.log_records()
        if record.get("event") == "station admitted" and record.get("station") == station_id
    ]
    assert admitted and admitted[0]["profile"] == 2


async def test_refusals_through_the_fleet_publish_nothing(
    fleet: tuple[Fleet, int], pki: Pki
) -> None:
    csms, tls_port = fleet
    station_id = f"P2-{uuid.uuid4().hex[:6]}"
    register(csms, station_id, "--profile", "2", "--password", PASSWORD)
    received: list[Message] = []
    async with MqttBus(csms.mqtt_url) as bus:
        assert await bus.wait_connected(5)
        await bus.subscribe(f"{csms.prefix}/#")  # returns once the broker confirmed it

        async def collect() -> None:
            async for message in bus.messages():
                received.append(message)

        collector = asyncio.create_task(collect())
        try:
            tls = client_context(pki)
            wrong = await refused(
                wss_url(tls_port, station_id), headers=basic(station_id, "x" * 20), tls=tls
            )
            unknown = await refused(
                wss_url(tls_port, "NOT-REGISTERED"),
                headers=basic("NOT-REGISTERED", "x" * 20),
                tls=tls,
            )
            other = await refused(
                wss_url(tls_port, station_id), headers=basic("SOMEONE-ELSE", PASSWORD), tls=tls
            )
            downgrade = await refused(csms.url(station_id), headers=basic(station_id, PASSWORD))
            # No event says "the gateway published nothing", and a publish crosses the
            # broker to reach this client: give a stray one time to arrive.
            await asyncio.sleep(0.5)
        finally:
            collector.cancel()
    assert (wrong.status_code, unknown.status_code, other.status_code) == (401, 404, 403)
    assert downgrade.status_code == 403 and b"downgrade" in downgrade.body
    # Nothing about the refused stations (the gateway's own presence heartbeats aside).
    assert [m for m in received if "/gateways/" not in m.topic] == []
    refusals = [
        record
        for record in csms.gateway.log_records()
        if record.get("event") == "connection refused"
        and record.get("station") in (station_id, "NOT-REGISTERED")
    ]
    assert sorted(record["status"] for record in refusals) == [401, 403, 403, 404]
    assert all(record["level"] == "warning" for record in refusals)
    assert PASSWORD not in csms.gateway.log_path.read_text()
