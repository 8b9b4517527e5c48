"""OCPP 1.6 StartTransaction (§4.8): assign a transactionId and authorize the idTag."""

from __future__ import annotations

from typing import Any

from manager.common import authorization, events, registration, transactions
from manager.context import CallContext
from services.models import EnergyReading, Transaction, TransactionChange

ACTION = "StartTransaction"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Store the transaction under a new fleet-unique transactionId and answer idTagInfo.

    The id is assigned and the transaction stored whatever the idTag's status: the charge
    point has already started, and with a non-Accepted status it is the charge point that
    stops the transaction (then sends StopTransaction for this id). An Accepted idTag that
    already has an active transaction on another connector is answered ConcurrentTx; an
    active one on this very connector is a transaction whose stop was lost, not a second
    session.

    A StartTransaction the charge point sends again (its answer was lost; 1.6 charge points
    retry transaction messages) describes the same start as an active transaction on that
    connector: it gets that transaction's id rather than a second transaction. Any other
    transaction still active on the connector lost its stop (a reboot, a lost message): it
    is closed as superseded by the new one and priced
    (:func:`manager.common.transactions.supersede`), so it never blocks the driver.

    An implausible meterStart (negative, beyond ``MAX_REGISTER_WH``) is logged and left out
    of the energy; the start is still answered (:func:`manager.common.transactions.meter_register`).
    """
    await registration.require_accepted(ctx)
    connector_id: int = payload["connectorId"]
    id_tag: str = payload["idTag"]
    started_at: str = payload["timestamp"]
    meter_start = transactions.meter_register(
        ctx, payload["meterStart"], field="meterStart", transaction_id=None
    )

    def same_connector(tx: Transaction) -> bool:
        return tx.station_id == ctx.station_id and tx.connector_id == connector_id

    decision = await authorization.authorize_start(ctx, id_tag, None, same=same_connector)
    for active in await ctx.services.transactions.active(ctx.station_id):
        if (
            same_connector(active)
            and active.id_token == id_tag
            and active.started_at == started_at
            and active.meter_start_wh == meter_start
        ):
            ctx.log.info("transaction_start_resent", transaction_id=active.transaction_id)
            return {
                "transactionId": int(active.transaction_id),
                "idTagInfo": authorization.id_tag_info(decision),
            }
    transaction_id = await ctx.services.transactions.next_transaction_id()
    tx_key = str(transaction_id)

    def create(current: Transaction | None) -> Transaction | TransactionChange:
        tx = Transaction(
            station_id=ctx.station_id,
            transaction_id=tx_key,
            version=ctx.version,
            evse_id=connector_id,
            connector_id=connector_id,
            id_token=id_tag,
            group_id=decision.group_id,
            started_at=started_at,
            meter_start_wh=meter_start,
            reservation_id=payload.get("reservationId"),
        )
        if meter_start is None:
            return tx
        begin = EnergyReading(at=started_at, wh=meter_start, context="Transaction.Begin")
        return transactions.with_readings(tx, [begin])

    started = await ctx.services.transactions.update(ctx.station_id, tx_key, create)
    await transactions.supersede(ctx, evse_id=connector_id, by=tx_key, at=started_at)
    await events.transaction_started(ctx, started)
    await events.authorization_refused(ctx, decision, id_tag, transaction_id=tx_key)
    ctx.log.info(
        "transaction_started",
        transaction_id=transaction_id,
        connector_id=connector_id,
        id_tag=id_tag,
        status=decision.status.value,
        meter_start_wh=meter_start,
    )
    return {"transactionId": transaction_id, "idTagInfo": authorization.id_tag_info(decision)}
