"""Webhooks stay off the stations' path: station round trips with no webhook, and with a
subscription whose receiver hangs 30 s on every delivery.

Starts the embedded CSMS in this process (gateway, manager, API and the webhook tasks; with
``--broker-url`` / ``--redis-url`` the same roles on a real broker and Redis) and runs
``csms simulate`` (100 stations charging, TransactionEvents as fast as answered) in a child
process, twice: without any subscription, then with one for every event to a receiver that
holds each request for ``--hang`` seconds. Prints the TransactionEvent latency of both runs
and the deliveries the receiver was holding; asserts nothing about time.

    python bench/webhooks_hanging_receiver.py
    python bench/webhooks_hanging_receiver.py --stations 100 --duration 20
    python bench/webhooks_hanging_receiver.py --redis-url redis://127.0.0.1:6379/0 \\
        --broker-url mqtt://127.0.0.1:1883
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi import FastAPI, Request, Response

from api import ApiServer
from cli.processes import embedded
from csms.config import Settings
from csms.logs import configure_logging
from services.webhooks import Subscription, new_subscription_id

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Hanging:
    """A receiver that holds every request for ``hang`` seconds, then answers 200."""

    def __init__(self, hang: float) -> None:
        self.hang = hang
        self.received = 0
        self.holding = 0
        self.app = FastAPI()
        self.app.post("/hook")(self.hook)

    async def hook(self, request: Request) -> Response:
        await request.body()
        self.received += 1
        self.holding += 1
        try:
            await asyncio.sleep(self.hang)
        finally:
            self.holding -= 1
        return Response(status_code=200)


async def _simulate(url: str, args: argparse.Namespace, label: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        argv = [
            sys.executable, "-m", "cli", "simulate", "--url", url,
            "--stations", str(args.stations), "--scenario", "sessions",
            "--sessions", "1000000", "--meter-values", "1000000",
            "--duration", str(args.duration), "--id-prefix", f"{label}-",
            "--json", str(out),
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await process.wait()
        summary: dict[str, Any] = json.loads(out.read_text())
        return summary


def _row(label: str, summary: dict[str, Any]) -> str:
    events = summary.get("actions", {}).get("TransactionEvent", {})
    if not events:
        return f"{label:<28} no TransactionEvents answered (errors: {summary.get('errors')})"
    return (
        f"{label:<28}{events['count']:>10.0f}{events['p50']:>9.1f}{events['p95']:>9.1f}"
        f"{events['p99']:>9.1f}   errors: {sum(summary.get('errors', {}).values())}"
    )


async def main(args: argparse.Namespace) -> None:
    configure_logging("console", "error")
    port = _free_port()
    values: dict[str, Any] = {
        "listen_port": port,
        "api_port": _free_port(),
        "first_try": True,
        "unknown_tokens": "accept",
        "message_rate": 1_000_000.0,
        "max_connections_per_address": 20_000,
        "webhook_timeout": args.hang + 5,
        "webhook_lease": args.hang + 30,
    }
    if args.broker_url:
        values["broker_url"] = args.broker_url
    if args.redis_url:
        values["redis_url"] = args.redis_url
    settings = Settings(**values)
    receiver = Hanging(args.hang)
    async with (
        embedded(settings) as running,
        ApiServer(receiver.app, "127.0.0.1", 0) as hook_server,
    ):
        url = f"ws://127.0.0.1:{port}/ocpp"
        print(f"{args.stations} stations, {args.duration:g} s per run, receiver hangs "
              f"{args.hang:g} s", flush=True)  # fmt: skip
        without = await _simulate(url, args, "plain")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await running.services.webhooks.create(
            Subscription(
                id=new_subscription_id(),
                url=f"{hook_server.url}/hook",
                secret=os.urandom(16).hex(),
                created_at=now,
                updated_at=now,
            )
        )
        with_hook = await _simulate(url, args, "hooked")
        print(f"\n{'TransactionEvent ms':<28}{'count':>10}{'p50':>9}{'p95':>9}{'p99':>9}")
        print(_row("no webhook", without))
        print(_row("webhook, receiver hangs", with_hook))
        print(
            f"\nreceiver: {receiver.received} deliveries received, {receiver.holding} still "
            "held (one per subscription is in flight at a time; the rest wait in the outbox)"
        )


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--hang", type=float, default=30.0, help="seconds the receiver holds")
    parser.add_argument("--broker-url")
    parser.add_argument("--redis-url")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_arguments()))
