"""What each simulated station does, by scenario.

Every scenario begins the same way (connect, BootNotification, connector Available) and
reconnects with backoff when the connection is refused or lost, so a CSMS restart in the
middle of a run shows up as errors and recovery, not as a crashed simulator.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from typing import TYPE_CHECKING

from simulator.station import CallFailed, ConnectFailed, SimulatedStation

if TYPE_CHECKING:
    from simulator.runner import Plan

__all__ = ["Scenario", "StormClock", "run_station"]


class Scenario(enum.StrEnum):
    BOOT = "boot"
    """Boot, then a Heartbeat every ``heartbeat_interval`` until the run ends."""
    SESSIONS = "sessions"
    """Boot, then ``sessions`` charging sessions one after another: Authorize, start,
    ``meter_values`` periodic meter values ``meter_interval`` apart (0: as fast as answered,
    the closed-loop load of the benchmarks), stop."""
    STORM = "storm"
    """Boot, then every station drops its connection at once and reconnects, ``rounds``
    times: the reconnect storm after a gateway restart or a network outage."""
    IDLE = "idle"
    """Boot and stay connected, answering CSMS calls (and sending heartbeats) until the run
    ends: the stations an operator drives through the API."""


class StormClock:
    """Rounds of a storm in one process: all stations drop together, then each reports when
    it has booted again."""

    def __init__(self, stations: int, rounds: int, recovery: list[float]) -> None:
        self.stations = stations
        self.rounds = rounds
        self.recovery = recovery
        """Seconds from a drop until the last station of this process booted again, per
        round."""
        self._booted = 0
        self._all_booted = asyncio.Event()
        self._drop = asyncio.Event()

    def booted(self) -> None:
        self._booted += 1
        if self._booted >= self.stations:
            self._all_booted.set()

    async def wait_for_drop(self) -> None:
        await self._drop.wait()

    async def run(self, pause: float) -> None:
        """Drive the rounds: wait until all booted, pause, drop everyone, time the recovery."""
        await self._all_booted.wait()
        for _ in range(self.rounds):
            await asyncio.sleep(pause)
            self._booted = 0
            self._all_booted.clear()
            dropped_at = time.perf_counter()
            self._drop.set()
            self._drop = asyncio.Event()
            await self._all_booted.wait()
            self.recovery.append(time.perf_counter() - dropped_at)


async def _connect_and_boot(station: SimulatedStation, plan: Plan, deadline: float) -> bool:
    """Connect (retrying with backoff until ``deadline``) and boot; True once Accepted."""
    delay = 0.2
    while time.monotonic() < deadline:
        try:
            await station.connect()
            if await station.boot():
                await station.status("Available")
                return True
            return False  # Pending or Rejected: counted; this station stops here
        except ConnectFailed as failed:
            station.stats.errors[f"connect:{failed.kind}"] += 1
            if failed.kind in ("http-401", "http-403", "http-404", "subprotocol"):
                return False  # refused for good: retrying would only hammer the CSMS
        except CallFailed:
            await station.close()
        await asyncio.sleep(delay * (0.5 + random.random()))  # jitter, not security
        delay = min(delay * 2, 5.0)
    return False


async def run_station(
    station: SimulatedStation, plan: Plan, deadline: float, storm: StormClock | None = None
) -> None:
    """Run ``plan.scenario`` for one station until it is done or ``deadline`` passes."""
    try:
        if not await _connect_and_boot(station, plan, deadline):
            return
        if storm is not None:
            storm.booted()
        match plan.scenario:
            case Scenario.SESSIONS:
                await _sessions(station, plan, deadline)
            case Scenario.STORM:
                assert storm is not None
                await _storm(station, plan, deadline, storm)
            case Scenario.BOOT | Scenario.IDLE:
                await _heartbeats(station, plan, deadline)
    finally:
        await station.close()


async def _heartbeats(station: SimulatedStation, plan: Plan, deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(plan.heartbeat_interval, left))
        if time.monotonic() >= deadline:
            return
        if not station.connected and not await _connect_and_boot(station, plan, deadline):
            return
        try:
            await station.heartbeat()
        except CallFailed:
            continue


async def _sessions(station: SimulatedStation, plan: Plan, deadline: float) -> None:
    for _ in range(plan.sessions):
        if time.monotonic() >= deadline:
            return
        if not station.connected and not await _connect_and_boot(station, plan, deadline):
            return
        try:
            if not await station.start_session():
                return
            for _ in range(plan.meter_values):
                if plan.meter_interval > 0:
                    await asyncio.sleep(plan.meter_interval)
                if time.monotonic() >= deadline:
                    break
                await station.meter()
            await station.stop_session()
        except CallFailed:
            station.session = None  # a session cut short by the CSMS or the network
            await station.close()


async def _storm(station: SimulatedStation, plan: Plan, deadline: float, storm: StormClock) -> None:
    for _ in range(plan.rounds):
        await storm.wait_for_drop()
        station.drop()
        if not await _connect_and_boot(station, plan, deadline):
            return
        storm.booted()
