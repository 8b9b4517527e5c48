"""Side-by-side: the same closed-loop load against each CSMS, in one run, on this machine.

    python bench/compare.py                                  # every target, 50 stations
    python bench/compare.py --targets ocpp,embedded --stations 50 --meter-values 200
    python bench/compare.py --json compare.json
    python bench/compare.py --targets ocpp,embedded --repeat 3  # three rounds, one table each

Targets, each started fresh for its run:

- ``ceiling``: a bare websockets endpoint that parses and answers (bench/ceiling.py);
- ``ocpp``: a single-process CSMS written with the ``ocpp`` package that persists nothing
  (bench/baseline_ocpp.py), the usual Python choice and the baseline of the ratios;
- ``embedded``: ``csms run`` (in-process bus, memory stores);
- ``fleet-1`` / ``fleet-2``: ``csms gateway`` + one / two ``csms manager`` processes on a
  private Mosquitto and a private Redis (AOF off, as a cache-like default; say so when
  comparing).

The load is ``csms simulate`` in a process of its own: every station boots, then runs one
charging session of ``--meter-values`` TransactionEvents (1.6: MeterValues) sent as fast as
they are answered. Reported per target: round trips per second and the ratio to ``ocpp``,
TransactionEvent latency percentiles, and CPU time per round trip of each process of the
target (from /proc), so a deployment can be sized. Everything shares the machine's cores:
the load generator, the CSMS processes, the broker and Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TARGETS = ("ceiling", "ocpp", "embedded", "fleet-1", "fleet-2")
UNTHROTTLED = {
    "CSMS_MESSAGE_RATE": "1000000",
    "CSMS_MAX_CONNECTIONS_PER_ADDRESS": "20000",
    "CSMS_UNKNOWN_STATIONS": "accept",
    "CSMS_UNKNOWN_TOKENS": "accept",
    "CSMS_LOG_LEVEL": "warning",
    "CSMS_ANSWER_TIMEOUT": "10",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Running:
    url: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    """Role name → process whose CPU time is reported."""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSMS_")}
    env.update(UNTHROTTLED)
    env.update(extra)
    return env


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def infrastructure(workdir: Path) -> Iterator[tuple[str, str, dict[str, subprocess.Popen[bytes]]]]:
    """A private Mosquitto and Redis: (broker URL, Redis URL, their processes)."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    mqtt_port, redis_port = free_port(), free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\nmax_inflight_messages 0\n"
    )
    broker = _spawn([mosquitto, "-c", str(conf)], dict(os.environ), workdir / "mosquitto.log")
    redis = _spawn(
        ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        dict(os.environ),
        workdir / "redis.log",
    )
    try:
        wait_for_port(mqtt_port)
        wait_for_port(redis_port)
        yield (
            f"mqtt://127.0.0.1:{mqtt_port}",
            f"redis://127.0.0.1:{redis_port}/0",
            {"broker": broker, "redis": redis},
        )
    finally:
        for process in (broker, redis):
            process.terminate()
            process.wait(10)


@contextlib.contextmanager
def target(
    name: str, workdir: Path, infra: tuple[str, str, dict[str, subprocess.Popen[bytes]]] | None
) -> Iterator[Running]:
    port = free_port()
    log = workdir / f"{name}.log"
    started: list[subprocess.Popen[bytes]] = []
    running = Running(url=f"ws://127.0.0.1:{port}/ocpp")
    try:
        if name in ("ceiling", "ocpp"):
            script = "ceiling.py" if name == "ceiling" else "baseline_ocpp.py"
            process = _spawn(
                [PYTHON, str(ROOT / "bench" / script), "--port", str(port)], _env(), log
            )
            started.append(process)
            running.processes["csms"] = process
        elif name == "embedded":
            env = _env(CSMS_LISTEN_PORT=str(port), CSMS_API_PORT=str(free_port()))
            process = _spawn([PYTHON, "-m", "cli", "run"], env, log)
            started.append(process)
            running.processes["csms"] = process
        else:
            assert infra is not None
            broker_url, redis_url, servers = infra
            managers = int(name.rsplit("-", 1)[1])
            env = _env(
                CSMS_LISTEN_PORT=str(port),
                CSMS_BROKER_URL=broker_url,
                CSMS_REDIS_URL=redis_url,
                CSMS_TOPIC_PREFIX=f"cmp{port}",
                CSMS_GATEWAY_METRICS_PORT="none",
                CSMS_MANAGER_METRICS_PORT="none",
            )
            for index in range(managers):
                process = _spawn([PYTHON, "-m", "cli", "manager"], env, log)
                started.append(process)
                running.processes[f"manager-{index + 1}"] = process
            gateway = _spawn([PYTHON, "-m", "cli", "gateway"], env, log)
            started.append(gateway)
            running.processes["gateway"] = gateway
            running.processes.update(servers)
        wait_for_port(port)
        yield running
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def simulate(
    url: str, args: argparse.Namespace, prefix: str, out: Path, **over: Any
) -> dict[str, Any]:
    """One ``csms simulate`` run; its JSON summary."""
    stations = over.get("stations", args.stations)
    meter_values = over.get("meter_values", args.meter_values)
    argv = [
        PYTHON, "-m", "cli", "simulate", "--url", url, "--stations", str(stations),
        "--version", args.version, "--meter-values", str(meter_values),
        "--id-prefix", prefix, "--json", str(out), "--duration", "600",
    ]  # fmt: skip
    out.unlink(missing_ok=True)
    done = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, check=False)
    if not out.exists():
        raise RuntimeError(f"csms simulate failed:\n{done.stderr.decode(errors='replace')[-3000:]}")
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary


def run_target(name: str, args: argparse.Namespace, workdir: Path, infra: Any) -> dict[str, Any]:
    with target(name, workdir, infra) as running:
        # Warm up (first connections, validators, Redis scripts) until a small run is clean.
        deadline = time.monotonic() + 60
        while True:
            warm = simulate(
                running.url, args, "WARM", workdir / "warm.json", stations=2, meter_values=3
            )
            if not warm["errors"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        before = {role: cpu_seconds(p.pid) for role, p in running.processes.items()}
        summary = simulate(running.url, args, f"{name.upper()}-", workdir / f"{name}.json")
        after = {role: cpu_seconds(p.pid) for role, p in running.processes.items()}
    trips = max(1, summary["round_trips"])
    action = "TransactionEvent" if args.version == "ocpp2.0.1" else "MeterValues"
    return {
        "target": name,
        "round_trips": summary["round_trips"],
        "round_trips_per_second": summary["round_trips_per_second"],
        "latency_ms": summary["actions"].get(action, {}),
        "errors": summary["errors"],
        "cpu_us_per_round_trip": {
            role: round((after[role] - before[role]) / trips * 1e6, 1) for role in before
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--stations", type=int, default=50)
    parser.add_argument("--meter-values", type=int, default=200)
    parser.add_argument("--version", default="ocpp2.0.1", choices=["ocpp2.0.1", "ocpp1.6"])
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of every target, each with its own ratios: the machine's noise shows",
    )
    args = parser.parse_args()
    names = [name for name in args.targets.split(",") if name]
    unknown = set(names) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    rounds: list[list[dict[str, Any]]] = []
    with (
        tempfile.TemporaryDirectory(prefix="csms-compare-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        infra = None
        if any(name.startswith("fleet") for name in names):
            infra = stack.enter_context(infrastructure(workdir))
        for round_number in range(max(1, args.repeat)):
            results: list[dict[str, Any]] = []
            for name in names:
                print(f"running {name} (round {round_number + 1}) ...", file=sys.stderr, flush=True)
                results.append(run_target(name, args, workdir, infra))
            rounds.append(results)
    for results in rounds:
        print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rounds[0] if len(rounds) == 1 else rounds, indent=2))


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """One round's figures, ratios against that round's ``ocpp``."""
    baseline = next((r["round_trips_per_second"] for r in results if r["target"] == "ocpp"), None)
    print(
        f"{args.stations} stations, {args.version}, one session of {args.meter_values} meter "
        f"values each, closed loop"
    )
    print(
        f"{'target':<10}{'rt/s':>9}{'x ocpp':>8}{'p50 ms':>9}{'p99 ms':>9}  CPU µs per round trip"
    )
    for result in results:
        rate = result["round_trips_per_second"]
        ratio = f"{rate / baseline:.2f}" if baseline else "-"
        latency = result["latency_ms"]
        cpu = ", ".join(f"{role} {us:.0f}" for role, us in result["cpu_us_per_round_trip"].items())
        errors = f"  errors {result['errors']}" if result["errors"] else ""
        print(
            f"{result['target']:<10}{rate:>9,.0f}{ratio:>8}{latency.get('p50', 0):>9.1f}"
            f"{latency.get('p99', 0):>9.1f}  {cpu}{errors}"
        )


if __name__ == "__main__":
    main()
