"""Pricing: the TariffService prices an ended transaction once (again only when what the
price depends on changed), and the running cost of an active one goes to the station in
CostUpdated; pricing never fails a station's message."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import msgspec

from manager.context import CallContext
from services import StoreUnavailable, rules
from services.models import (
    Cost,
    Transaction,
    TransactionState,
)

__all__ = [
    "COST_UPDATED",
    "cost_number",
    "price",
    "pricing_basis",
    "running_cost_due",
    "send_running_cost",
    "settle",
]


def pricing_basis(tx: Transaction | None) -> tuple[Any, ...]:
    """What the price of a transaction depends on: when it changes, an ended transaction is
    priced again; when it does not (a replay, a reading after the end), its cost stays."""
    if tx is None:
        return ()
    return (tx.state, tx.energy_wh, tx.started_at, tx.ended_at, tx.merged_into)


async def price(ctx: CallContext, tx: Transaction) -> Cost | None:
    """The TariffService's price for ``tx``, or None (logged) when it fails.

    A pricing failure must not turn into an InternalError the station would retry forever:
    the message is answered without a cost and the next delivery tries again. A store outage
    (``StoreUnavailable``) still propagates, as everywhere.
    """
    try:
        return await ctx.services.tariff.price(tx)
    except StoreUnavailable:
        raise
    except Exception as exc:
        ctx.log.error(
            "transaction_pricing_failed",
            transaction_id=tx.transaction_id,
            energy_wh=tx.energy_wh,
            error=repr(exc),
        )
        return None


def cost_number(cost: Cost | None) -> float | None:
    """A cost's total as an OCPP number (``totalCost``); None when it is not a finite one."""
    if cost is None:
        return None
    try:
        total = Decimal(cost.total)
    except (ArithmeticError, ValueError, TypeError):
        return None
    number = float(total) if total.is_finite() else math.nan
    return number if math.isfinite(number) else None


_PRICING_ATTEMPTS = 3


async def settle(ctx: CallContext, tx: Transaction, *, reprice: bool = False) -> Transaction:
    """Price an ended transaction and store the cost on it; returns the stored transaction.

    An already priced transaction keeps its cost unless ``reprice`` (its pricing basis
    changed after it was priced), so a replayed stop never prices differently. The cost is
    stored only if the transaction did not change while it was priced; otherwise the newer
    state is priced. A record that only points at the transaction it was merged into
    (``merged_into``) is not priced.
    """
    for _ in range(_PRICING_ATTEMPTS):
        if tx.state is not TransactionState.ENDED or tx.merged_into is not None:
            return tx
        if tx.cost is not None and not reprice:
            return tx
        cost = await price(ctx, tx)
        if cost is None:
            return tx
        basis = msgspec.structs.replace(tx, cost=None)

        def set_cost(
            current: Transaction | None,
            basis: Transaction = basis,
            cost: Cost = cost,
        ) -> Transaction:
            if current is None:
                return msgspec.structs.replace(basis, cost=cost)
            if msgspec.structs.replace(current, cost=None) != basis:
                return current
            return msgspec.structs.replace(current, cost=cost)

        stored = await ctx.services.transactions.update(tx.station_id, tx.transaction_id, set_cost)
        if stored.cost == cost and msgspec.structs.replace(stored, cost=None) == basis:
            ctx.log.info(
                "transaction_priced",
                transaction_id=tx.transaction_id,
                energy_wh=stored.energy_wh,
                total=cost.total,
                currency=cost.currency,
            )
            return stored
        tx, reprice = stored, True
    ctx.log.warning("transaction_pricing_raced", transaction_id=tx.transaction_id)
    return tx


COST_UPDATED = "CostUpdated"


def running_cost_due(before: Transaction | None, tx: Transaction, interval: float) -> bool:
    """Whether the reading just applied to ``tx`` starts a new ``interval`` of meter time
    since the transaction began, so one CostUpdated goes out per interval whatever the
    station's meter-value rate (a station sampling every second must not double the traffic).

    Decided from the readings' own times, so any manager decides the same for the same
    reading and nothing has to remember when the last update went out. ``interval <= 0``:
    every reading that changes the energy; unreadable times: send (never silence by error).
    """
    if interval <= 0:
        return True
    now = tx.meter.counted_at if tx.meter is not None else None
    previous = before.meter.counted_at if before is not None and before.meter else None
    if previous is None:
        return True
    origin = tx.started_at or (tx.meter.first_at if tx.meter is not None else None)
    times = [rules.parse_time(value) for value in (origin, previous, now)]
    if any(moment is None for moment in times):
        return True
    start, before_at, now_at = times
    assert start is not None and before_at is not None and now_at is not None
    slot_before = (before_at - start).total_seconds() // interval
    return (now_at - start).total_seconds() // interval > slot_before


async def send_running_cost(ctx: CallContext, tx: Transaction) -> float | None:
    """Send the running cost of an active 2.0.1 transaction in a CostUpdated call (I02).

    TransactionEventResponse's ``totalCost`` "SHALL only be sent when charging has ended",
    so during a transaction the cost goes in the CSMS-initiated CostUpdatedRequest instead.
    Priced by the TariffService on the current readings; nothing is sent when pricing fails
    or the bus refuses the call (logged): the station's message is answered regardless.
    Returns the total sent.
    """
    total = cost_number(await price(ctx, tx))
    if total is None:
        return None
    try:
        await ctx.calls.call(
            ctx.station_id,
            ctx.version,
            COST_UPDATED,
            {"totalCost": total, "transactionId": tx.transaction_id},
            meta={"transaction_id": tx.transaction_id},
        )
    except Exception as exc:
        ctx.log.warning("running_cost_not_sent", transaction_id=tx.transaction_id, error=repr(exc))
        return None
    ctx.log.debug(
        "running_cost_sent",
        transaction_id=tx.transaction_id,
        energy_wh=tx.energy_wh,
        total=total,
    )
    return total
