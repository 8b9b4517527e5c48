"""``csms simulate``: simulated stations against any CSMS, with progress and a summary.

    csms simulate --stations 200 --scenario sessions --meter-values 20
    csms simulate --url ws://csms.example:9000/ocpp --stations 5000 --processes 4 \\
        --scenario storm --rounds 3 --json storm.json
    csms simulate --stations 20 --scenario idle --duration 600     # drive them from the API

Progress goes to stderr once a second; the summary to stdout (``--json -`` prints it as JSON,
``--json FILE`` also writes it there). Exit status 0, or 1 when any station failed anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from csms.versions import OcppVersion
from simulator.runner import MIX, Plan, Progress, Summary, run_plan
from simulator.scenarios import Scenario

__all__ = ["add_commands", "run"]


def add_commands(commands: Any) -> None:
    sim = commands.add_parser(
        "simulate",
        help="run simulated stations (load generator)",
        description="Simulated OCPP stations against a CSMS: boot, sessions, reconnect storms.",
    )
    sim.add_argument("--url", default="ws://127.0.0.1:9000/ocpp", help="station URL without the id")
    sim.add_argument("--stations", type=int, default=10, help="number of stations (default 10)")
    sim.add_argument(
        "--version",
        default=OcppVersion.OCPP201.value,
        choices=[*(v.value for v in OcppVersion), MIX],
        help="OCPP version of the stations; mix alternates them (default ocpp2.0.1)",
    )
    sim.add_argument("--scenario", type=Scenario, choices=list(Scenario), default=Scenario.SESSIONS)
    sim.add_argument("--duration", type=float, default=60.0, help="seconds at most (default 60)")
    sim.add_argument("--sessions", type=int, default=1, help="sessions per station (sessions)")
    sim.add_argument("--meter-values", type=int, default=10, help="meter values per session")
    sim.add_argument(
        "--meter-interval",
        type=float,
        default=0.0,
        help="seconds between meter values (default 0: as fast as answered)",
    )
    sim.add_argument("--heartbeat-interval", type=float, default=30.0)
    sim.add_argument("--rounds", type=int, default=1, help="reconnect rounds (storm)")
    sim.add_argument(
        "--storm-pause", type=float, default=1.0, help="seconds between rounds (storm)"
    )
    sim.add_argument("--ramp", type=float, default=0.0, help="connections per second (0: at once)")
    sim.add_argument("--id-prefix", default="SIM", help="station ids are PREFIX00001, ...")
    sim.add_argument("--first-index", type=int, default=1)
    sim.add_argument("--password", help="Basic auth password of every station (profile 1)")
    sim.add_argument("--token", default="SIMTOKEN", help="idToken / idTag the sessions use")
    sim.add_argument("--call-timeout", type=float, default=30.0)
    sim.add_argument(
        "--processes", type=int, default=1, help="spread the stations over N processes"
    )
    sim.add_argument("--json", metavar="FILE", help="write the summary as JSON ('-': stdout)")


def plan_from(args: argparse.Namespace) -> Plan:
    if args.stations < 1 or args.processes < 1:
        raise SystemExit("csms simulate: --stations and --processes must be at least 1")
    return Plan(
        url=args.url,
        stations=args.stations,
        version=args.version,
        scenario=args.scenario,
        duration=args.duration,
        sessions=args.sessions,
        meter_values=args.meter_values,
        meter_interval=args.meter_interval,
        heartbeat_interval=args.heartbeat_interval,
        rounds=args.rounds,
        storm_pause=args.storm_pause,
        ramp=args.ramp,
        id_prefix=args.id_prefix,
        first_index=args.first_index,
        password=args.password,
        token=args.token,
        call_timeout=args.call_timeout,
        processes=args.processes,
    )


def _show_progress(progress: Progress) -> None:
    print(
        f"{progress.elapsed:6.1f}s  connected {progress.connected}  booted {progress.booted}  "
        f"round trips {progress.round_trips}  sessions {progress.sessions}  "
        f"errors {progress.errors}",
        file=sys.stderr,
        flush=True,
    )


def render(summary: Summary) -> str:
    """The summary for people."""
    lines = [
        f"{summary.round_trips} round trips in {summary.elapsed:.1f} s: "
        f"{summary.round_trips_per_second:,.0f}/s",
        "latency ms: " + "  ".join(f"{k} {v:.1f}" for k, v in summary.latency_ms.items()),
        f"stations: {summary.connected} connections, {summary.booted} boots accepted, "
        f"{summary.sessions} sessions completed",
    ]
    if summary.actions:
        lines.append(f"{'action':<24}{'count':>9}{'p50':>9}{'p95':>9}{'p99':>9}")
        for action, row in summary.actions.items():
            lines.append(
                f"{action:<24}{row['count']:>9.0f}{row['p50']:>9.1f}{row['p95']:>9.1f}"
                f"{row['p99']:>9.1f}"
            )
    if summary.storm_recovery_seconds:
        rounds = ", ".join(f"{value:.2f}" for value in summary.storm_recovery_seconds)
        lines.append(f"storm: all stations booted again after {rounds} s")
    if summary.csms_calls:
        calls = ", ".join(f"{action} {n}" for action, n in summary.csms_calls.items())
        lines.append(f"CSMS calls answered: {calls}")
    if summary.errors:
        lines.append("errors: " + ", ".join(f"{kind} {n}" for kind, n in summary.errors.items()))
    else:
        lines.append("errors: none")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    summary = run_plan(plan_from(args), _show_progress)
    if args.json == "-":
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(render(summary))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as out:
                json.dump(summary.to_json(), out, indent=2)
    return 1 if summary.errors else 0
