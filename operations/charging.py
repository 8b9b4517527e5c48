"""Remote start and stop with one shape for both OCPP versions.

A remote start is more than its call: operators want the transaction it started. So
:func:`remote_start` sends the version's call and, once the station accepted, waits until
the transaction appears in the store:

- 2.0.1 (F01): RequestStartTransaction with a fresh ``remoteStartId``; the station's
  TransactionEvent carries the same id (``transactionInfo.remoteStartId``), which the
  TransactionEvent handler stores on the transaction.
- 1.6 (5.11): RemoteStartTransaction with the idTag (and connector); the transaction is the
  active one of that idTag (on that connector) that was not active before the call.

:func:`remote_stop` sends 2.0.1 RequestStopTransaction / 1.6 RemoteStopTransaction for a
transaction the store knows.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
from dataclasses import dataclass
from typing import Any

from csms.errors import InvalidRequest
from csms.versions import spec
from operations.calls import CallOutcome, CallSender, Outcome
from services import Services
from services.models import Transaction, TransactionState

__all__ = ["RemoteStart", "StartStatus", "TransactionUnknown", "remote_start", "remote_stop"]

POLL_INTERVAL = 0.2
"""Seconds between two looks at the store while waiting for a started transaction."""


class TransactionUnknown(InvalidRequest):
    """The store has no such transaction (or it has ended): nothing to stop."""


class StartStatus(enum.StrEnum):
    STARTED = "started"
    """Accepted, and the transaction it started is known (``transaction_id``)."""
    ACCEPTED = "accepted"
    """Accepted, but no transaction appeared within the wait (the driver may not have
    plugged in yet: stations wait for the cable, up to their ConnectionTimeOut)."""
    REJECTED = "rejected"
    """The station answered Rejected."""
    FAILED = "failed"
    """No answer (see ``outcome``: offline, timeout, undelivered, CallError, no outcome)."""


@dataclass(frozen=True, slots=True)
class RemoteStart:
    status: StartStatus
    outcome: CallOutcome
    transaction_id: str | None = None
    remote_start_id: int | None = None
    """2.0.1 only: the id the transaction will carry."""


async def remote_start(
    sender: CallSender,
    services: Services,
    station_id: str,
    version: str,
    *,
    id_token: str,
    token_type: str = "Central",
    evse_id: int | None = None,
    connector_id: int | None = None,
    wait: float = 60.0,
    call_timeout: float | None = None,
) -> RemoteStart:
    """Start a transaction for ``id_token`` and wait up to ``wait`` seconds for it.

    ``evse_id`` is 2.0.1's EVSE, ``connector_id`` 1.6's connector (either may be omitted:
    the station picks). ``token_type`` is the 2.0.1 IdTokenEnumType (``Central`` for a
    CSMS-issued token). Raises :class:`~operations.calls.InvalidCall` for a payload the
    schema refuses (e.g. a 1.6 idTag over 20 characters).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    generation = spec(version).generation
    remote_start_id: int | None = None
    before: set[str] = set()
    if generation == 1:
        action = "RemoteStartTransaction"
        payload: dict[str, Any] = {"idTag": id_token}
        if connector_id is not None:
            payload["connectorId"] = connector_id
        before = {tx.transaction_id for tx in await services.transactions.active(station_id)}
    else:
        action = "RequestStartTransaction"
        remote_start_id = secrets.randbelow(2**31 - 1) + 1
        payload = {
            "idToken": {"idToken": id_token, "type": token_type},
            "remoteStartId": remote_start_id,
        }
        if evse_id is not None:
            payload["evseId"] = evse_id
    outcome = await sender.send(station_id, version, action, payload, timeout=call_timeout)
    if outcome.outcome is not Outcome.RESULT:
        return RemoteStart(StartStatus.FAILED, outcome, remote_start_id=remote_start_id)
    answer = outcome.payload or {}
    if answer.get("status") != "Accepted":
        return RemoteStart(StartStatus.REJECTED, outcome, remote_start_id=remote_start_id)
    if isinstance(answer.get("transactionId"), str):
        # 2.0.1: the station had already started a transaction for this token (F01.FR.26).
        return RemoteStart(
            StartStatus.STARTED, outcome, answer["transactionId"], remote_start_id=remote_start_id
        )
    while True:
        found = await _started(services, station_id, generation, remote_start_id, before, id_token)
        found = found if generation != 1 or connector_id is None else _on(found, connector_id)
        if found is not None:
            return RemoteStart(
                StartStatus.STARTED, outcome, found.transaction_id, remote_start_id=remote_start_id
            )
        if loop.time() >= deadline:
            return RemoteStart(StartStatus.ACCEPTED, outcome, remote_start_id=remote_start_id)
        await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - loop.time())))


def _on(tx: Transaction | None, connector_id: int) -> Transaction | None:
    return tx if tx is not None and tx.connector_id == connector_id else None


async def _started(
    services: Services,
    station_id: str,
    generation: int,
    remote_start_id: int | None,
    before: set[str],
    id_token: str,
) -> Transaction | None:
    """The transaction the remote start began, if the store has it yet."""
    if generation == 1:
        for tx in await services.transactions.active(station_id):
            if tx.transaction_id not in before and tx.id_token == id_token:
                return tx
        return None
    page = await services.transactions.list_transactions(station_id=station_id, limit=20)
    return next((tx for tx in page.items if tx.remote_start_id == remote_start_id), None)


async def remote_stop(
    sender: CallSender,
    services: Services,
    station_id: str,
    version: str,
    transaction_id: str,
    *,
    call_timeout: float | None = None,
) -> CallOutcome:
    """Ask the station to stop one of its active transactions; returns the call's outcome
    (the transaction ends when the station's Ended / StopTransaction arrives).

    Raises :class:`TransactionUnknown` when the store has no active transaction by that id.
    """
    tx = await services.transactions.get(station_id, transaction_id)
    if tx is None or tx.state is TransactionState.ENDED:
        raise TransactionUnknown(
            f"station {station_id!r} has no active transaction {transaction_id!r}"
        )
    if spec(version).generation == 1:
        try:
            number = int(transaction_id)
        except ValueError:
            raise TransactionUnknown(
                f"{transaction_id!r} is not a 1.6 transaction id (an integer)"
            ) from None
        return await sender.send(
            station_id,
            version,
            "RemoteStopTransaction",
            {"transactionId": number},
            timeout=call_timeout,
        )
    return await sender.send(
        station_id,
        version,
        "RequestStopTransaction",
        {"transactionId": transaction_id},
        timeout=call_timeout,
    )
