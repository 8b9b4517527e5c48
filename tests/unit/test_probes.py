"""The probe server of ``csms gateway`` / ``csms manager`` over real sockets (httpx and raw
TCP clients), and the metrics a gateway and a manager count for real station traffic
(websockets clients, the in-process bus, in-memory stores)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from cli import processes
from csms.bus.memory import MemoryBroker
from csms.config import Settings
from csms.probes import MAX_REQUEST_HEAD, Check, HistogramFamily, MetricSet, ProbeServer
from csms.topics import Topics
from csms.versions import OcppVersion
from gateway import Gateway
from gateway.metrics import CLOSE_REASONS
from manager.worker import Manager
from operations.calls import CallSender, Outcome
from services import Services
from services.factory import open_services
from tests.timing import timeout

V16 = Subprotocol(OcppVersion.OCPP16)
V201 = Subprotocol(OcppVersion.OCPP201)
ROOT = Path(__file__).resolve().parents[2]
WAIT = 5.0
BOOT_201 = {"reason": "PowerUp", "chargingStation": {"model": "M1", "vendorName": "ACME"}}
SETTINGS: dict[str, Any] = {
    "listen_port": 0,
    "call_timeout": 2.0,
    "ping_interval": None,
    "ping_timeout": None,
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


@contextlib.asynccontextmanager
async def probes(
    metrics: MetricSet | None = None,
    checks: Mapping[str, Check] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[ProbeServer, httpx.AsyncClient]]:
    registry = (metrics or MetricSet()).registry
    async with (
        ProbeServer("127.0.0.1", 0, registry=registry, checks=checks, **options) as server,
        httpx.AsyncClient(base_url=server.url, timeout=timeout(WAIT)) as client,
    ):
        yield server, client


async def raw(server: ProbeServer, data: bytes, *, half_close: bool = False) -> bytes:
    """Send ``data`` on a fresh TCP connection and read the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        await writer.drain()
        async with asyncio.timeout(timeout(WAIT)):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# -- the HTTP responder ---------------------------------------------------------------------


async def test_health_is_ok_and_metrics_are_prometheus_text() -> None:
    metrics = MetricSet()
    metrics.counter("csms_test_things", "things", ["kind"]).labels("a").inc(3)
    async with probes(metrics) as (_, client):
        health = await client.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert health.headers["connection"] == "close"
        scraped = await client.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=")
    assert value(scraped.text, "csms_test_things_total", kind="a") == 3
    assert "process_cpu_seconds_total" in scraped.text  # the process's own metrics too


async def test_ready_says_which_check_failed() -> None:
    state = {"bus": True}

    async def bus() -> bool:
        return state["bus"]

    async def store() -> bool:
        raise ConnectionError("redis down")

    async def stalled() -> bool:
        await asyncio.Event().wait()
        return True

    async with probes(checks={"bus": bus}) as (_, client):
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"bus": True}}
        state["bus"] = False
        not_ready = await client.get("/ready")
        assert not_ready.status_code == 503
        assert not_ready.json() == {"status": "not_ready", "checks": {"bus": False}}

    checks = {"bus": bus, "store": store, "stalled": stalled}
    state["bus"] = True
    with capture_logs() as logs:
        async with probes(checks=checks, check_timeout=0.05) as (_, client):
            ready = await client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"bus": True, "store": False, "stalled": False}
    failed = {entry["check"] for entry in logs if entry["event"] == "readiness check failed"}
    assert failed == {"store", "stalled"}


async def test_bad_requests_get_an_error_and_the_server_keeps_answering() -> None:
    async with probes() as (server, client):
        garbage = await raw(server, b"\x16\x03\x01\x02\x00\x01\x00\xff\xfe garbage\r\n\r\n")
        assert status_of(garbage) == 400
        body = json.loads(garbage.partition(b"\r\n\r\n")[2])
        assert body["code"] == "bad_request" and set(body) == {"code", "message", "details"}
        assert status_of(await raw(server, b"GET /health HTTP/9.9\r\n\r\n")) == 400
        assert status_of(await raw(server, b"GET http://x/health HTTP/1.1\r\n\r\n")) == 400
        assert status_of(await raw(server, b"half a request", half_close=True)) == 400
        assert await raw(server, b"", half_close=True) == b""  # left without a word
        too_long = b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * MAX_REQUEST_HEAD + b"\r\n\r\n"
        assert status_of(await raw(server, too_long)) == 431
        assert (await client.get("/nothing")).status_code == 404
        post = await client.post("/ready", content=b"{}")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
        head = await raw(server, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(head) == 200 and head.endswith(b"\r\n\r\n")  # headers, no body
        assert (await client.get("/health?verbose=1")).json() == {"status": "ok"}
        assert (await client.get("/health")).status_code == 200


async def test_slow_and_surplus_clients_are_bounded() -> None:
    async with probes(request_timeout=0.2, max_connections=2) as (server, client):
        assert status_of(await raw(server, b"GET /health HTTP/1.1\r\n")) == 408  # no end
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        try:
            await asyncio.sleep(0.02)  # both are being served (and wait for their request)
            try:
                surplus = await raw(server, b"GET /health HTTP/1.1\r\n\r\n")
            except ConnectionResetError:
                surplus = b""
            assert surplus == b""  # dropped unread
        finally:
            for _, writer in idle:
                writer.close()
        for _ in range(50):  # once the idle ones are gone, requests are served again
            answer = await client.get("/health")
            if answer.status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert answer.status_code == 200


def test_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    family = HistogramFamily("csms_test_seconds", "t", ["action"], buckets=(0.1, 1))
    cell = family.labels("Heartbeat")
    for seconds in (0.05, 0.1, 0.5, 7):
        cell.observe(seconds)
    metrics = MetricSet()
    metrics._families[family.name] = family
    text = metrics.exposition().decode()
    assert value(text, "csms_test_seconds_bucket", action="Heartbeat", le="0.1") == 2
    assert value(text, "csms_test_seconds_bucket", action="Heartbeat", le="1.0") == 3
    assert value(text, "csms_test_seconds_bucket", action="Heartbeat", le="+Inf") == 4
    assert value(text, "csms_test_seconds_count", action="Heartbeat") == 4
    assert value(text, "csms_test_seconds_sum", action="Heartbeat") == pytest.approx(7.65)
    with pytest.raises(ValueError, match="takes labels"):
        family.labels("a", "b")
    with pytest.raises(ValueError, match="defined twice"):
        metrics.counter("csms_test_seconds", "again")


def test_a_failing_gauge_leaves_the_rest_of_the_scrape() -> None:
    metrics = MetricSet()

    def broken() -> float:
        raise RuntimeError("state gone")

    metrics.gauge("csms_test_broken", "b", broken)
    metrics.counter("csms_test_fine", "f").labels().inc()
    with capture_logs() as logs:
        text = metrics.exposition().decode()
    assert value(text, "csms_test_fine_total") == 1
    assert "csms_test_broken" not in text
    assert [entry["metric"] for entry in logs] == ["csms_test_broken"]


# -- a gateway and a manager under real traffic ----------------------------------------------


@contextlib.asynccontextmanager
async def fleet(
    **overrides: Any,
) -> AsyncIterator[tuple[Gateway, Manager, CallSender, MemoryBroker, Services]]:
    settings = Settings(**(SETTINGS | overrides))
    broker = MemoryBroker()
    async with contextlib.AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(settings))
        manager_bus = await stack.enter_async_context(broker.client())
        gateway_bus = await stack.enter_async_context(broker.client())
        sender_bus = await stack.enter_async_context(broker.client())
        manager = await stack.enter_async_context(
            Manager(settings, manager_bus, services, compile_schemas=False)
        )
        gateway = await stack.enter_async_context(
            Gateway(settings, gateway_bus, registry=services.stations, first_try=True)
        )
        sender = await stack.enter_async_context(CallSender(sender_bus, Topics(), origin="test"))
        yield gateway, manager, sender, broker, services


async def connected(gateway: Gateway, station: str, version: str = V201) -> ClientConnection:
    ws = await connect(gateway.url_for(station), subprotocols=[Subprotocol(version)])
    for _ in range(200):  # until the gateway holds it (subscribed to its out topic)
        if station in gateway.connections:
            break
        await asyncio.sleep(0.01)
    return ws


async def call(ws: ClientConnection, message_id: str, action: str, payload: Any) -> list[Any]:
    await ws.send(json.dumps([2, message_id, action, payload]))
    answer: list[Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout(WAIT)))
    return answer


async def until(read: Any, predicate: Any) -> Any:
    """``read()`` once ``predicate`` holds for it (a few seconds at most)."""
    for _ in range(int(timeout(WAIT) / 0.01)):
        current = read()
        if predicate(current):
            return current
        await asyncio.sleep(0.01)
    raise AssertionError(f"still {read()!r}")


async def test_gateway_and_manager_count_a_station_s_traffic() -> None:
    async with fleet() as (gateway, manager, sender, _, _):
        g = gateway.metrics
        m = manager.metrics
        ws = await connected(gateway, "PROBE-1")
        boot = await call(ws, "b1", "BootNotification", BOOT_201)
        assert boot[0] == 3 and boot[2]["status"] == "Accepted"
        unknown = await call(ws, "u1", "Shout\u0007Loud", {})  # not a plausible action
        assert unknown[0] == 4
        unsupported = await call(ws, "u2", "MakeCoffee", {})  # plausible, not in the table
        assert unsupported[0] == 4 and unsupported[2] == "NotImplemented"
        sending = asyncio.create_task(sender.send("PROBE-1", V201, "Reset", {"type": "OnIdle"}))
        reset = json.loads(await asyncio.wait_for(ws.recv(), timeout(WAIT)))
        await ws.send(json.dumps([3, reset[1], {"status": "Accepted"}]))
        assert (await sending).outcome is Outcome.RESULT
        await manager.idle()

        text = g.exposition().decode()
        assert value(text, "csms_gateway_connected_stations", version="ocpp2.0.1") == 1
        assert value(text, "csms_gateway_connected_stations", version="ocpp1.6") == 0
        assert value(text, "csms_gateway_connections_opened_total", version="ocpp2.0.1") == 1
        assert value(text, "csms_gateway_frames_received_total", version="ocpp2.0.1") == 4
        assert value(text, "csms_gateway_frames_sent_total", version="ocpp2.0.1") == 4
        assert (
            value(text, "csms_gateway_csms_calls_total", version="ocpp2.0.1", outcome="result") == 1
        )
        assert value(text, "csms_gateway_broker_connected") == 1
        assert value(text, "csms_gateway_open_sockets") == 1
        assert value(text, "csms_gateway_csms_calls_queued") == 0

        text = m.exposition().decode()
        v201 = {"version": "ocpp2.0.1"}
        boots = {**v201, "action": "BootNotification"}
        assert value(text, "csms_manager_messages_total", **boots, outcome="answered") == 1
        assert value(text, "csms_manager_messages_total", **boots, outcome="duplicate") == 0
        assert value(text, "csms_manager_handler_seconds_count", **boots) == 1
        assert (
            value(
                text,
                "csms_manager_messages_total",
                **v201,
                action="unknown",
                outcome="NotImplemented",
            )
            == 1
        )
        resets = {**v201, "action": "Reset", "outcome": "result"}
        assert value(text, "csms_manager_results_total", **resets) == 1
        assert value(text, "csms_manager_broker_connected") == 1
        # Station text never becomes a label value.
        assert "MakeCoffee" not in text and "Shout" not in text
        assert manager.stats.calls == 2 and manager.stats.results == 1

        await ws.close()
        closed = await until(lambda: g.connections_closed.total(reason="station"), lambda n: n == 1)
        assert closed == 1
        text = g.exposition().decode()
        assert value(text, "csms_gateway_connected_stations", version="ocpp2.0.1") == 0


async def test_a_replayed_call_and_a_replaced_connection_are_counted() -> None:
    async with fleet() as (gateway, manager, _, _, _):
        older = await connected(gateway, "PROBE-2", V16)
        boot16 = {"chargePointVendor": "ACME", "chargePointModel": "M1"}
        assert (await call(older, "b1", "BootNotification", boot16))[0] == 3
        newer = await connected(gateway, "PROBE-2", V16)
        closed = gateway.metrics.connections_closed
        await until(lambda: closed.total(reason="replaced"), lambda n: n == 1)
        # The station repeats the Call it made on its older socket: answered from the store.
        assert (await call(newer, "b1", "BootNotification", boot16))[0] == 3
        await manager.idle()
        text = manager.metrics.exposition().decode()
        boots = {"version": "ocpp1.6", "action": "BootNotification"}
        assert value(text, "csms_manager_messages_total", **boots, outcome="answered") == 1
        assert value(text, "csms_manager_messages_total", **boots, outcome="duplicate") == 1
        assert manager.stats.replayed == 1
        await newer.close()
        await older.close()


async def test_refused_handshakes_are_counted_by_reason() -> None:
    async with fleet() as (gateway, _, _, _, _):
        for url, offered in (
            (f"ws://127.0.0.1:{gateway.port}/elsewhere", [V201]),  # not a station path
            (gateway.url_for("NOPROTO"), None),  # no OCPP subprotocol offered
        ):
            with pytest.raises(InvalidStatus):
                await connect(url, subprotocols=offered)
        text = gateway.metrics.exposition().decode()
    assert value(text, "csms_gateway_handshakes_refused_total", reason="not_found") == 1
    assert value(text, "csms_gateway_handshakes_refused_total", reason="bad_request") == 1


async def test_ready_follows_the_bus_and_the_store() -> None:
    async with (
        fleet() as (gateway, manager, _, broker, services),
        probes(gateway.metrics.set, gateway.metrics.readiness()) as (_, gateway_probes),
        probes(manager.metrics.set, manager.metrics.readiness()) as (_, manager_probes),
    ):
        assert (await gateway_probes.get("/ready")).status_code == 200
        ready = await manager_probes.get("/ready")
        assert ready.json() == {"status": "ready", "checks": {"bus": True, "store": True}}

        broker.available = False
        with capture_logs():
            down = await gateway_probes.get("/ready")
            assert down.status_code == 503 and down.json()["checks"] == {"bus": False}
            down = await manager_probes.get("/ready")
            assert down.status_code == 503
            assert down.json()["checks"] == {"bus": False, "store": True}
            assert (await manager_probes.get("/health")).status_code == 200
        broker.available = True

        async def store_down(station_id: str) -> None:
            raise ConnectionError("redis down")

        services.stations.get = store_down  # type: ignore[method-assign]
        with capture_logs():
            down = await manager_probes.get("/ready")
        assert down.status_code == 503
        assert down.json()["checks"] == {"bus": True, "store": False}


async def test_every_metric_is_documented() -> None:
    """docs/operations.md lists every metric the gateway and the manager export."""
    async with fleet() as (gateway, manager, _, _, _):
        exported = {*gateway.metrics.set._families, *manager.metrics.set._families}
    assert len(exported) >= 20
    docs = (ROOT / "docs" / "operations.md").read_text()
    section = docs.partition("## Probes and metrics")[2]
    assert section, "docs/operations.md has no 'Probes and metrics' section"
    documented = set(re.findall(r"`(csms_(?:gateway|manager)_[a-z_]+)`", section))
    counters = {name.removesuffix("_total") for name in documented}
    assert exported <= counters, exported - counters
    for reason in CLOSE_REASONS:
        assert f"`{reason}`" in section, reason


# -- settings and start-up --------------------------------------------------------------------


def test_probe_ports_default_on_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert (defaults.metrics_host, defaults.gateway_metrics_port) == ("0.0.0.0", 9101)
    assert defaults.manager_metrics_port == 9102
    monkeypatch.setenv("CSMS_MANAGER_METRICS_PORT", "off")
    monkeypatch.setenv("CSMS_GATEWAY_METRICS_PORT", "9200")
    settings = Settings()
    assert settings.manager_metrics_port is None and settings.gateway_metrics_port == 9200


async def test_a_taken_port_stops_the_process_only_when_configured() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(metrics_host="127.0.0.1", manager_metrics_port=port)
        registry = MetricSet().registry
        with pytest.raises(OSError, match="CSMS_MANAGER_METRICS_PORT"):
            async with processes._probes(settings, "manager", registry, {}):
                pass
        # As if left at its default: a second manager on this host runs without probes.
        settings.model_fields_set.difference_update({"manager_metrics_port", "metrics_host"})
        with capture_logs() as logs:
            async with processes._probes(settings, "manager", registry, {}) as server:
                assert server is None
        assert [entry["log_level"] for entry in logs] == ["error"]
        assert "CSMS_MANAGER_METRICS_PORT" in logs[0]["event"]
    off = Settings.model_validate({"gateway_metrics_port": "none"})
    async with processes._probes(off, "gateway", registry, {}) as server:
        assert server is None
