"""Station round trip: a Heartbeat from a WebSocket station to its answer.

Measures the whole path: station → gateway → bus → manager (validation, routing, idempotency,
last-seen write) → bus → gateway → station. Prints throughput and latency percentiles; asserts
nothing about time.

    python bench/roundtrip.py                          # embedded: in-process bus, memory stores
    python bench/roundtrip.py --broker-url mqtt://127.0.0.1:1883 --redis-url redis://127.0.0.1:6379/0
    python bench/roundtrip.py --stations 200 --calls 20

With a broker URL the gateway and manager run in this process on two MQTT connections (as
separate processes would); run `csms manager` processes alongside to see scale-out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import websockets

from csms.app import all_in_one
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


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stations", type=int, default=50)
    parser.add_argument("--calls", type=int, default=40, help="sequential Heartbeats per station")
    parser.add_argument("--version", default="ocpp2.0.1", choices=["ocpp2.0.1", "ocpp1.6"])
    parser.add_argument("--broker-url")
    parser.add_argument("--redis-url")
    args = parser.parse_args()

    configure_logging("console", "warning")
    settings = load_settings(
        None,
        broker_url=args.broker_url,
        redis_url=args.redis_url,
        listen_port=0,
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}",
        log_level="warning",
    )
    async with all_in_one(settings) as gateway:
        latencies: list[float] = []
        # Warm-up: one station, a few calls (connection set-up, first validator use).
        await _station(gateway.url_for("warmup"), 5, [], args.version)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _station(gateway.url_for(f"BENCH-{i}"), args.calls, latencies, args.version)
                for i in range(args.stations)
            )
        )
        elapsed = time.perf_counter() - started
    latencies.sort()
    total = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(total - 1, int(total * p))] * 1000

    mode = "MQTT" if args.broker_url else "in-process bus"
    print(f"mode: {mode}, stores: {'Redis' if args.redis_url else 'memory'}, {args.version}")
    print(f"stations: {args.stations}, round trips: {total}, elapsed: {elapsed:.2f} s")
    print(f"throughput: {total / elapsed:,.0f} round trips/s")
    print(
        f"latency ms: p50 {pct(0.50):.1f}  p90 {pct(0.90):.1f}  p99 {pct(0.99):.1f}  "
        f"max {latencies[-1] * 1000:.1f}  mean {statistics.fmean(latencies) * 1000:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
