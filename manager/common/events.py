"""State-change events as the managers learn them: one function per kind (docs/events.md).

Handlers call these after their store writes and before they answer, so the event is in
the log before the station hears back; a store outage fails the append like the writes
(StoreUnavailable: the station gets an InternalError and retries). A message handled twice
(a redelivery, a retry after a lost answer) may append an event twice: each carries a
``key`` naming the fact, which consumers deduplicate on.

With ``events_to_mqtt`` each appended event is also published on
``{prefix}/state/{kind}/{station}`` (best effort: a broker without subscribers or an outage
is only logged; the log is the record).
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec
import structlog

from csms.bus import BusUnavailable
from csms.config import Settings
from csms.envelope import ConnectionEvent, ConnectionEventKind, Envelope
from csms.topics import Topics
from manager.common import pricing
from manager.context import CallContext
from operations.call_maker import CallMaker
from services import Services
from services.events import Event, EventKind, event_of, utc_now
from services.models import (
    Authorization,
    AuthorizationStatus,
    BootInfo,
    ConnectorStatus,
    Transaction,
    TransactionState,
)

__all__ = [
    "Sink",
    "authorization_refused",
    "call_outcome",
    "connection",
    "connector_status",
    "diagnostics_status",
    "firmware_status",
    "log_status",
    "security_event",
    "security_profile_reached",
    "station_booted",
    "transaction_ended",
    "transaction_started",
    "transaction_updated",
    "updated_due",
]

_log = structlog.get_logger("manager.events")


class Sink(Protocol):
    """Where events go: a handler's :class:`~manager.context.CallContext` or the
    worker's :class:`~manager.router.Deps` (the services, the settings, the bus)."""

    @property
    def services(self) -> Services: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def calls(self) -> CallMaker: ...


async def _emit(
    sink: Sink,
    kind: EventKind,
    at: str,
    station_id: str,
    data: dict[str, Any],
    key: str,
) -> Event:
    event = await sink.services.events.append(event_of(kind, at, station_id, data, key))
    if sink.settings.events_to_mqtt:
        topics = Topics(prefix=sink.settings.topic_prefix, group=sink.settings.shared_group)
        try:
            await sink.calls.bus.publish(
                topics.state(kind.value, station_id), msgspec.json.encode(event)
            )
        except BusUnavailable as exc:  # NoSubscribers included: nobody listens right now
            _log.debug("event not published on the bus", kind=kind.value, error=str(exc))
    return event


def _call_key(ctx: CallContext, kind: EventKind) -> str:
    """The key of an event a station Call causes: the Call on its connection (a redelivery
    or a retry on the same socket repeats both)."""
    return f"{ctx.station_id}:{ctx.connection or ''}:{ctx.message_id}:{kind.value}"


# -- connections ------------------------------------------------------------------------------


async def connection(sink: Sink, event: ConnectionEvent, at: str, *, current: bool) -> None:
    """``station.connected`` / ``station.disconnected``; ``current`` is False for the close
    of a connection a newer one had already replaced (the station stays online)."""
    connected = event.kind is ConnectionEventKind.CONNECTED
    kind = EventKind.STATION_CONNECTED if connected else EventKind.STATION_DISCONNECTED
    data: dict[str, Any] = {
        "version": event.version,
        "gateway": event.gateway,
        "connection": event.connection,
    }
    if not connected:
        data["reason"] = event.reason
        data["current"] = current
    key = f"{event.station}:{event.connection}:{kind.value}"
    await _emit(sink, kind, at, event.station, data, key)


async def security_profile_reached(sink: Sink, event: ConnectionEvent, at: str) -> None:
    """The station connected authenticated at its pending security-profile upgrade (OCPP
    2.0.1 A05): raise its registered profile (only ever up) and append
    ``station.security_profile_raised``. From now on a lower-profile connection is refused."""
    raised = await sink.services.stations.raise_security_profile(
        event.station, event.security_profile_reached
    )
    if raised is None:
        return  # settled already (a repeated event, or the operator changed the profile)
    _log.info(
        "security_profile_raised",
        station=event.station,
        security_profile=raised,
        connection=event.connection,
    )
    kind = EventKind.STATION_SECURITY_PROFILE_RAISED
    data: dict[str, Any] = {
        "security_profile": raised,
        "version": event.version,
        "gateway": event.gateway,
        "connection": event.connection,
    }
    key = f"{event.station}:{event.connection}:{kind.value}"
    await _emit(sink, kind, at, event.station, data, key)


# -- what stations report ---------------------------------------------------------------------


async def station_booted(ctx: CallContext, info: BootInfo, answer: dict[str, Any]) -> None:
    """``station.booted``: the BootNotification as answered (``answer``'s status)."""
    data = {
        "version": ctx.version,
        "status": answer.get("status"),
        "vendor": info.vendor,
        "model": info.model,
        "serial_number": info.serial_number,
        "firmware_version": info.firmware_version,
        "reason": info.reason,
    }
    kind = EventKind.STATION_BOOTED
    await _emit(ctx, kind, ctx.now_iso(), ctx.station_id, data, _call_key(ctx, kind))


async def connector_status(ctx: CallContext, status: ConnectorStatus) -> None:
    """``connector.status`` as the station reported it."""
    data = {
        "evse_id": status.evse_id,
        "connector_id": status.connector_id,
        "status": status.status,
        "error_code": status.error_code,
        "info": status.info,
    }
    key = f"{ctx.station_id}:{status.evse_id}:{status.connector_id}:{status.status}:{status.at}"
    await _emit(ctx, EventKind.CONNECTOR_STATUS, status.at, ctx.station_id, data, key)


async def security_event(ctx: CallContext, payload: dict[str, Any]) -> None:
    """``security.event``: a SecurityEventNotification (both versions' shape)."""
    data = {"type": payload["type"], "tech_info": payload.get("techInfo")}
    kind = EventKind.SECURITY_EVENT
    at = payload.get("timestamp") or ctx.now_iso()
    await _emit(ctx, kind, at, ctx.station_id, data, _call_key(ctx, kind))


async def _status(ctx: CallContext, kind: EventKind, payload: dict[str, Any]) -> None:
    data = {"status": payload["status"], "request_id": payload.get("requestId")}
    await _emit(ctx, kind, ctx.now_iso(), ctx.station_id, data, _call_key(ctx, kind))


async def firmware_status(ctx: CallContext, payload: dict[str, Any]) -> None:
    """``firmware.status``: FirmwareStatusNotification (1.6 also the signed one)."""
    await _status(ctx, EventKind.FIRMWARE_STATUS, payload)


async def log_status(ctx: CallContext, payload: dict[str, Any]) -> None:
    """``log.status``: LogStatusNotification."""
    await _status(ctx, EventKind.LOG_STATUS, payload)


async def diagnostics_status(ctx: CallContext, payload: dict[str, Any]) -> None:
    """``diagnostics.status``: 1.6 DiagnosticsStatusNotification."""
    await _status(ctx, EventKind.DIAGNOSTICS_STATUS, payload)


async def authorization_refused(
    ctx: CallContext,
    decision: Authorization | None,
    id_token: str | None,
    id_token_type: str | None = None,
    *,
    transaction_id: str | None = None,
) -> None:
    """``authorization.refused`` when ``decision`` is not Accepted (nothing otherwise): an
    Authorize, or a token presented in a transaction message."""
    if decision is None or decision.status is AuthorizationStatus.ACCEPTED:
        return
    data = {
        "id_token": id_token,
        "id_token_type": id_token_type,
        "status": decision.status.value,
        "action": ctx.action,
        "transaction_id": transaction_id,
    }
    kind = EventKind.AUTHORIZATION_REFUSED
    await _emit(ctx, kind, ctx.now_iso(), ctx.station_id, data, _call_key(ctx, kind))


# -- transactions -----------------------------------------------------------------------------


def _cost(tx: Transaction) -> tuple[str | None, str | None]:
    return (tx.cost.total, tx.cost.currency) if tx.cost is not None else (None, None)


async def transaction_started(ctx: CallContext, tx: Transaction) -> None:
    """``transaction.started``: the CSMS first learnt of ``tx``."""
    data = {
        "transaction_id": tx.transaction_id,
        "version": tx.version,
        "evse_id": tx.evse_id,
        "connector_id": tx.connector_id,
        "id_token": tx.id_token,
        "id_token_type": tx.id_token_type,
        "started_at": tx.started_at,
        "meter_start_wh": tx.meter_start_wh,
        "remote_start_id": tx.remote_start_id,
    }
    at = tx.started_at or ctx.now_iso()
    key = f"{ctx.station_id}:{tx.transaction_id}:started"
    await _emit(ctx, EventKind.TRANSACTION_STARTED, at, ctx.station_id, data, key)


def updated_due(ctx: CallContext, before: Transaction | None, tx: Transaction) -> bool:
    """Whether a reading just applied to an active ``tx`` gets a ``transaction.updated``:
    the energy changed and :func:`manager.common.pricing.running_cost_due` says a new
    ``running_cost_interval`` of meter time began (the rule CostUpdated follows)."""
    if tx.state is not TransactionState.ACTIVE or tx.energy_wh is None:
        return False
    if before is not None and before.energy_wh == tx.energy_wh:
        return False
    return pricing.running_cost_due(before, tx, ctx.settings.running_cost_interval)


async def transaction_updated(
    ctx: CallContext, before: Transaction | None, tx: Transaction
) -> None:
    """``transaction.updated`` with the energy and the running cost, when
    :func:`updated_due` (at most once per interval of meter time; no store write else)."""
    if not updated_due(ctx, before, tx):
        return
    cost = await pricing.price(ctx, tx)
    data = {
        "transaction_id": tx.transaction_id,
        "energy_wh": tx.energy_wh,
        "cost": cost.total if cost is not None else None,
        "currency": cost.currency if cost is not None else None,
    }
    counted_at = tx.meter.counted_at if tx.meter is not None else None
    at = counted_at or ctx.now_iso()
    key = f"{ctx.station_id}:{tx.transaction_id}:updated:{counted_at}"
    await _emit(ctx, EventKind.TRANSACTION_UPDATED, at, ctx.station_id, data, key)


async def transaction_ended(ctx: CallContext, tx: Transaction) -> None:
    """``transaction.ended``: ``tx`` as it ended, priced."""
    cost, currency = _cost(tx)
    data = {
        "transaction_id": tx.transaction_id,
        "evse_id": tx.evse_id,
        "connector_id": tx.connector_id,
        "id_token": tx.id_token,
        "started_at": tx.started_at,
        "ended_at": tx.ended_at,
        "stop_reason": tx.stop_reason,
        "energy_wh": tx.energy_wh,
        "cost": cost,
        "currency": currency,
    }
    at = tx.ended_at or ctx.now_iso()
    key = f"{ctx.station_id}:{tx.transaction_id}:ended"
    await _emit(ctx, EventKind.TRANSACTION_ENDED, at, ctx.station_id, data, key)


# -- CSMS calls -------------------------------------------------------------------------------


async def call_outcome(sink: Sink, envelope: Envelope) -> None:
    """``call.outcome``: how a CSMS call ended (``result``, ``error``, ``timeout``,
    ``undelivered``), whoever sent it. A failure is logged, not raised: nobody is waiting
    for this answer, and the call record holds the outcome too."""
    request = envelope.request
    action = request.action if request is not None else envelope.action
    origin = request.meta.get("origin") if request is not None and request.meta else None
    data = {
        "action": action,
        "outcome": envelope.kind.value,
        "message_id": envelope.message_id,
        "version": envelope.version,
        "error_code": envelope.error_code,
        "error_description": envelope.error_description,
        "origin": origin,
    }
    key = f"{envelope.station}:{envelope.message_id}:{EventKind.CALL_OUTCOME.value}"
    try:
        await _emit(sink, EventKind.CALL_OUTCOME, utc_now(), envelope.station, data, key)
    except Exception as exc:
        _log.warning(
            "call outcome event not appended",
            station=envelope.station,
            message_id=envelope.message_id,
            error=str(exc),
        )
