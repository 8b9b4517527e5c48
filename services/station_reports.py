"""What stations reported on their own initiative, per station: smart-charging facts (EV
charging needs and schedules, external limits, reported charging profiles), firmware and log
upload status histories, customer information, display messages, reservation status,
variable monitors, monitoring events and meter values.

The managers write it from station Calls (NotifyEVChargingNeeds, NotifyChargingLimit,
FirmwareStatusNotification, NotifyMonitoringReport, MeterValues, ...); the operator API reads
it. Two shapes cover everything:

- **entries** (:class:`EntryKind`): one hash per station and kind, field -> small JSON
  object. The latest fact per key (an EVSE, a message id, a monitor) replaces the previous
  one. Each kind is capped per station (:data:`ENTRY_CAPS`): a new field beyond the cap is
  left out and counted (``dropped``, which the handlers log); stored fields are still
  updated.
- **histories** (:class:`HistoryKind`): one list per station, kind and ``scope`` (the
  EVSE of meter values), newest first, trimmed to :data:`HISTORY_CAPS` on every append.

Every message is one :class:`ReportChange` (puts, deletes and appends across kinds), applied
atomically: in Redis one script call (one round trip). :class:`MemoryStationReportStore` is
the embedded default; :mod:`services.redis_station_reports` holds the Redis one.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = [
    "ENTRY_CAPS",
    "HISTORY_CAPS",
    "Append",
    "EntryKind",
    "HistoryKind",
    "MemoryStationReportStore",
    "Put",
    "ReportChange",
    "StationReportStore",
    "decode",
    "encode",
    "transaction_scope",
]


class EntryKind(enum.StrEnum):
    """Keyed facts, one hash per station and kind (the field each is keyed by in brackets)."""

    CHARGING_NEEDS = "charging-needs"  # evse id
    CHARGING_SCHEDULES = "charging-schedules"  # evse id
    CHARGING_LIMITS = "charging-limits"  # evse id / limit source
    CHARGING_PROFILES = "charging-profiles"  # evse id / profile id
    PROFILE_REPORTS = "profile-reports"  # ReportChargingProfiles requestId
    CUSTOMER_INFORMATION = "customer-information"  # requestId / seqNo
    DISPLAY_MESSAGES = "display-messages"  # message id
    RESERVATIONS = "reservations"  # reservation id
    MONITORS = "monitors"  # component / variable / monitor id
    PROBLEMS = "problems"  # component / variable with an open NotifyEvent problem


class HistoryKind(enum.StrEnum):
    """Appended records, newest first, one list per station, kind and scope."""

    FIRMWARE = "firmware"
    LOGS = "logs"
    EVENTS = "events"
    METER_VALUES = "meter-values"  # scope: the evse id


ENTRY_CAPS: Mapping[EntryKind, int] = {
    EntryKind.CHARGING_NEEDS: 256,
    EntryKind.CHARGING_SCHEDULES: 256,
    EntryKind.CHARGING_LIMITS: 1_024,
    EntryKind.CHARGING_PROFILES: 1_024,
    EntryKind.PROFILE_REPORTS: 256,
    EntryKind.CUSTOMER_INFORMATION: 1_024,
    EntryKind.DISPLAY_MESSAGES: 1_024,
    EntryKind.RESERVATIONS: 1_024,
    EntryKind.MONITORS: 4_096,
    EntryKind.PROBLEMS: 1_024,
}
"""Fields per station and kind; a new field beyond the cap is dropped (and counted)."""

HISTORY_CAPS: Mapping[HistoryKind, int] = {
    HistoryKind.FIRMWARE: 200,
    HistoryKind.LOGS: 200,
    HistoryKind.EVENTS: 1_000,
    HistoryKind.METER_VALUES: 200,
}
"""Records kept per station, kind and scope (the oldest go first)."""


def transaction_scope(transaction_id: str) -> str:
    """The meter-values scope of a transaction's readings (EVSE scopes are bare numbers)."""
    return f"transaction/{transaction_id}"


def encode(value: Mapping[str, Any]) -> bytes:
    return msgspec.json.encode(value)


def decode(raw: bytes) -> dict[str, Any]:
    value: dict[str, Any] = msgspec.json.decode(raw)
    return value


@dataclass(frozen=True, slots=True)
class Put:
    """Set one field of an entry kind."""

    kind: EntryKind
    field: str
    value: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Append:
    """Append one record to a history (``scope``: the EVSE of meter values, else empty)."""

    kind: HistoryKind
    record: Mapping[str, Any]
    scope: str = ""


@dataclass(frozen=True, slots=True)
class ReportChange:
    """Everything one station message changes, applied atomically: deletes, then puts, then
    appends."""

    puts: Sequence[Put] = ()
    deletes: Sequence[tuple[EntryKind, str]] = ()
    appends: Sequence[Append] = ()


@runtime_checkable
class StationReportStore(Protocol):
    """Where station reports live. Failures raise
    :class:`~services.interfaces.StoreUnavailable`."""

    async def apply(self, station_id: str, change: ReportChange) -> int:
        """Apply ``change`` atomically; the number of puts left out by the caps."""
        ...

    async def entries(self, station_id: str, kind: EntryKind) -> dict[str, dict[str, Any]]:
        """Every field of the station's ``kind`` (field -> value)."""
        ...

    async def entry(self, station_id: str, kind: EntryKind, name: str) -> dict[str, Any] | None:
        """One field, None when absent."""
        ...

    async def history(
        self, station_id: str, kind: HistoryKind, scope: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` records of a history, newest first."""
        ...

    async def scopes(self, station_id: str, kind: HistoryKind) -> list[str]:
        """The scopes a history has records in (the EVSEs of meter values), sorted."""
        ...

    async def forget(self, station_id: str) -> None:
        """Drop everything of a deleted station."""
        ...


@dataclass(slots=True)
class _Station:
    entries: dict[EntryKind, dict[str, bytes]] = field(default_factory=dict)
    histories: dict[tuple[HistoryKind, str], deque[bytes]] = field(default_factory=dict)


class MemoryStationReportStore:
    """:class:`StationReportStore` in dicts (embedded default, tests)."""

    def __init__(self) -> None:
        self._stations: dict[str, _Station] = {}

    async def apply(self, station_id: str, change: ReportChange) -> int:
        held = self._stations.setdefault(station_id, _Station())
        for kind, name in change.deletes:
            held.entries.get(kind, {}).pop(name, None)
        dropped = 0
        for put in change.puts:
            fields = held.entries.setdefault(put.kind, {})
            if put.field not in fields and len(fields) >= ENTRY_CAPS[put.kind]:
                dropped += 1
                continue
            fields[put.field] = encode(put.value)
        for append in change.appends:
            key = (append.kind, append.scope)
            history = held.histories.get(key)
            if history is None:
                history = held.histories[key] = deque(maxlen=HISTORY_CAPS[append.kind])
            history.appendleft(encode(append.record))
        return dropped

    async def entries(self, station_id: str, kind: EntryKind) -> dict[str, dict[str, Any]]:
        held = self._stations.get(station_id)
        fields = held.entries.get(kind, {}) if held else {}
        return {name: decode(raw) for name, raw in fields.items()}

    async def entry(self, station_id: str, kind: EntryKind, name: str) -> dict[str, Any] | None:
        held = self._stations.get(station_id)
        raw = held.entries.get(kind, {}).get(name) if held else None
        return decode(raw) if raw is not None else None

    async def history(
        self, station_id: str, kind: HistoryKind, scope: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        held = self._stations.get(station_id)
        found = held.histories.get((kind, scope), deque()) if held else deque()
        return [decode(raw) for raw in list(found)[:limit]]

    async def scopes(self, station_id: str, kind: HistoryKind) -> list[str]:
        held = self._stations.get(station_id)
        if held is None:
            return []
        return sorted(scope for (found, scope), log in held.histories.items() if found is kind)

    async def forget(self, station_id: str) -> None:
        self._stations.pop(station_id, None)
