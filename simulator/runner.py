"""Run a simulation plan: N stations, in this process or spread over several.

One process holds at most a few thousand WebSockets (its open-file limit, raised to the hard
limit at start) and one core; ``processes`` spreads the stations over child processes, each
with its own loop, that report progress every second and their counts at the end. The
summary is computed over all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import quote

from csms.versions import OcppVersion
from simulator.scenarios import Scenario, StormClock, run_station
from simulator.station import SimulatedStation
from simulator.stats import Stats, percentile

__all__ = ["Plan", "Progress", "Summary", "run_plan", "simulate"]

MIX = "mix"
"""``version`` value: alternate 2.0.1 and 1.6 stations."""


@dataclass(frozen=True, slots=True)
class Plan:
    url: str = "ws://127.0.0.1:9000/ocpp"
    """The CSMS's station URL without the station id (it is appended, percent-encoded)."""
    stations: int = 10
    version: str = OcppVersion.OCPP201.value
    """``ocpp2.0.1``, ``ocpp1.6`` or ``mix``."""
    scenario: Scenario = Scenario.SESSIONS
    duration: float = 60.0
    """Seconds the run may take at most (boot/idle scenarios run exactly this long)."""
    sessions: int = 1
    meter_values: int = 10
    meter_interval: float = 0.0
    """Seconds between meter values of a session (0: as fast as answered); a session a CSMS
    starts remotely sends one every this many seconds (10 when 0) until it is stopped."""
    heartbeat_interval: float = 30.0
    rounds: int = 1
    """Storm rounds."""
    storm_pause: float = 1.0
    """Seconds between all stations booted and the next drop."""
    ramp: float = 0.0
    """New connections per second at the start (0: all at once)."""
    id_prefix: str = "SIM"
    first_index: int = 1
    password: str | None = None
    """Basic auth password of every station (security profile 1), if any."""
    token: str = "SIMTOKEN"
    call_timeout: float = 30.0
    processes: int = 1

    def station_ids(self) -> list[str]:
        return [
            f"{self.id_prefix}{index:05d}"
            for index in range(self.first_index, self.first_index + self.stations)
        ]

    def version_of(self, index: int) -> OcppVersion:
        if self.version == MIX:
            return OcppVersion.OCPP201 if index % 2 == 0 else OcppVersion.OCPP16
        return OcppVersion(self.version)


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot while the run goes on."""

    elapsed: float
    connected: int
    booted: int
    round_trips: int
    errors: int
    sessions: int


@dataclass(slots=True)
class Summary:
    plan: dict[str, Any]
    elapsed: float
    round_trips: int
    round_trips_per_second: float
    latency_ms: dict[str, float]
    """p50, p95, p99 and max over every round trip."""
    actions: dict[str, dict[str, float]]
    """Per action: count, p50, p95, p99 (ms)."""
    errors: dict[str, int]
    connected: int
    booted: int
    sessions: int
    csms_calls: dict[str, int]
    storm_recovery_seconds: list[float] = field(default_factory=list)
    """Storm: per round, seconds from the drop until every station booted again (the
    slowest process)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _run_here(
    plan: Plan, stats: Stats, report: Callable[[Stats, int], None] | None = None
) -> list[float]:
    """Run the plan's stations in this loop; returns the storm recovery times."""
    deadline = time.monotonic() + plan.duration
    ids = plan.station_ids()
    stations = [
        SimulatedStation(
            station_id,
            f"{plan.url.rstrip('/')}/{quote(station_id, safe='')}",
            plan.version_of(plan.first_index + offset),
            stats,
            password=plan.password,
            token=plan.token,
            call_timeout=plan.call_timeout,
            remote_meter_interval=plan.meter_interval if plan.meter_interval > 0 else 10.0,
        )
        for offset, station_id in enumerate(ids)
    ]
    recovery: list[float] = []
    storm = (
        StormClock(len(stations), plan.rounds, recovery)
        if plan.scenario is Scenario.STORM
        else None
    )
    tasks: list[asyncio.Task[None]] = []
    storm_task = asyncio.create_task(storm.run(plan.storm_pause)) if storm is not None else None
    reporter = (
        asyncio.create_task(_report_every_second(stations, stats, report)) if report else None
    )
    try:
        for station in stations:
            tasks.append(asyncio.create_task(run_station(station, plan, deadline, storm)))
            if plan.ramp > 0:
                await asyncio.sleep(1 / plan.ramp)
        await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()) + plan.call_timeout)
    finally:
        for task in [*tasks, *(t for t in (storm_task, reporter) if t is not None)]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for extra in (storm_task, reporter):
            if extra is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await extra
        await asyncio.gather(*(station.close() for station in stations), return_exceptions=True)
    return recovery


async def _report_every_second(
    stations: list[SimulatedStation], stats: Stats, report: Callable[[Stats, int], None]
) -> None:
    while True:
        await asyncio.sleep(1.0)
        report(stats, sum(1 for station in stations if station.connected))


def _child(plan: Plan, results: Any) -> None:
    """A child process: run its share of the stations, send progress and the final counts."""
    _raise_open_file_limit()
    stats = Stats()

    def report(current: Stats, connected: int) -> None:
        results.put(("progress", plan.first_index, _progress_counts(current, connected)))

    recovery = asyncio.run(_run_here(plan, stats, report))
    results.put(("done", plan.first_index, {"stats": stats.to_wire(), "recovery": recovery}))


def _progress_counts(stats: Stats, connected: int) -> dict[str, int]:
    return {
        "connected": connected,
        "booted": stats.booted,
        "round_trips": stats.round_trips,
        "errors": sum(stats.errors.values()),
        "sessions": stats.sessions,
    }


def _shares(plan: Plan) -> list[Plan]:
    """The plan split into ``processes`` consecutive ranges of station ids."""
    count = max(1, min(plan.processes, plan.stations))
    base, extra = divmod(plan.stations, count)
    shares, first = [], plan.first_index
    for index in range(count):
        size = base + (1 if index < extra else 0)
        shares.append(replace(plan, stations=size, first_index=first, processes=1))
        first += size
    return shares


def run_plan(plan: Plan, progress: Callable[[Progress], None] | None = None) -> Summary:
    """Run ``plan`` to the end and summarise it; ``progress`` is called about once a second."""
    _raise_open_file_limit()
    if plan.processes <= 1:
        return asyncio.run(simulate(plan, progress))
    started = time.perf_counter()
    stats = Stats()
    recovery = _run_children(plan, stats, started, progress)
    return _summarise(plan, stats, time.perf_counter() - started, recovery)


async def simulate(plan: Plan, progress: Callable[[Progress], None] | None = None) -> Summary:
    """Run ``plan`` on the running loop, in this process (``processes`` is ignored)."""
    started = time.perf_counter()
    stats = Stats()

    def report(current: Stats, connected: int) -> None:
        if progress is not None:
            progress(
                Progress(time.perf_counter() - started, **_progress_counts(current, connected))
            )

    recovery = await _run_here(plan, stats, report)
    return _summarise(plan, stats, time.perf_counter() - started, recovery)


def _run_children(
    plan: Plan, stats: Stats, started: float, progress: Callable[[Progress], None] | None
) -> list[float]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    shares = _shares(plan)
    children = [
        context.Process(target=_child, args=(share, results), daemon=True) for share in shares
    ]
    for child in children:
        child.start()
    latest: dict[int, dict[str, int]] = {}
    done: dict[int, dict[str, Any]] = {}
    limit = time.monotonic() + plan.duration + plan.call_timeout + 30
    try:
        while len(done) < len(children) and time.monotonic() < limit:
            try:
                kind, first, body = results.get(timeout=1.0)
            except queue.Empty:
                if not any(child.is_alive() for child in children):
                    break
                continue
            if kind == "progress":
                latest[first] = body
                if progress is not None:
                    totals = {key: sum(counts[key] for counts in latest.values()) for key in body}
                    progress(Progress(time.perf_counter() - started, **totals))
            else:
                done[first] = body
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    if len(done) < len(children):
        stats.errors["simulator:process-lost"] += len(children) - len(done)
    rounds: list[list[float]] = []
    for body in done.values():
        stats.merge(Stats.from_wire(body["stats"]))
        rounds.append(body["recovery"])
    return [max(values) for values in zip(*rounds, strict=False)] if rounds else []


def _summarise(plan: Plan, stats: Stats, elapsed: float, recovery: list[float]) -> Summary:
    everything = sorted(value for samples in stats.latencies.values() for value in samples)
    actions = {}
    for action, samples in sorted(stats.latencies.items()):
        ordered = sorted(samples)
        actions[action] = {
            "count": len(ordered),
            "p50": round(percentile(ordered, 0.50) * 1000, 2),
            "p95": round(percentile(ordered, 0.95) * 1000, 2),
            "p99": round(percentile(ordered, 0.99) * 1000, 2),
        }
    plan_fields = asdict(plan)
    plan_fields["password"] = None if plan.password is None else "***"
    return Summary(
        plan=plan_fields,
        elapsed=round(elapsed, 3),
        round_trips=len(everything),
        round_trips_per_second=round(len(everything) / elapsed, 1) if elapsed > 0 else 0.0,
        latency_ms={
            "p50": round(percentile(everything, 0.50) * 1000, 2),
            "p95": round(percentile(everything, 0.95) * 1000, 2),
            "p99": round(percentile(everything, 0.99) * 1000, 2),
            "max": round((everything[-1] if everything else 0.0) * 1000, 2),
        },
        actions=actions,
        errors=dict(sorted(stats.errors.items())),
        connected=stats.connected,
        booted=stats.booted,
        sessions=stats.sessions,
        csms_calls=dict(sorted(stats.csms_calls.items())),
        storm_recovery_seconds=[round(value, 3) for value in recovery],
    )
