"""CPU per EVALSHA: redis-py (as the stores configure it) against services.resp.

    python bench/redis_client.py                     # a private redis-server on a free port
    python bench/redis_client.py --url redis://127.0.0.1:6379/0 --calls 20000

Each client runs the same script (a claim-like SET plus a GET, as BEGIN does on a hot path)
``--calls`` times, ``--concurrency`` tasks at once, and the figure is this process's CPU
time (user + system) per call, so Redis's own work and the machine's other load stay out of
it. Both clients are warmed up first (connections made, the script loaded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.factory import redis_client
from services.resp import RespClient, Script

SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, redis.call('GET', KEYS[2])}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _private_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: pass --url")
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        argv = [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", folder]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait()


async def _measure(call: Callable[[int], Awaitable[object]], calls: int, concurrency: int) -> float:
    """µs of this process's CPU per call."""
    per_task = calls // concurrency

    async def worker(offset: int) -> None:
        for index in range(per_task):
            await call(offset + index)

    await asyncio.gather(*(worker(task * per_task) for task in range(concurrency)))  # warm-up
    started = time.process_time()
    await asyncio.gather(*(worker(task * per_task) for task in range(concurrency)))
    return (time.process_time() - started) / (per_task * concurrency) * 1e6


async def run(url: str, calls: int, concurrency: int) -> dict[str, float]:
    results: dict[str, float] = {}
    classic = redis_client(url)
    script = classic.register_script(SCRIPT)
    try:

        async def with_redis_py(index: int) -> object:
            return await script(keys=[f"b:claim:{index}", "b:seen"], args=[b"Powner", 30000])

        results["redis-py"] = await _measure(with_redis_py, calls, concurrency)
    finally:
        await classic.aclose()
    thin = RespClient.from_url(url)
    thin_script = Script(SCRIPT)
    try:

        async def with_resp(index: int) -> object:
            return await thin.evalsha(thin_script, [f"b:claim:{index}", "b:seen"], [b"P", 30000])

        results["services.resp"] = await _measure(with_resp, calls, concurrency)
    finally:
        await thin.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a Redis to use (default: start a private one)")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    options = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = options.url or stack.enter_context(_private_redis())
        for concurrency in sorted({1, options.concurrency}):
            results = asyncio.run(run(url, options.calls, concurrency))
            for client, micros in results.items():
                print(f"{client:>14}  concurrency {concurrency:>3}: {micros:7.1f} µs CPU / EVALSHA")


if __name__ == "__main__":
    main()
