"""Limits against hostile or broken clients, as pure bookkeeping (no I/O, no clock).

Each class here is fed the current time (``now``, seconds on any monotonic-enough clock) by
its caller, so every rule is tested synchronously:

- :class:`TokenBucket`: the per-station message rate (rate + burst), used by the pipe.
- :class:`AddressLimiter`: open connections per source address, used at the handshake.
- :class:`LogThrottle`: which of many identical warnings get written, so that a flood of bad
  frames or refused handshakes cannot flood the logs as well.
- :func:`address_key`: the "source address" a limit applies to (an IPv6 /64, not one host).

See ``docs/limits.md`` for the settings and what a breach does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable

__all__ = [
    "LOG_INTERVAL",
    "AddressLimiter",
    "LogThrottle",
    "TokenBucket",
    "address_key",
    "format_peer",
    "peer_host",
]

LOG_INTERVAL = 10.0
"""Seconds between two log lines of the same kind about the same source (an address, a
station, a refusal reason)."""


class TokenBucket:
    """Allows ``rate`` events per second on average and bursts of up to ``burst`` events.

    The bucket starts full, so a station that connects may send its boot sequence at once.
    """

    __slots__ = ("_tokens", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = self.burst
        self._updated = now

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (refills the bucket first)."""
        if now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
        return self._tokens

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the event is over the limit."""
        if self.level(now) >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until the next token is available (0 when one is)."""
        return max(0.0, (1.0 - self.level(now)) / self.rate)


def peer_host(address: object) -> str | None:
    """The host part of a socket's peer address (``ws.remote_address``), None when unknown."""
    if isinstance(address, tuple) and address:
        return str(address[0])
    return None if address is None else str(address)


def format_peer(address: object) -> str | None:
    """``host:port`` of a socket's peer address, for log lines."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return None if address is None else str(address)


def address_key(host: str) -> str:
    """The source a per-address limit counts: the IPv4 address, or the IPv6 /64 network.

    One IPv6 host usually owns a whole /64, so counting single IPv6 addresses would let it
    open as many connections as it likes. IPv4-mapped IPv6 addresses count as their IPv4
    address. Anything that is not an IP address (a Unix socket path) is used as it is.
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AddressLimiter:
    """Counts open connections per source address and refuses more than ``limit`` at once.

    ``limit=None`` counts without refusing (the counts still show in :meth:`count`). Every
    successful :meth:`acquire` must be matched by exactly one :meth:`release`; an address
    whose count drops to zero is forgotten, so the table only holds addresses with open
    connections.
    """

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1 or None")
        self.limit = limit
        self._counts: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        """Count one more connection from ``address``; False (and nothing counted) if full."""
        count = self._counts.get(address, 0)
        if self.limit is not None and count >= self.limit:
            return False
        self._counts[address] = count + 1
        return True

    def release(self, address: str) -> None:
        """One connection from ``address`` closed."""
        count = self._counts.get(address, 0)
        if count <= 1:
            # Forgiving on purpose: a release without acquire must not drive a count negative
            # and later admit more than ``limit``.
            self._counts.pop(address, None)
        else:
            self._counts[address] = count - 1

    def count(self, address: str) -> int:
        return self._counts.get(address, 0)

    @property
    def total(self) -> int:
        """Connections counted over all addresses."""
        return sum(self._counts.values())

    def __len__(self) -> int:
        """Addresses with at least one open connection."""
        return len(self._counts)


class LogThrottle:
    """Lets the first event per key and ``interval`` through and counts the rest.

    :meth:`allow` returns None for an event to suppress, else the number suppressed since
    the last one let through (to put in the log line). At most ``max_keys`` keys are
    remembered; the oldest are forgotten first, so the throttle's memory is bounded whatever
    the number of distinct sources.
    """

    __slots__ = ("_keys", "interval", "max_keys")

    def __init__(self, interval: float = 10.0, max_keys: int = 4096) -> None:
        if interval < 0 or max_keys < 1:
            raise ValueError("interval must be >= 0 and max_keys >= 1")
        self.interval = interval
        self.max_keys = max_keys
        self._keys: dict[Hashable, list[float]] = {}
        """key → [time last let through, suppressed since]; insertion order = age."""

    def allow(self, key: Hashable, now: float) -> int | None:
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        suppressed = int(entry[1]) if entry is not None else 0
        if entry is not None:
            del self._keys[key]  # re-inserted below as the newest
        elif len(self._keys) >= self.max_keys:
            del self._keys[next(iter(self._keys))]
        self._keys[key] = [now, 0.0]
        return suppressed

    def forget(self, key: Hashable) -> int:
        """Drop ``key``; returns how many events were suppressed and not yet reported."""
        entry = self._keys.pop(key, None)
        return int(entry[1]) if entry is not None else 0

    @property
    def suppressed(self) -> int:
        """Events suppressed and not yet reported, over all keys."""
        return sum(int(entry[1]) for entry in self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)
