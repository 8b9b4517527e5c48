"""``csms simulate`` against the embedded CSMS: real WebSocket stations of both versions run
sessions that land in the transaction store, answer CSMS calls, ride out a reconnect storm,
and report refusals by kind."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from cli.processes import Embedded, embedded
from csms.config import Settings
from csms.credentials import hash_password
from csms.topics import Topics
from operations.calls import CallSender, Outcome
from services.models import RegistrationStatus, StationCredentials, TransactionState
from simulator import Plan, Scenario, simulate
from simulator.runner import run_plan
from simulator.stats import percentile

WH_PER_READING = 250
V201 = "ocpp2.0.1"


@contextlib.asynccontextmanager
async def csms(**overrides: Any) -> AsyncIterator[tuple[Embedded, str]]:
    values: dict[str, Any] = {
        "listen_port": 0,
        "unknown_tokens": "accept",
        "ping_interval": None,
        "message_rate": 1_000_000.0,
        "log_level": "warning",
    }
    values.update(overrides)
    async with embedded(Settings(**values), api=False) as running:
        url = running.gateway.url_for("X").rsplit("/", 1)[0]
        yield running, url


async def ended(running: Embedded, station_id: str) -> list[Any]:
    page = await running.services.transactions.list_transactions(
        station_id=station_id, state=TransactionState.ENDED
    )
    return list(page.items)


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp1.6"])
async def test_sessions_land_in_the_store_with_their_energy(version: str) -> None:
    async with csms() as (running, url):
        plan = Plan(url=url, stations=3, version=version, sessions=2, meter_values=4)
        summary = await simulate(plan)
        assert summary.errors == {}
        assert summary.booted == 3
        assert summary.sessions == 6
        for station_id in plan.station_ids():
            transactions = await ended(running, station_id)
            assert len(transactions) == 2
            # The register runs on across sessions: each session adds 4 readings' worth.
            assert sorted(tx.energy_wh for tx in transactions) == [4 * WH_PER_READING] * 2
        per_session = 1 + 4 + 1  # start, meter values, stop
        transaction_messages = (
            summary.actions["TransactionEvent"]["count"]
            if version == "ocpp2.0.1"
            else sum(
                summary.actions[action]["count"]
                for action in ("StartTransaction", "MeterValues", "StopTransaction")
            )
        )
        assert transaction_messages == 3 * 2 * per_session
        assert summary.round_trips == sum(row["count"] for row in summary.actions.values())


async def test_a_mix_runs_both_versions() -> None:
    async with csms() as (running, url):
        summary = await simulate(Plan(url=url, stations=4, version="mix", meter_values=1))
        assert summary.errors == {}
        versions = {
            (await running.services.stations.get(station_id)).ocpp_version  # type: ignore[union-attr]
            for station_id in Plan(stations=4).station_ids()
        }
        assert versions == {"ocpp1.6", "ocpp2.0.1"}
        assert {"TransactionEvent", "StartTransaction"} <= set(summary.actions)


async def test_idle_stations_answer_csms_calls_and_do_what_they_ask() -> None:
    async with csms(call_timeout=5.0) as (running, url):
        assert running.broker is not None
        plan = Plan(url=url, stations=1, scenario=Scenario.IDLE, duration=3.0)
        station_id = plan.station_ids()[0]
        simulation = asyncio.create_task(simulate(plan))
        async with running.broker.client() as bus, CallSender(bus, Topics(), origin="t") as sender:
            for _ in range(100):
                if station_id in running.gateway.connections:
                    break
                await asyncio.sleep(0.02)
            reset = await sender.send(station_id, "ocpp2.0.1", "Reset", {"type": "Immediate"})
            assert (reset.outcome, reset.payload) == (Outcome.RESULT, {"status": "Accepted"})
            start = await sender.send(
                station_id,
                "ocpp2.0.1",
                "RequestStartTransaction",
                {"idToken": {"idToken": "REMOTE1", "type": "ISO14443"}, "remoteStartId": 7},
            )
            assert start.payload == {"status": "Accepted"}
            for _ in range(100):  # the station starts the transaction it was asked for
                if active := await running.services.transactions.active(station_id):
                    break
                await asyncio.sleep(0.02)
            assert [tx.id_token for tx in active] == ["REMOTE1"]
            unknown = await sender.send(
                station_id, "ocpp2.0.1", "GetDisplayMessages", {"requestId": 1}
            )
            assert (unknown.outcome, unknown.error_code) == (Outcome.ERROR, "NotImplemented")
        summary = await simulation
        assert summary.csms_calls == {
            "GetDisplayMessages": 1,
            "RequestStartTransaction": 1,
            "Reset": 1,
        }
        assert summary.errors == {}
        assert summary.actions["TransactionEvent"]["count"] == 1  # the remote start's Started


async def test_a_remotely_started_session_meters_until_it_is_stopped() -> None:
    async with csms(call_timeout=5.0) as (running, url):
        assert running.broker is not None
        plan = Plan(url=url, stations=1, scenario=Scenario.IDLE, duration=3.0, meter_interval=0.05)
        station_id = plan.station_ids()[0]
        simulation = asyncio.create_task(simulate(plan))
        async with running.broker.client() as bus, CallSender(bus, Topics(), origin="t") as sender:
            for _ in range(100):
                if station_id in running.gateway.connections:
                    break
                await asyncio.sleep(0.02)
            token = {"idToken": "REMOTE2", "type": "ISO14443"}
            start = {"idToken": token, "remoteStartId": 8}
            assert (await sender.send(station_id, V201, "RequestStartTransaction", start)).payload
            for _ in range(200):  # meter values come on their own while it charges
                active = await running.services.transactions.active(station_id)
                if active and (active[0].energy_wh or 0) >= 3 * WH_PER_READING:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("no meter values from the remotely started session")
            tx_id = active[0].transaction_id
            stop = await sender.send(
                station_id, V201, "RequestStopTransaction", {"transactionId": tx_id}
            )
            assert stop.payload == {"status": "Accepted"}
        summary = await simulation
        assert summary.errors == {}
        assert len(await ended(running, station_id)) == 1


async def test_a_storm_reconnects_every_station_each_round() -> None:
    async with csms() as (_running, url):
        plan = Plan(url=url, stations=12, scenario=Scenario.STORM, rounds=2, storm_pause=0.1)
        summary = await simulate(plan)
        assert summary.errors == {}
        assert summary.connected == 12 * 3
        assert summary.booted == 12 * 3
        assert len(summary.storm_recovery_seconds) == 2


async def test_a_wrong_password_is_counted_once_per_station_not_retried() -> None:
    async with csms(unknown_stations="reject", first_try=False) as (running, url):
        plan = Plan(url=url, stations=2, password="wrong-password-1234", duration=5.0)
        for station_id in plan.station_ids():
            await running.services.stations.provision(station_id, RegistrationStatus.ACCEPTED)
            await running.services.stations.set_credentials(
                station_id,
                StationCredentials(
                    security_profile=1, password_hash=hash_password("right-password-1234")
                ),
            )
        summary = await simulate(plan)
        assert summary.errors == {"connect:http-401": 2}
        assert summary.booted == 0


@pytest.mark.slow
async def test_two_processes_and_the_command_line(tmp_path: Path) -> None:
    async with csms() as (running, url):
        plan = Plan(url=url, stations=6, processes=2, meter_values=2, id_prefix="MP")
        summary = await asyncio.to_thread(run_plan, plan)
        assert summary.errors == {}
        assert summary.sessions == 6
        assert len(await ended(running, "MP00006")) == 1
        out = tmp_path / "summary.json"
        args = [
            "simulate",
            "--url",
            url,
            "--stations",
            "2",
            "--id-prefix",
            "CL",
            "--json",
            str(out),
        ]
        code = await asyncio.to_thread(main, args)
        assert code == 0
        printed = json.loads(out.read_text())
        assert printed["sessions"] == 2
        assert printed["actions"]["TransactionEvent"]["count"] == 2 * (1 + 10 + 1)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile([], 0.5)) == (
        50.0,
        99.0,
        0.0,
    )
