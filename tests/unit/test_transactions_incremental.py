"""Energy and cost kept as running aggregates give the same numbers and answers as computing
them from scratch over every reading (tests/unit/energy_reference.py, the algorithm used
before), for any session: readings in any order, duplicates, retried events, register
resets, absurd values, unreadable times, ends that leave readings out. And a message costs
the same whatever the length of its transaction.

The store-level property runs here on the in-memory store and, through :func:`check_session`,
on Redis in tests/integration/test_transactions_incremental_redis.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from csms.config import Settings, TariffSettings
from csms.versions import OcppVersion
from manager import v16, v201
from manager.common import pricing, transactions
from operations.call_maker import CallMaker
from services import energy, rules
from services.interfaces import TransactionStore
from services.memory import MemoryTransactionStore
from services.models import (
    EnergyReading,
    Transaction,
    TransactionChange,
    TransactionState,
)
from services.tariff import ConfiguredTariff
from tests.unit import energy_reference as reference
from tests.unit import handler_harness
from tests.unit.energy_reference import Session

TARIFF = TariffSettings(
    energy_price_per_kwh=Decimal("0.37"),
    time_price_per_hour=Decimal("1.10"),
    session_fee=Decimal("0.50"),
)

# --- generated sessions ----------------------------------------------------------------------

_UNREADABLE = ("2026-13-40T25:00:00Z", "garbage")


@st.composite
def reading_times(draw: st.DrawFn) -> str:
    """Mostly one of a few minutes (so duplicates and ties happen), sometimes the same moment
    written another way, rarely an unreadable time."""
    minute = draw(st.integers(0, 40))
    form = draw(st.sampled_from(["Z"] * 12 + ["+00:00", "ms", "unreadable"]))
    if form == "unreadable":
        return draw(st.sampled_from(_UNREADABLE))
    if form == "ms":
        return f"2026-01-15T12:{minute:02d}:00.000Z"
    return f"2026-01-15T12:{minute:02d}:00{form}"


register_values = st.one_of(
    st.integers(0, 60).map(lambda n: n * 250.0),  # a register going up, or reset to a low value
    st.floats(0, 20_000, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.1, 0.2, 0.3, 0.7, 1e12, 1e30, -5.0, 1e15, 3e-9]),  # rounding, absurd
)


@st.composite
def readings(draw: st.DrawFn) -> EnergyReading:
    context = draw(st.sampled_from([None, None, "Sample.Periodic", "Transaction.Begin"]))
    return EnergyReading(at=draw(reading_times()), wh=draw(register_values), context=context)


batches = st.lists(readings(), max_size=4)

operations = st.one_of(
    st.tuples(st.just("readings"), batches),
    st.tuples(st.just("event"), st.integers(0, 8), batches),
    st.tuples(st.just("start"), register_values),
    st.tuples(st.just("stop"), register_values),
    st.tuples(st.just("end"), reading_times()),
    st.tuples(st.just("facts"), st.sampled_from(["Charging", "EVConnected"])),
)

sessions = st.lists(operations, max_size=25)

# --- the store-level property ----------------------------------------------------------------


@dataclass
class Reference:
    """The transaction as it was kept before: facts, and every reading in one list."""

    readings: tuple[EnergyReading, ...] = ()
    seq_nos: frozenset[int] = frozenset()


def _change(op: tuple[Any, ...], base: Transaction) -> Transaction | TransactionChange:
    kind = op[0]
    if kind in ("readings", "event"):
        return TransactionChange(base, tuple(op[-1]))
    if kind == "start":
        if base.meter_start_wh is not None:  # as the handlers do: set once
            return base
        return msgspec.structs.replace(base, meter_start_wh=op[1])
    if kind == "stop":
        return msgspec.structs.replace(base, meter_stop_wh=op[1])
    if kind == "end":
        return msgspec.structs.replace(base, state=TransactionState.ENDED, ended_at=op[1])
    return msgspec.structs.replace(base, charging_state=op[1])


async def check_session(store: TransactionStore, ops: list[tuple[Any, ...]]) -> None:
    """Run ``ops`` on one transaction of ``store`` and compare, after each, everything the
    aggregates answer with the reference computed from scratch."""
    tariff = ConfiguredTariff(TARIFF)
    station, tx_id = "CS:1", "tx/1"
    new = Transaction(
        station_id=station,
        transaction_id=tx_id,
        version="ocpp2.0.1",
        started_at="2026-01-15T12:05:00Z",
    )
    ref = Reference()
    tx = await store.update(station, tx_id, lambda _: new)
    for op in ops:

        def change(current: Transaction | None, op: tuple[Any, ...] = op) -> Any:
            return _change(op, current or new)

        if op[0] == "event":
            update = await store.update_event(station, tx_id, op[1], change)
            assert update.applied == (op[1] not in ref.seq_nos)
            if update.applied:
                ref.seq_nos |= {op[1]}
                ref.readings = reference.merge_readings(ref.readings, op[2])
            tx = update.after
        else:
            tx = await store.update(station, tx_id, change)
            if op[0] == "readings":
                ref.readings = reference.merge_readings(ref.readings, op[1])
        assert await store.get(station, tx_id) == tx
        session = Session.of(tx, ref.readings)
        assert tx.energy_wh == reference.energy_wh(session), op
        assert tariff.quote(tx) == reference.quote(session, TARIFF), op
        at = "2026-01-15T13:00:00Z"
        ended = transactions.superseded(tx, by="next", at=at)
        assert ended.ended_at == reference.superseded_end(session, at)
        assert tx.last_seq_no == max(ref.seq_nos, default=None)
    assert await store.readings(station, tx_id) == list(ref.readings)
    assert await store.seq_nos(station, tx_id) == sorted(ref.seq_nos)
    assert (tx.meter.count if tx.meter else 0) == len(ref.readings)


@settings(max_examples=300, deadline=None)
@given(sessions)
def test_store_aggregates_equal_a_recomputation_from_scratch(ops: list[tuple[Any, ...]]) -> None:
    asyncio.run(check_session(MemoryTransactionStore(), ops))


@given(st.lists(batches, max_size=12), st.sampled_from([None, 500.0, -1.0]))
def test_aggregate_advanced_or_rebuilt_equals_one_over_all_readings(
    arrivals: list[list[EnergyReading]], start: float | None
) -> None:
    """Whatever the path (constant-time advance, or a rebuild when a reading is not later
    than every stored one), the aggregate equals the one computed over all the readings at
    once, and the readings come out in the order the reference merge kept them in."""
    tx = Transaction(station_id="CS1", transaction_id="1", version="ocpp1.6", meter_start_wh=start)
    stored: list[EnergyReading] = []
    merged: tuple[EnergyReading, ...] = ()
    summary = None
    for batch in arrivals:
        plan = energy.advance(summary, tx, batch)
        if plan is None:
            plan = energy.rebuild(stored, tx, batch, summary)
        stored.extend(plan.added)
        summary = plan.summary
        merged = reference.merge_readings(merged, batch)
        assert summary == energy.summarize(stored, tx, summary.arrival_from)
        assert energy.ordered_readings(stored, summary.arrival_from) == list(merged)


def test_the_running_sum_is_the_one_sum_gives() -> None:
    """Across register resets the positive steps are summed exactly as ``sum`` sums them on
    this interpreter (3.12+ compensates rounding)."""
    values = [0.0, 0.1, 0.0, 0.2, 0.0, 0.3, 1e11, 0.0, 1.0, 0.0, 1e-3, 0.0, 0.7]
    tx = Transaction(station_id="CS1", transaction_id="1", version="ocpp1.6")
    at = [f"2026-01-15T12:{m:02d}:00Z" for m in range(len(values))]
    counted = energy.summarized(
        tx, [EnergyReading(at=a, wh=v) for a, v in zip(at, values, strict=True)]
    )
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert counted.energy_wh == sum(s for s in steps if s > 0)


# --- whole sessions through the handlers -----------------------------------------------------


class Recording(CallMaker):
    """Records the CostUpdated calls the handlers send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def call(
        self,
        station_id: str,
        version: str,
        action: str,
        payload: dict[str, Any],
        *,
        meta: dict[str, str] | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
    ) -> str:
        self.sent.append((action, payload))
        return f"c{len(self.sent)}"


class V201(handler_harness.Harness):
    version = OcppVersion.OCPP201
    handlers = v201.HANDLERS
    station = "CS-1"


class V16(handler_harness.Harness):
    version = OcppVersion.OCPP16
    handlers = v16.HANDLERS
    station = "CP-1"


async def _harness(kind: type[handler_harness.Harness]) -> handler_harness.Harness:
    # Every energy change sends a CostUpdated here: the property compares exactly that.
    harness = kind(Settings(tariff=TARIFF, running_cost_interval=0))
    harness.calls = Recording()
    await harness.provision()
    await harness.seed_tokens()
    return harness


def _at(minute: int) -> str:
    return f"2025-01-15T10:{minute:02d}:00Z"


meter_samples = st.lists(
    st.tuples(
        st.integers(0, 50),
        st.one_of(
            st.integers(0, 40).map(lambda n: n * 500),
            st.floats(0, 30_000, allow_nan=False, allow_infinity=False),
            st.sampled_from([-5, 1e30, 2e12, 0.1, 0.2]),
        ),
    ),
    max_size=3,
)


def _meter_values_201(
    samples: Sequence[tuple[int, float]], context: str | None = None
) -> list[Any]:
    values = []
    for minute, wh in samples:
        register: dict[str, Any] = {"value": wh, "unitOfMeasure": {"unit": "Wh"}}
        if context is not None:
            register["context"] = context
        values.append({"timestamp": _at(minute), "sampledValue": [register]})
    return values


@st.composite
def v201_sessions(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The events of one 2.0.1 transaction (Started, Updated..., Ended, maybe events numbered
    after the end), delivered in any order, some twice, some marked offline."""
    updates = draw(st.integers(0, 6))
    end_minute = draw(st.integers(10, 55))
    events: list[dict[str, Any]] = []
    begin = draw(st.lists(st.integers(0, 30_000), max_size=1))
    started: dict[str, Any] = {
        "eventType": "Started",
        "timestamp": _at(0),
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "TX-1", "chargingState": "EVConnected"},
        "idToken": {"idToken": "TAG1", "type": "ISO14443"},
        "evse": {"id": 1, "connectorId": 1},
    }
    if begin:
        started["meterValue"] = _meter_values_201([(0, begin[0])], "Transaction.Begin")
    events.append(started)
    for seq_no in range(1, updates + 1):
        samples = draw(meter_samples)
        event: dict[str, Any] = {
            "eventType": "Updated",
            "timestamp": _at(min(seq_no * 5, 59)),
            "triggerReason": "MeterValuePeriodic",
            "seqNo": seq_no,
            "transactionInfo": {"transactionId": "TX-1", "chargingState": "Charging"},
        }
        if samples:
            event["meterValue"] = _meter_values_201(samples)
        events.append(event)
    ended: dict[str, Any] = {
        "eventType": "Ended",
        "timestamp": _at(end_minute),
        "triggerReason": "EVDeparted",
        "seqNo": updates + 1,
        "transactionInfo": {"transactionId": "TX-1", "stoppedReason": "EVDisconnected"},
    }
    stop = draw(st.lists(st.integers(0, 40_000), max_size=1))
    if stop:
        ended["meterValue"] = _meter_values_201([(end_minute, stop[0])], "Transaction.End")
    events.append(ended)
    for seq_no in range(updates + 2, updates + 2 + draw(st.integers(0, 2))):
        samples = draw(meter_samples)
        late = {
            "eventType": "Updated",
            "timestamp": _at(draw(st.integers(0, 59))),
            "triggerReason": "MeterValuePeriodic",
            "seqNo": seq_no,
            "transactionInfo": {"transactionId": "TX-1"},
            "meterValue": _meter_values_201(samples or [(59, 99_000)]),
        }
        events.append(late)
    deliveries = draw(st.permutations(events + draw(st.lists(st.sampled_from(events)))))
    return [{**event, "offline": True} if draw(st.booleans()) else event for event in deliveries]


async def check_v201_session(deliveries: list[dict[str, Any]]) -> None:
    h = await _harness(V201)
    calls = h.calls
    assert isinstance(calls, Recording)
    merged: tuple[EnergyReading, ...] = ()
    applied: set[int] = set()
    end_seq_no: int | None = None
    for payload in deliveries:
        before = Session.of(await h.tx("TX-1"), merged) if applied else None
        sent = len(calls.sent)
        response = await h.call("TransactionEvent", payload)
        seq_no, kind = payload["seqNo"], payload["eventType"]
        new = seq_no not in applied
        if new:
            applied.add(seq_no)
            if end_seq_no is None or seq_no <= end_seq_no or kind == "Ended":
                screened = energy.screen_meter_values(payload.get("meterValue", []), h.version)
                merged = reference.merge_readings(merged, screened.readings)
                if kind == "Ended":
                    end_seq_no = seq_no
        tx = await h.tx("TX-1")
        session = Session.of(tx, merged)
        assert tx.energy_wh == reference.energy_wh(session)
        if tx.state is TransactionState.ENDED:
            assert tx.cost == reference.quote(session, TARIFF)
        if kind == "Ended":
            assert response.get("totalCost") == pricing.cost_number(tx.cost)
        else:
            assert "totalCost" not in response
        # The running cost goes out exactly when the recomputed energy changed.
        expected = (
            new
            and kind == "Updated"
            and not payload.get("offline")
            and tx.state is TransactionState.ACTIVE
            and session.energy_wh is not None
            and (before is None or reference.energy_wh(before) != reference.energy_wh(session))
        )
        if expected:
            total = pricing.cost_number(reference.quote(session, TARIFF))
            assert calls.sent[sent:] == [
                ("CostUpdated", {"totalCost": total, "transactionId": "TX-1"})
            ]
        else:
            assert calls.sent[sent:] == []
    assert await h.services.transactions.readings("CS-1", "TX-1") == list(merged)
    assert await h.services.transactions.seq_nos("CS-1", "TX-1") == sorted(applied)


@settings(max_examples=150, deadline=None)
@given(v201_sessions())
def test_v201_sessions_equal_a_recomputation_from_scratch(deliveries: list[dict[str, Any]]) -> None:
    asyncio.run(check_v201_session(deliveries))


def _meter_values_16(samples: Sequence[tuple[int, float]]) -> list[Any]:
    return [
        {"timestamp": _at(minute), "sampledValue": [{"value": repr(float(wh)), "unit": "Wh"}]}
        for minute, wh in samples
    ]


@st.composite
def v16_sessions(draw: st.DrawFn) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    """A 1.6 StartTransaction's meterStart, then MeterValues and StopTransaction messages (some
    repeated, readings in any time order, MeterValues after the stop)."""
    meter_start = draw(st.sampled_from([0, 1000, 12_345, -5, 10**13]))
    end_minute = draw(st.integers(10, 55))
    stop = {
        "meterStop": draw(st.sampled_from([0, 5000, 20_000, 40_000, -1, 10**13])),
        "timestamp": _at(end_minute),
        "reason": "EVDisconnected",
    }
    data = draw(meter_samples)
    if data:
        stop["transactionData"] = _meter_values_16(data)
    messages: list[tuple[str, dict[str, Any]]] = []
    for _ in range(draw(st.integers(0, 6))):
        samples = draw(meter_samples)
        messages.append(("MeterValues", {"connectorId": 1, "meterValue": samples}))
    messages.insert(draw(st.integers(0, len(messages))), ("StopTransaction", stop))
    repeats = draw(st.lists(st.sampled_from(messages), max_size=3))
    ordered = [*messages, *repeats]
    return meter_start, [
        (action, {**p, "meterValue": _meter_values_16(p["meterValue"])})
        if action == "MeterValues" and p["meterValue"]
        else (action, p)
        for action, p in ordered
        if action != "MeterValues" or p["meterValue"]
    ]


async def check_v16_session(meter_start: int, messages: list[tuple[str, dict[str, Any]]]) -> None:
    h = await _harness(V16)
    answer = await h.call(
        "StartTransaction",
        {"connectorId": 1, "idTag": "TAG1", "meterStart": meter_start, "timestamp": _at(0)},
    )
    tx_id = str(answer["transactionId"])
    merged: tuple[EnergyReading, ...] = ()
    start = energy.screen_wh(meter_start)
    if isinstance(start, float):
        begin = EnergyReading(at=_at(0), wh=start, context="Transaction.Begin")
        merged = reference.merge_readings(merged, [begin])
    for action, payload in messages:
        before = await h.tx(tx_id)
        response = await h.call(action, {**payload, "transactionId": int(tx_id)})
        screened = energy.screen_meter_values(
            payload.get("meterValue") or payload.get("transactionData") or [], h.version
        )
        if before.state is TransactionState.ACTIVE:
            readings = list(screened.readings)
            if action == "StopTransaction":
                stop = energy.screen_wh(payload["meterStop"])
                if isinstance(stop, float):
                    end = EnergyReading(at=payload["timestamp"], wh=stop, context="Transaction.End")
                    readings.append(end)
            merged = reference.merge_readings(merged, readings)
        tx = await h.tx(tx_id)
        session = Session.of(tx, merged)
        assert tx.energy_wh == reference.energy_wh(session)
        if tx.state is TransactionState.ENDED:
            assert tx.cost == reference.quote(session, TARIFF)
        assert response == {} or action == "StopTransaction"
    assert await h.services.transactions.readings("CP-1", tx_id) == list(merged)


@settings(max_examples=150, deadline=None)
@given(v16_sessions())
def test_v16_sessions_equal_a_recomputation_from_scratch(
    session: tuple[int, list[tuple[str, dict[str, Any]]]],
) -> None:
    asyncio.run(check_v16_session(*session))


# --- constant cost per message ---------------------------------------------------------------


@contextmanager
def counted_time_parses() -> Iterator[list[int]]:
    """Count every call of services.rules.parse_time, wherever it was imported."""
    original = rules.parse_time
    count = [0]

    def parse_time(value: str | None) -> Any:
        count[0] += 1
        return original(value)

    patched = [
        module
        for module in list(sys.modules.values())
        if module is not None and getattr(module, "parse_time", None) is original
    ]
    for module in patched:
        module.parse_time = parse_time  # type: ignore[attr-defined]
    try:
        yield count
    finally:
        for module in patched:
            module.parse_time = original  # type: ignore[attr-defined]


def periodic(seq_no: int) -> dict[str, Any]:
    """The seq_no-th periodic TransactionEvent of a long session (one reading a second)."""
    moment = dt.datetime(2025, 1, 15, 10, tzinfo=dt.UTC) + dt.timedelta(seconds=seq_no)
    at = moment.isoformat().replace("+00:00", "Z")
    return {
        "eventType": "Updated",
        "timestamp": at,
        "triggerReason": "MeterValuePeriodic",
        "seqNo": seq_no,
        "transactionInfo": {"transactionId": "LONG", "chargingState": "Charging"},
        "meterValue": [
            {
                "timestamp": at,
                "sampledValue": [{"value": 1000 + 3 * seq_no, "unitOfMeasure": {"unit": "Wh"}}],
            }
        ],
    }


async def long_session_costs(h: handler_harness.Harness, probes: set[int]) -> dict[int, Any]:
    """Run a 1,000-reading 2.0.1 session; at each seqNo in ``probes``, the time parses and
    rebuilds that event cost and the size of the stored record after it."""
    start = {
        "eventType": "Started",
        "timestamp": "2025-01-15T10:00:00Z",
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "LONG"},
        "idToken": {"idToken": "TAG1", "type": "ISO14443"},
        "evse": {"id": 1, "connectorId": 1},
    }
    await h.call("TransactionEvent", start)
    rebuilds = [0]
    original = energy.rebuild

    def rebuild(*args: Any, **kwargs: Any) -> energy.Advanced:
        rebuilds[0] += 1
        return original(*args, **kwargs)

    found: dict[int, Any] = {}
    energy.rebuild = rebuild
    try:
        for seq_no in range(1, 1001):
            with counted_time_parses() as parses:
                before = rebuilds[0]
                await h.call("TransactionEvent", periodic(seq_no))
            if seq_no in probes:
                tx = await h.tx("LONG")
                found[seq_no] = (parses[0], rebuilds[0] - before, len(msgspec.json.encode(tx)))
    finally:
        energy.rebuild = original
    return found


async def test_the_1000th_meter_value_costs_what_the_1st_does() -> None:
    h = await _harness(V201)
    costs = await long_session_costs(h, {1, 1000})
    assert costs[1][:2] == costs[1000][:2]  # the same time parses, no rebuild
    assert costs[1000][1] == 0
    # The record does not grow with the readings (only numbers get more digits).
    assert costs[1000][2] < min(costs[1][2] + 48, 1024)
    tx = await h.tx("LONG")
    assert tx.energy_wh == 2997.0 and tx.meter is not None and tx.meter.count == 1000
