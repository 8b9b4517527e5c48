"""Memory per connected station: RSS of a CSMS process before and after N stations connect.

Starts ``csms run`` (gateway + manager, in-process bus, memory stores) as a child process,
connects ``--stations`` WebSocket stations from this process, each of which sends one
BootNotification and then stays idle, and reads the child's resident set size from
``/proc``. Prints the figures; asserts nothing.

    python bench/idle_connections.py --stations 2000

One process cannot hold more sockets than its open-file limit (``ulimit -n``); this script
raises its own soft limit to the hard limit and says so when that is not enough.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import websockets

BOOT = {"reason": "PowerUp", "chargingStation": {"model": "Bench", "vendorName": "CSMS"}}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS not found")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _connect(url: str, held: list[Any]) -> None:
    ws = await websockets.connect(url, subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
    await ws.send(json.dumps([2, "boot", "BootNotification", BOOT]))
    reply = json.loads(await ws.recv())
    if reply[0] != 3:
        raise RuntimeError(f"unexpected answer {reply}")
    held.append(ws)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stations", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200, help="connections opened at once")
    args = parser.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.stations + 100 > hard:
        sys.exit(f"open-file limit {hard} is too low for {args.stations} stations")

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSMS_")}
    env.update(
        {
            "CSMS_LISTEN_PORT": str(port),
            "CSMS_LOG_LEVEL": "warning",
            "CSMS_MAX_CONNECTIONS_PER_ADDRESS": str(args.stations + 10),
            "CSMS_MAX_CONNECTIONS": str(max(15_000, args.stations + 10)),
        }
    )
    child = subprocess.Popen(  # noqa: ASYNC220 (start-up only)
        [sys.executable, "-m", "cli", "run"], env=env, stdout=subprocess.DEVNULL
    )
    held: list[Any] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await _connect(f"ws://127.0.0.1:{port}/ocpp/warmup", held)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        before = _rss_kib(child.pid)
        started = time.perf_counter()
        for first in range(0, args.stations, args.batch):
            last = min(args.stations, first + args.batch)
            await asyncio.gather(
                *(
                    _connect(f"ws://127.0.0.1:{port}/ocpp/IDLE-{i}", held)
                    for i in range(first, last)
                )
            )
            print(f"  connected {last}/{args.stations}", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(1.0)
        after = _rss_kib(child.pid)
    finally:
        for ws in held:
            await ws.close()
        child.terminate()
        child.wait(10)

    print(f"stations: {args.stations} connected and booted in {elapsed:.1f} s")
    print(f"CSMS process RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after")
    print(f"per connected station: {(after - before) / args.stations:.1f} KiB")


if __name__ == "__main__":
    asyncio.run(main())
