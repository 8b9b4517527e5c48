"""Station round trip: a Heartbeat from a WebSocket station to its answer.

Measures the whole path: station → gateway → bus → manager (validation, routing, idempotency,
last-seen write) → bus → gateway → station. Prints throughput and latency percentiles; asserts
nothing about time.

    python bench/roundtrip.py                          # embedded: in-process bus, memory stores
    python bench/roundtrip.py --broker-url mqtt://127.0.0.1:1883 --redis-url redis://127.0.0.1:6379/0
    python bench/roundtrip.py --stations 200 --calls 20

With a broker URL the gateway and manager run in this process on two MQTT connections. Add
``--processes`` to run them as a real fleet instead: one ``csms gateway`` process and
``--managers`` ``csms manager`` processes, with the stations in this process:

    python bench/roundtrip.py --broker-url mqtt://127.0.0.1:1883 --processes --managers 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import websockets

from cli.processes import all_in_one
from csms.config import load_settings
from csms.logs import configure_logging


async def _station(url: str, calls: int, latencies: list[float], version: str) -> None:
    async with websockets.connect(url, subprotocols=[version]) as ws:  # type: ignore[list-item]
        for index in range(calls):
            started = time.perf_counter()
            await ws.send(json.dumps([2, f"b{index}", "Heartbeat", {}]))
            reply = json.loads(await ws.recv())
            latencies.append(time.perf_counter() - started)
            if reply[0] != 3:
                raise RuntimeError(f"unexpected answer {reply}")


UNTHROTTLED = 1_000_000.0
"""Per-station message rate for benchmarks: they measure the path, not the rate limiter."""
ALL_FROM_ONE_ADDRESS = 20_000
"""Every simulated station connects from this machine's address."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def _fleet(args: argparse.Namespace) -> AsyncIterator[Callable[[str], str]]:
    """Start ``csms gateway`` + ``csms manager`` processes; yield the station URL builder."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSMS_")}
    env.update(
        {
            "CSMS_BROKER_URL": args.broker_url,
            "CSMS_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:6]}",
            "CSMS_LISTEN_PORT": str(port),
            "CSMS_LOG_LEVEL": "warning",
            "CSMS_GATEWAY_METRICS_PORT": "none",
            "CSMS_MANAGER_METRICS_PORT": "none",
            "CSMS_UNKNOWN_STATIONS": "accept",
            "CSMS_ANSWER_TIMEOUT": "2",
            "CSMS_MESSAGE_RATE": str(UNTHROTTLED),
            "CSMS_MAX_CONNECTIONS_PER_ADDRESS": str(ALL_FROM_ONE_ADDRESS),
        }
    )
    if args.redis_url:
        env["CSMS_REDIS_URL"] = args.redis_url
    command = [sys.executable, "-m", "cli"]
    roles = ["manager"] * args.managers + ["gateway"]
    processes = [subprocess.Popen([*command, role], env=env) for role in roles]  # noqa: ASYNC220
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gateway did not start listening") from None
                await asyncio.sleep(0.2)
        # Managers compile the schemas before they subscribe; wait until one answers.
        while True:
            try:
                await _station(f"ws://127.0.0.1:{port}/ocpp/warmup", 1, [], args.version)
                break
            except RuntimeError:
                if time.monotonic() > deadline + 30:
                    raise
        yield lambda station: f"ws://127.0.0.1:{port}/ocpp/{station}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


@contextlib.asynccontextmanager
async def _embedded(args: argparse.Namespace) -> AsyncIterator[Callable[[str], str]]:
    """Gateway and manager in this process (in-process bus unless a broker URL is given)."""
    settings = load_settings(
        None,
        broker_url=args.broker_url,
        redis_url=args.redis_url,
        listen_port=0,
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}",
        log_level="warning",
        unknown_stations="accept",
        message_rate=UNTHROTTLED,
        max_connections_per_address=ALL_FROM_ONE_ADDRESS,
    )
    async with all_in_one(settings) as gateway:
        yield gateway.url_for


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stations", type=int, default=50)
    parser.add_argument("--calls", type=int, default=40, help="sequential Heartbeats per station")
    parser.add_argument("--version", default="ocpp2.0.1", choices=["ocpp2.0.1", "ocpp1.6"])
    parser.add_argument("--broker-url")
    parser.add_argument("--redis-url")
    parser.add_argument(
        "--processes", action="store_true", help="run gateway and managers as separate processes"
    )
    parser.add_argument("--managers", type=int, default=1, help="manager processes (--processes)")
    args = parser.parse_args()

    configure_logging("console", "warning")
    if args.processes and not args.broker_url:
        parser.error("--processes needs --broker-url")
    latencies: list[float] = []
    async with _fleet(args) if args.processes else _embedded(args) as url_for:
        # Warm-up: one station, a few calls (connection set-up, first validator use).
        await _station(url_for("warmup"), 5, [], args.version)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _station(url_for(f"BENCH-{i}"), args.calls, latencies, args.version)
                for i in range(args.stations)
            )
        )
        elapsed = time.perf_counter() - started
    latencies.sort()
    total = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(total - 1, int(total * p))] * 1000

    mode = "MQTT" if args.broker_url else "in-process bus"
    if args.processes:
        mode += f", 1 gateway + {args.managers} manager process(es)"
    print(f"mode: {mode}, stores: {'Redis' if args.redis_url else 'memory'}, {args.version}")
    print(f"stations: {args.stations}, round trips: {total}, elapsed: {elapsed:.2f} s")
    print(f"throughput: {total / elapsed:,.0f} round trips/s")
    print(
        f"latency ms: p50 {pct(0.50):.1f}  p90 {pct(0.90):.1f}  p99 {pct(0.99):.1f}  "
        f"max {latencies[-1] * 1000:.1f}  mean {statistics.fmean(latencies) * 1000:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
