"""Action rules: the pure decisions (resolution, deny wins, BootNotification, validation), the
store contract (run on Redis by tests/integration/test_action_rules_redis.py) and the
per-process cache (its TTL on a fake clock, invalidation, outages, bounds)."""

from __future__ import annotations

import pytest

from csms.bus.memory import MemoryBroker
from csms.envelope import decode_envelope
from csms.topics import Topics
from operations.call_maker import CallMaker
from services.action_rules import (
    ALLOW_ALL,
    NO_RULES,
    ActionDenied,
    ActionList,
    ActionRules,
    ActionRuleStore,
    CachedActionRules,
    EffectiveRules,
    InvalidRules,
    MemoryActionRuleStore,
    Side,
    Source,
    check_csms_call,
    check_rules,
    effective,
)
from services.interfaces import StoreUnavailable

V16, V201 = "ocpp1.6", "ocpp2.0.1"
STATION = Side.STATION_CALLS
CSMS = Side.CSMS_CALLS


def rule(allow: list[str] | None = None, deny: list[str] | tuple[str, ...] = ()) -> ActionList:
    return ActionList(allow=frozenset(allow) if allow is not None else None, deny=frozenset(deny))


DENY_DATA = ActionRules(station_calls=rule(deny=["DataTransfer"]))
ONLY_RESET = ActionRules(csms_calls=rule(allow=["Reset", "TriggerMessage"]))


# --- decisions -----------------------------------------------------------------------------


def test_without_rules_everything_is_allowed_both_ways() -> None:
    rules = effective(NO_RULES, NO_RULES)
    assert rules == EffectiveRules(ALLOW_ALL, ALLOW_ALL, Source.NONE, Source.NONE)
    assert rules.refusal(STATION, "DataTransfer") is None
    assert rules.refusal(CSMS, "Reset") is None


def test_deny_wins_over_allow_and_allow_means_only_these() -> None:
    both = rule(allow=["Reset", "DataTransfer"], deny=["DataTransfer"])
    assert both.refusal("DataTransfer") == "deny"
    assert both.refusal("Reset") is None
    assert both.refusal("UnlockConnector") == "allow"
    assert rule(allow=[]).refusal("Reset") == "allow"  # an empty allow list allows nothing


def test_the_stations_rule_overrides_the_default_per_direction() -> None:
    default = ActionRules(station_calls=rule(deny=["Heartbeat"]), csms_calls=rule(deny=["Reset"]))
    rules = effective(DENY_DATA, default)
    assert rules.side(STATION) == (rule(deny=["DataTransfer"]), Source.STATION)
    assert rules.refusal(STATION, "Heartbeat") is None  # the station's own rule replaced it
    assert rules.refusal(STATION, "DataTransfer") == "deny"
    assert rules.side(CSMS) == (rule(deny=["Reset"]), Source.DEFAULT)  # no own csms rule
    assert rules.refusal(CSMS, "Reset") == "deny"


def test_boot_notification_is_never_refused_to_a_station_whatever_is_stored() -> None:
    stored = ActionRules(station_calls=rule(allow=["Heartbeat"], deny=["BootNotification"]))
    rules = effective(stored, NO_RULES)
    assert rules.refusal(STATION, "BootNotification") is None
    assert rules.refusal(STATION, "StatusNotification") == "allow"


def test_check_rules_names_the_list_and_the_unknown_action() -> None:
    with pytest.raises(InvalidRules) as raised:
        check_rules(ActionRules(csms_calls=rule(allow=["Reset", "Rest"])), [V201])
    assert (raised.value.code, raised.value.field, raised.value.action) == (
        "unknown_action",
        "csms_calls.allow",
        "Rest",
    )
    assert "'Rest'" in str(raised.value) and V201 in str(raised.value)
    # An action of one version only is unknown to the other.
    start_201 = ActionRules(csms_calls=rule(deny=["RequestStartTransaction"]))
    check_rules(start_201, [V201])
    check_rules(start_201, [V16, V201])
    with pytest.raises(InvalidRules) as raised:
        check_rules(start_201, [V16])
    assert raised.value.field == "csms_calls.deny"


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        (ActionRules(station_calls=rule(deny=["BootNotification"])), "station_calls.deny"),
        (ActionRules(station_calls=rule(allow=["Heartbeat"])), "station_calls.allow"),
        (ActionRules(station_calls=rule(allow=[])), "station_calls.allow"),
    ],
)
def test_a_rule_that_would_keep_a_station_from_booting_is_refused(
    rules: ActionRules, field: str
) -> None:
    with pytest.raises(InvalidRules) as raised:
        check_rules(rules, [V16, V201])
    assert raised.value.code == "boot_notification_denied" and raised.value.field == field
    assert "never register again" in str(raised.value)


def test_rules_a_station_can_live_with_pass() -> None:
    check_rules(ActionRules(station_calls=rule(allow=["BootNotification", "Heartbeat"])), [V201])
    check_rules(ActionRules(csms_calls=rule(allow=[])), [V16])  # nothing may be sent to it
    check_rules(DENY_DATA, [V16])
    check_rules(NO_RULES, [V16])


async def test_check_csms_call_raises_what_the_rules_say() -> None:
    store = MemoryActionRuleStore()
    await store.put("CS1", ONLY_RESET)
    await check_csms_call(store, "CS1", V201, "TriggerMessage")
    with pytest.raises(ActionDenied) as raised:
        await check_csms_call(store, "CS1", V201, "UnlockConnector")
    denied = raised.value
    assert (denied.station_id, denied.side, denied.action) == ("CS1", CSMS, "UnlockConnector")
    assert (denied.rule, denied.source) == ("allow", Source.STATION)
    assert str(denied) == "action UnlockConnector is not in the allow list for this station"
    await check_csms_call(store, "CS2", V201, "UnlockConnector")  # another station: no rules


async def test_a_call_maker_with_rules_publishes_nothing_they_deny() -> None:
    store = MemoryActionRuleStore()
    await store.put("CS1", ONLY_RESET)
    broker = MemoryBroker()
    async with broker.client() as gateway, broker.client() as manager:
        await gateway.subscribe(Topics().outbound(V201, "CS1"))
        maker = CallMaker(manager, Topics(), rules=store)
        with pytest.raises(ActionDenied):
            await maker.call("CS1", V201, "CostUpdated", {"totalCost": 1.0, "transactionId": "T"})
        await maker.call("CS1", V201, "TriggerMessage", {"requestedMessage": "Heartbeat"})
        received = await anext(gateway.messages())
        assert decode_envelope(received.payload).action == "TriggerMessage"  # the first one sent


# --- the store contract (memory here, Redis in tests/integration) --------------------------


@pytest.fixture
def action_rules() -> ActionRuleStore:
    return MemoryActionRuleStore()


async def test_store_a_station_without_rules_has_none(action_rules: ActionRuleStore) -> None:
    assert await action_rules.get("CS1") == NO_RULES
    assert await action_rules.get_default(V201) == NO_RULES
    assert await action_rules.effective("CS1", V201) == effective(NO_RULES, NO_RULES)


async def test_store_put_replaces_the_stations_rules(action_rules: ActionRuleStore) -> None:
    both = ActionRules(
        station_calls=rule(allow=["BootNotification", "Heartbeat"], deny=["Heartbeat"]),
        csms_calls=rule(deny=["Reset"]),
    )
    await action_rules.put("CS/1 ä", both)
    assert await action_rules.get("CS/1 ä") == both
    await action_rules.put("CS/1 ä", ONLY_RESET)
    assert await action_rules.get("CS/1 ä") == ONLY_RESET  # the station_calls rule is gone
    assert await action_rules.get("CS/1") == NO_RULES
    await action_rules.put("CS/1 ä", NO_RULES)
    assert await action_rules.get("CS/1 ä") == NO_RULES


async def test_store_delete_forgets_a_stations_rules(action_rules: ActionRuleStore) -> None:
    await action_rules.put("CS1", DENY_DATA)
    await action_rules.put("CS2", DENY_DATA)
    await action_rules.delete("CS1")
    await action_rules.delete("CS1")  # again: nothing to do
    assert await action_rules.get("CS1") == NO_RULES
    assert await action_rules.get("CS2") == DENY_DATA


async def test_store_defaults_are_per_version(action_rules: ActionRuleStore) -> None:
    await action_rules.put_default(V16, DENY_DATA)
    await action_rules.put_default(V201, ONLY_RESET)
    assert await action_rules.get_default(V16) == DENY_DATA
    assert await action_rules.get_default(V201) == ONLY_RESET
    await action_rules.put_default(V201, ActionRules(station_calls=rule(deny=["Heartbeat"])))
    assert await action_rules.get_default(V201) == ActionRules(
        station_calls=rule(deny=["Heartbeat"])
    )
    await action_rules.put_default(V16, NO_RULES)
    assert await action_rules.get_default(V16) == NO_RULES


async def test_store_effective_combines_own_rules_and_the_versions_default(
    action_rules: ActionRuleStore,
) -> None:
    default = ActionRules(station_calls=rule(deny=["Heartbeat"]), csms_calls=rule(deny=["Reset"]))
    await action_rules.put_default(V201, default)
    await action_rules.put("CS1", DENY_DATA)
    own = await action_rules.effective("CS1", V201)
    assert own == effective(DENY_DATA, default)
    assert own.station_source is Source.STATION and own.csms_source is Source.DEFAULT
    other = await action_rules.effective("CS2", V201)
    assert other == effective(NO_RULES, default)
    assert (await action_rules.effective("CS1", V16)).csms_source is Source.NONE


# --- the per-process cache -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(MemoryActionRuleStore):
    """Counts reads of effective rules; ``down`` makes them fail like a Redis outage."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.down = False

    async def effective(self, station_id: str, version: str) -> EffectiveRules:
        self.reads += 1
        if self.down:
            raise StoreUnavailable("redis down")
        return await super().effective(station_id, version)


async def test_a_change_made_elsewhere_applies_after_the_ttl() -> None:
    store, clock = CountingStore(), Clock()
    cache = CachedActionRules(store, 5.0, clock=clock)
    assert (await cache.effective("CS1", V201)).refusal(STATION, "DataTransfer") is None
    await store.put("CS1", DENY_DATA)  # another process changes the rule in the store
    clock.now += 4.9
    assert (await cache.effective("CS1", V201)).refusal(STATION, "DataTransfer") is None
    clock.now += 0.2
    assert (await cache.effective("CS1", V201)).refusal(STATION, "DataTransfer") == "deny"
    assert store.reads == 2


async def test_a_cached_check_reads_no_store() -> None:
    store, clock = CountingStore(), Clock()
    cache = CachedActionRules(store, 5.0, clock=clock)
    for _ in range(100):
        await cache.effective("CS1", V201)
        await cache.effective("CS2", V16)
    assert store.reads == 2  # one per station and version per TTL, not one per message
    assert (await cache.effective("CS1", V16)) == effective(NO_RULES, NO_RULES)
    assert store.reads == 3  # versions are cached apart


async def test_writes_through_the_cache_apply_at_once_in_this_process() -> None:
    store, clock = CountingStore(), Clock()
    cache = CachedActionRules(store, 5.0, clock=clock)
    await cache.effective("CS1", V201)
    await cache.effective("CS2", V201)
    await cache.put("CS1", DENY_DATA)
    assert (await cache.effective("CS1", V201)).refusal(STATION, "DataTransfer") == "deny"
    assert await cache.get("CS1") == DENY_DATA
    await cache.delete("CS1")
    assert (await cache.effective("CS1", V201)).refusal(STATION, "DataTransfer") is None
    await cache.put_default(V201, ONLY_RESET)  # applies to every station without own rules
    assert (await cache.effective("CS2", V201)).refusal(CSMS, "UnlockConnector") == "allow"
    assert await cache.get_default(V201) == ONLY_RESET


async def test_an_outage_serves_the_expired_entry_for_another_ttl() -> None:
    store, clock = CountingStore(), Clock()
    cache = CachedActionRules(store, 5.0, clock=clock)
    await store.put("CS1", DENY_DATA)
    await cache.effective("CS1", V201)
    store.down = True
    clock.now += 6
    assert (await cache.effective("CS1", V201)).refusal(STATION, "DataTransfer") == "deny"
    reads = store.reads
    assert (await cache.effective("CS1", V201)).refusal(STATION, "DataTransfer") == "deny"
    assert store.reads == reads  # one failed read per TTL, not one per message
    with pytest.raises(StoreUnavailable):
        await cache.effective("CS9", V201)  # nothing to fall back on
    store.down = False
    clock.now += 6
    await cache.effective("CS1", V201)
    assert store.reads == reads + 2


async def test_ttl_zero_reads_the_store_every_time() -> None:
    store = CountingStore()
    cache = CachedActionRules(store, 0, clock=Clock())
    await cache.effective("CS1", V201)
    await cache.effective("CS1", V201)
    assert store.reads == 2


async def test_the_cache_is_bounded_and_drops_the_oldest_entry() -> None:
    store, clock = CountingStore(), Clock()
    cache = CachedActionRules(store, 5.0, clock=clock, max_entries=2)
    await cache.effective("CS1", V201)
    await cache.effective("CS2", V201)
    await cache.effective("CS3", V201)  # CS1 goes
    await cache.effective("CS3", V201)
    await cache.effective("CS2", V201)
    assert store.reads == 3
    await cache.effective("CS1", V201)
    assert store.reads == 4
