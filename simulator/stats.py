"""What a simulation counts: round-trip latencies per action, errors by kind, milestones.

One :class:`Stats` per process; the runner merges the children's into one summary. Latencies
are kept as ``array('d')`` (8 bytes each), so a million round trips cost 8 MB, and every
percentile in the summary is exact.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Stats", "percentile"]


def percentile(ordered: list[float] | array[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


@dataclass(slots=True)
class Stats:
    latencies: dict[str, array[float]] = field(default_factory=dict)
    """Seconds from sending a Call to its answer, by action."""
    errors: Counter[str] = field(default_factory=Counter)
    """Failures by kind, e.g. ``connect:http-401``, ``call:timeout``, ``TransactionEvent:
    FormatViolation``, ``authorize:Invalid``."""
    connected: int = 0
    """Connections opened (reconnections included)."""
    booted: int = 0
    """BootNotifications answered Accepted."""
    sessions: int = 0
    """Charging sessions run to their end."""
    csms_calls: Counter[str] = field(default_factory=Counter)
    """CSMS calls the stations answered, by action."""

    def round_trip(self, action: str, seconds: float) -> None:
        samples = self.latencies.get(action)
        if samples is None:
            samples = self.latencies[action] = array("d")
        samples.append(seconds)

    @property
    def round_trips(self) -> int:
        return sum(len(samples) for samples in self.latencies.values())

    def merge(self, other: Stats) -> None:
        for action, samples in other.latencies.items():
            self.latencies.setdefault(action, array("d")).extend(samples)
        self.errors.update(other.errors)
        self.csms_calls.update(other.csms_calls)
        self.connected += other.connected
        self.booted += other.booted
        self.sessions += other.sessions

    def to_wire(self) -> dict[str, Any]:
        """A picklable/JSON form for a child process to send back."""
        return {
            "latencies": {action: samples.tobytes() for action, samples in self.latencies.items()},
            "errors": dict(self.errors),
            "csms_calls": dict(self.csms_calls),
            "connected": self.connected,
            "booted": self.booted,
            "sessions": self.sessions,
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Stats:
        stats = cls(
            errors=Counter(wire["errors"]),
            csms_calls=Counter(wire["csms_calls"]),
            connected=wire["connected"],
            booted=wire["booted"],
            sessions=wire["sessions"],
        )
        for action, raw in wire["latencies"].items():
            samples = array("d")
            samples.frombytes(raw)
            stats.latencies[action] = samples
        return stats
