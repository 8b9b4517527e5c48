"""Transactions: adding energy readings, ending, the data-quality screen of meter values
(absurd values are dropped and logged, never refused), and superseding a transaction whose
stop was lost when a new one starts on its EVSE.

The energy itself is kept by the transaction store, from the readings a change adds and the
facts it sets (meter start and stop, the end): see
:meth:`services.interfaces.TransactionStore.update`."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from manager.common.pricing import settle
from manager.context import CallContext
from services import energy
from services.models import (
    EnergyReading,
    Transaction,
    TransactionChange,
    TransactionState,
)
from services.rules import parse_time

__all__ = [
    "SUPERSEDED_REASON",
    "earlier",
    "ended",
    "log_rejected",
    "meter_register",
    "supersede",
    "superseded",
    "with_readings",
]


def earlier(first: str | None, second: str | None) -> str | None:
    """The earlier of two OCPP timestamps (compared as instants, returned as received)."""
    if first is None or second is None:
        return second if first is None else first
    a, b = parse_time(first), parse_time(second)
    if a is None or b is None:
        return first
    return second if b < a else first


def with_readings(tx: Transaction, readings: Iterable[EnergyReading]) -> TransactionChange:
    """``tx`` with energy-register ``readings`` to add (a re-delivered reading changes
    nothing); the store counts them into the energy."""
    return TransactionChange(tx, tuple(readings))


def ended(
    tx: Transaction,
    *,
    at: str,
    reason: str | None,
    meter_stop_wh: float | None = None,
) -> Transaction:
    """``tx`` in state Ended (the store recomputes its energy). The stop reason defaults to
    Local, as both versions define it for a stop without a reason. The station's own stop
    replaces what the CSMS assumed when it closed a superseded transaction."""
    return msgspec.structs.replace(
        tx,
        state=TransactionState.ENDED,
        ended_at=at,
        stop_reason=reason or "Local",
        meter_stop_wh=meter_stop_wh if meter_stop_wh is not None else tx.meter_stop_wh,
        superseded_by=None,
    )


# --- data quality ----------------------------------------------------------------------------


def log_rejected(
    ctx: CallContext, transaction_id: str | None, rejected: Iterable[energy.RejectedReading]
) -> None:
    """One data-quality warning per energy-register value left out of the energy.

    Structured (station, transaction, value, reason) so a faulty meter can be found; the
    message itself is answered normally (see :mod:`services.energy`).
    """
    for item in rejected:
        ctx.log.warning(
            "meter_value_rejected",
            transaction_id=transaction_id,
            value=item.value,
            reason=item.reason,
            at=item.at,
            max_wh=energy.MAX_REGISTER_WH,
        )


def meter_register(
    ctx: CallContext, value: int, *, field: str, transaction_id: str | None
) -> float | None:
    """A 1.6 ``meterStart`` / ``meterStop`` (a JSON integer of any size) in Wh, or None when
    it is implausible (negative or beyond :data:`services.energy.MAX_REGISTER_WH`).

    The message is still answered normally: StopTransaction must be accepted whatever it
    carries (the transaction has ended at the charge point), and a CallError to
    StartTransaction would only have the charge point retry the same value. The value is
    left out of the energy and logged as a data-quality warning.
    """
    wh = energy.screen_wh(value)
    if isinstance(wh, float):
        return wh
    ctx.log.warning(
        "meter_value_rejected",
        transaction_id=transaction_id,
        field=field,
        value=energy.display_value(value),
        reason=wh,
        max_wh=energy.MAX_REGISTER_WH,
    )
    return None


# --- superseded transactions -----------------------------------------------------------------

SUPERSEDED_REASON = "Other"
"""Stop reason of a transaction the CSMS closed because another one started on its EVSE:
``Other`` exists in both versions' reason enums; ``superseded_by`` says what happened."""


def superseded(tx: Transaction, *, by: str, at: str) -> Transaction:
    """``tx`` closed by the CSMS because ``by`` started on its EVSE at ``at``.

    It ends at its last known moment (its latest reading, else its start; ``at`` when it
    has neither), so the time between that and the new start, when nothing is known of it,
    is not billed. The energy is what its readings show.
    """
    start = parse_time(tx.started_at)
    latest = tx.meter.last_at if tx.meter is not None else None
    moment = parse_time(latest)
    if latest is not None and moment is not None and (start is None or moment >= start):
        end = latest
    else:
        end = tx.started_at or at
    return msgspec.structs.replace(
        tx,
        state=TransactionState.ENDED,
        ended_at=end,
        stop_reason=SUPERSEDED_REASON,
        superseded_by=by,
    )


def _started_by(tx: Transaction, at: str) -> bool:
    """True when ``tx`` started no later than ``at`` (both readable)."""
    started, moment = parse_time(tx.started_at), parse_time(at)
    return started is not None and moment is not None and started <= moment


async def supersede(
    ctx: CallContext, *, evse_id: int, by: str, at: str, only_earlier: bool = False
) -> list[Transaction]:
    """Close every other active transaction of this station on ``evse_id`` (1.6: connector):
    an EVSE runs one transaction at a time, so one that is still active when ``by`` starts
    there lost its stop (a reboot, a lost message). Each is ended (:func:`superseded`),
    priced and logged; returns them.

    ``only_earlier`` (for starts the station queued while offline, which may arrive out of
    order) closes only transactions that started no later than ``at``.
    """
    closed: list[Transaction] = []
    for old in await ctx.services.transactions.active(ctx.station_id):
        if old.transaction_id == by or old.evse_id != evse_id:
            continue
        if only_earlier and not _started_by(old, at):
            continue

        def close(current: Transaction | None, old: Transaction = old) -> Transaction:
            if current is None or current.state is TransactionState.ENDED:
                return current or old
            if current.evse_id != evse_id:
                return current
            return superseded(current, by=by, at=at)

        tx = await ctx.services.transactions.update(ctx.station_id, old.transaction_id, close)
        if tx.superseded_by != by:
            continue
        ctx.log.warning(
            "transaction_superseded",
            transaction_id=tx.transaction_id,
            superseded_by=by,
            evse_id=evse_id,
            ended_at=tx.ended_at,
            energy_wh=tx.energy_wh,
        )
        closed.append(await settle(ctx, tx))
    return closed
