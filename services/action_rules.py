"""Per-station action rules: which OCPP actions a station may send, and which the CSMS may send
to it.

Two directions (:class:`Side`): ``station_calls`` (Calls the station sends to the CSMS) and
``csms_calls`` (calls the CSMS sends to the station). Each is an :class:`ActionList`: an
optional ``allow`` list (only these) and a ``deny`` list (never these); deny wins.

Rules are set for a station and, as defaults, for each OCPP version. The effective rules of
a station speaking a version (:func:`effective`) are, per direction, the station's own when
set, else the version's default, else everything allowed. BootNotification is always allowed
to a station, whatever is stored (a station that cannot boot can never register again), and
:func:`check_rules` refuses a rule that would deny it.

The managers check every station Call and the operations layer every CSMS call, so rules are
read through :class:`CachedActionRules`, a per-process cache with a short TTL
(``action_rules_cache_seconds``): a cached check is a dict lookup, and a change applies
within the TTL on every process (at once on the process that made it).

:class:`MemoryActionRuleStore` is the embedded default; :mod:`services.redis_action_rules`
holds the Redis one.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

import msgspec
import structlog

import ocpp_schemas
from csms.errors import InvalidRequest
from csms.versions import supported
from services.interfaces import StoreUnavailable

__all__ = [
    "ALLOW_ALL",
    "BOOT_NOTIFICATION",
    "NO_RULES",
    "ActionDenied",
    "ActionList",
    "ActionRuleReader",
    "ActionRuleStore",
    "ActionRules",
    "CachedActionRules",
    "EffectiveRules",
    "InvalidRules",
    "MemoryActionRuleStore",
    "Side",
    "Source",
    "check_csms_call",
    "check_rules",
    "describe_refusal",
    "effective",
]

_log = structlog.get_logger("services.action_rules")

BOOT_NOTIFICATION = "BootNotification"


class Side(enum.StrEnum):
    """A direction of calls."""

    STATION_CALLS = "station_calls"
    """Calls the station sends to the CSMS."""
    CSMS_CALLS = "csms_calls"
    """Calls the CSMS sends to the station."""


class Source(enum.StrEnum):
    """Where a direction's effective rule comes from."""

    STATION = "station"
    DEFAULT = "default"
    NONE = "none"
    """No rule: everything is allowed."""


class ActionList(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One direction's rule: ``allow`` (None = no allow list) and ``deny``; deny wins."""

    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()

    def refusal(self, action: str) -> str | None:
        """Why ``action`` is refused by this rule, or None when it is permitted."""
        if action in self.deny:
            return "deny"
        if self.allow is not None and action not in self.allow:
            return "allow"
        return None


ALLOW_ALL = ActionList()


class ActionRules(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The rules of one station or one version's defaults; None = no rule for a direction."""

    station_calls: ActionList | None = None
    csms_calls: ActionList | None = None

    def side(self, side: Side) -> ActionList | None:
        return self.station_calls if side is Side.STATION_CALLS else self.csms_calls

    @property
    def empty(self) -> bool:
        return self.station_calls is None and self.csms_calls is None


NO_RULES = ActionRules()


class ActionDenied(InvalidRequest):
    """A call the station's action rules refuse; nothing was sent or handled."""

    def __init__(self, station_id: str, side: Side, action: str, rule: str, source: Source) -> None:
        self.station_id = station_id
        self.side = side
        self.action = action
        self.rule = rule
        """``deny`` (on the deny list) or ``allow`` (not on the allow list)."""
        self.source = source
        super().__init__(describe_refusal(action, rule))


def describe_refusal(action: str, rule: str) -> str:
    """The sentence a refused call is answered with (a CallError description, an API message)."""
    if rule == "deny":
        return f"action {action} is denied for this station"
    return f"action {action} is not in the allow list for this station"


class EffectiveRules(msgspec.Struct, frozen=True):
    """What applies to one station speaking one version, each direction resolved."""

    station_calls: ActionList = ALLOW_ALL
    csms_calls: ActionList = ALLOW_ALL
    station_source: Source = Source.NONE
    csms_source: Source = Source.NONE

    def side(self, side: Side) -> tuple[ActionList, Source]:
        if side is Side.STATION_CALLS:
            return self.station_calls, self.station_source
        return self.csms_calls, self.csms_source

    def refusal(self, side: Side, action: str) -> str | None:
        """``deny`` / ``allow`` when ``action`` is refused in ``side``, else None.

        BootNotification is never refused to a station, even by a stored rule that
        :func:`check_rules` would not have let in."""
        if side is Side.STATION_CALLS:
            if action == BOOT_NOTIFICATION:
                return None
            rule = self.station_calls
        else:
            rule = self.csms_calls
        # ActionList.refusal inlined: this runs for every station Call.
        if action in rule.deny:
            return "deny"
        allow = rule.allow
        if allow is not None and action not in allow:
            return "allow"
        return None


def effective(own: ActionRules, default: ActionRules) -> EffectiveRules:
    """Per direction: the station's own rule when set, else the version's default, else none."""
    station, station_source = _pick(own.station_calls, default.station_calls)
    csms, csms_source = _pick(own.csms_calls, default.csms_calls)
    return EffectiveRules(station, csms, station_source, csms_source)


def _pick(own: ActionList | None, default: ActionList | None) -> tuple[ActionList, Source]:
    if own is not None:
        return own, Source.STATION
    if default is not None:
        return default, Source.DEFAULT
    return ALLOW_ALL, Source.NONE


class InvalidRules(InvalidRequest):
    """Rules that cannot be stored. ``code`` is ``unknown_action`` or
    ``boot_notification_denied``; ``field`` names the list (``station_calls.deny``)."""

    def __init__(self, code: str, field: str, message: str, action: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.action = action


def check_rules(rules: ActionRules, versions: Iterable[str]) -> None:
    """Raise :class:`InvalidRules` unless every action named is an action of at least one of
    ``versions`` (their OCA schema tables) and BootNotification stays allowed to the station."""
    names = tuple(versions)
    known = frozenset().union(*(ocpp_schemas.actions(version) for version in names))
    for side in Side:
        rule = rules.side(side)
        if rule is None:
            continue
        for kind, listed in (("allow", rule.allow or frozenset()), ("deny", rule.deny)):
            for action in sorted(listed - known):
                raise InvalidRules(
                    "unknown_action",
                    f"{side.value}.{kind}",
                    f"{action!r} is not an OCPP action of {' or '.join(names)}",
                    action,
                )
    station = rules.station_calls
    if station is None:
        return
    if BOOT_NOTIFICATION in station.deny:
        raise InvalidRules(
            "boot_notification_denied",
            "station_calls.deny",
            "BootNotification cannot be denied: a station that cannot boot can never register "
            "again",
            BOOT_NOTIFICATION,
        )
    if station.allow is not None and BOOT_NOTIFICATION not in station.allow:
        raise InvalidRules(
            "boot_notification_denied",
            "station_calls.allow",
            "an allow list of station_calls must name BootNotification: a station that cannot "
            "boot can never register again",
            BOOT_NOTIFICATION,
        )


@runtime_checkable
class ActionRuleReader(Protocol):
    """What enforcement needs: the effective rules of a station speaking a version."""

    async def effective(self, station_id: str, version: str) -> EffectiveRules:
        """Raises StoreUnavailable when the rules cannot be read."""
        ...


@runtime_checkable
class ActionRuleStore(ActionRuleReader, Protocol):
    """Stations' rules and the versions' defaults. Empty rules are no rules."""

    async def get(self, station_id: str) -> ActionRules:
        """The station's own rules (:data:`NO_RULES` when none are set)."""
        ...

    async def put(self, station_id: str, rules: ActionRules) -> None:
        """Replace the station's rules (empty rules remove them)."""
        ...

    async def delete(self, station_id: str) -> None:
        """Remove the station's rules (none is fine)."""
        ...

    async def get_default(self, version: str) -> ActionRules:
        """The version's defaults (:data:`NO_RULES` when none are set)."""
        ...

    async def put_default(self, version: str, rules: ActionRules) -> None:
        """Replace the version's defaults (empty rules remove them)."""
        ...


async def check_csms_call(
    reader: ActionRuleReader, station_id: str, version: str, action: str
) -> None:
    """Raise :class:`ActionDenied` when the station's rules refuse this CSMS call."""
    rules = await reader.effective(station_id, version)
    rule = rules.refusal(Side.CSMS_CALLS, action)
    if rule is not None:
        raise ActionDenied(station_id, Side.CSMS_CALLS, action, rule, rules.csms_source)


class MemoryActionRuleStore:
    """:class:`ActionRuleStore` in this process's memory (the embedded default, tests)."""

    def __init__(self) -> None:
        self._stations: dict[str, ActionRules] = {}
        self._defaults: dict[str, ActionRules] = {}

    async def get(self, station_id: str) -> ActionRules:
        return self._stations.get(station_id, NO_RULES)

    async def put(self, station_id: str, rules: ActionRules) -> None:
        if rules.empty:
            self._stations.pop(station_id, None)
        else:
            self._stations[station_id] = rules

    async def delete(self, station_id: str) -> None:
        self._stations.pop(station_id, None)

    async def get_default(self, version: str) -> ActionRules:
        return self._defaults.get(version, NO_RULES)

    async def put_default(self, version: str, rules: ActionRules) -> None:
        if rules.empty:
            self._defaults.pop(version, None)
        else:
            self._defaults[version] = rules

    async def effective(self, station_id: str, version: str) -> EffectiveRules:
        return effective(
            self._stations.get(station_id, NO_RULES), self._defaults.get(version, NO_RULES)
        )


DEFAULT_CACHE_ENTRIES = 100_000
"""Stations (per version) a :class:`CachedActionRules` remembers at most."""


class CachedActionRules:
    """An :class:`ActionRuleStore` that remembers effective rules for ``ttl`` seconds.

    One per process, so a station's Calls cost no store read per message: a fresh entry is
    one dict lookup and one clock read. Writes go to the store and forget what they change
    in this process at once; other processes see them within ``ttl``. When the store cannot
    be read, an expired entry is served for another ``ttl`` (so an outage costs one failed
    read per station and TTL, not one per message); without one, StoreUnavailable.
    ``ttl`` 0 reads the store every time.
    """

    def __init__(
        self,
        store: ActionRuleStore,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        self.store = store
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[tuple[str, str], tuple[float, EffectiveRules]] = {}

    async def effective(self, station_id: str, version: str) -> EffectiveRules:
        key = (station_id, version)
        entry = self._entries.get(key)
        now = self._clock()
        if entry is not None and entry[0] > now:
            return entry[1]
        try:
            rules = await self.store.effective(station_id, version)
        except StoreUnavailable as exc:
            if entry is None:
                raise
            _log.warning(
                "action rules served from an expired entry", station=station_id, error=str(exc)
            )
            rules = entry[1]
        if self._ttl > 0:
            self._remember(key, now + self._ttl, rules)
        return rules

    def _remember(self, key: tuple[str, str], expires: float, rules: EffectiveRules) -> None:
        entries = self._entries
        entries.pop(key, None)
        if len(entries) >= self._max_entries:
            del entries[next(iter(entries))]  # the oldest entry: dicts keep insertion order
        entries[key] = (expires, rules)

    def _forget_station(self, station_id: str) -> None:
        for version in supported():
            self._entries.pop((station_id, version.value), None)

    async def get(self, station_id: str) -> ActionRules:
        return await self.store.get(station_id)

    async def put(self, station_id: str, rules: ActionRules) -> None:
        await self.store.put(station_id, rules)
        self._forget_station(station_id)

    async def delete(self, station_id: str) -> None:
        await self.store.delete(station_id)
        self._forget_station(station_id)

    async def get_default(self, version: str) -> ActionRules:
        return await self.store.get_default(version)

    async def put_default(self, version: str, rules: ActionRules) -> None:
        await self.store.put_default(version, rules)
        self._entries.clear()  # a default applies to every station without a rule of its own
