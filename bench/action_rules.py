"""What checking a station's action rules costs the manager per message, against a bare dict
lookup: the cached check (:class:`services.action_rules.CachedActionRules` over the in-memory
store, every station cached) as the router makes it, and its parts. Prints figures, asserts
nothing.

    python bench/action_rules.py [--stations 10000] [--checks 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from services.action_rules import (
    ActionList,
    ActionRules,
    CachedActionRules,
    MemoryActionRuleStore,
    Side,
)

V201 = "ocpp2.0.1"


def _ns(seconds: float, count: int) -> float:
    return seconds / count * 1e9


async def run(stations: int, checks: int) -> None:
    store = MemoryActionRuleStore()
    ids = [f"CS{i:06d}" for i in range(stations)]
    deny = ActionRules(station_calls=ActionList(deny=frozenset({"DataTransfer"})))
    for station_id in ids[::10]:
        await store.put(station_id, deny)  # one station in ten has rules of its own
    cache = CachedActionRules(store, ttl=3600.0)
    for station_id in ids:
        await cache.effective(station_id, V201)
    order = [ids[i % stations] for i in range(checks)]
    plain = {(station_id, V201): station_id for station_id in ids}

    started = time.perf_counter()
    for station_id in order:
        plain.get((station_id, V201))
    lookup = time.perf_counter() - started

    started = time.perf_counter()
    for station_id in order:
        rules = await cache.effective(station_id, V201)
        rules.refusal(Side.STATION_CALLS, "Heartbeat")
    check = time.perf_counter() - started

    started = time.perf_counter()
    for station_id in order:
        await cache.effective(station_id, V201)
    cached_read = time.perf_counter() - started

    print(f"{stations} stations, {checks} checks, every station cached")
    print(f"  dict lookup (station, version)           {_ns(lookup, checks):7.0f} ns")
    print(f"  cached effective rules (await)           {_ns(cached_read, checks):7.0f} ns")
    print(f"  cached check as the router makes it      {_ns(check, checks):7.0f} ns")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=10_000)
    parser.add_argument("--checks", type=int, default=200_000)
    args = parser.parse_args()
    asyncio.run(run(args.stations, args.checks))


if __name__ == "__main__":
    main()
