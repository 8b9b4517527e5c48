"""Registration: what a BootNotification answers, and whether a station that is not
Accepted may send a Call (B02.FR.09 for Pending, B03.FR.07 for Rejected)."""

from __future__ import annotations

from typing import Any

from csms.envelope import ADMITTED_AS
from csms.rpc import RpcError
from manager.context import CallContext, OcppError
from services.models import (
    BootInfo,
    RegistrationStatus,
)

__all__ = [
    "PENDING_ALLOWED",
    "boot",
    "current_registration",
    "policy_registration",
    "registration_refusal",
    "require_accepted",
]

_POLICY = {
    "accept": RegistrationStatus.ACCEPTED,
    "pending": RegistrationStatus.PENDING,
    "reject": RegistrationStatus.REJECTED,
}


def policy_registration(ctx: CallContext) -> RegistrationStatus:
    """Registration for a station the operator did not provision.

    What the gateway's admission gave it (``ADMITTED_AS`` on the envelope: Pending under
    ``unknown_stations = "pending"``, Accepted in first-try mode) wins; without that mark,
    the ``unknown_stations`` setting decides.
    """
    admitted = ctx.meta.get(ADMITTED_AS)
    if admitted in (RegistrationStatus.PENDING, RegistrationStatus.ACCEPTED):
        return RegistrationStatus(admitted)
    return _POLICY[ctx.settings.unknown_stations]


async def boot(ctx: CallContext, info: BootInfo) -> dict[str, Any]:
    """Decide and record a BootNotification; the response payload (same shape in 1.6 and 2.0.1).

    A provisioned station (``known``) gets its operator-set registration; any other station
    gets the ``unknown_stations`` policy. ``interval`` is the heartbeat interval when
    Accepted and otherwise the minimum wait before the next BootNotification, as both
    versions define it.
    """
    record = await ctx.services.stations.get(ctx.station_id)
    if record is not None and record.known:
        registration = record.registration
    else:
        registration = policy_registration(ctx)
    now = ctx.now_iso()
    await ctx.services.stations.record_boot(ctx.station_id, ctx.version, info, registration, now)
    accepted = registration is RegistrationStatus.ACCEPTED
    interval = ctx.settings.heartbeat_interval if accepted else ctx.settings.pending_retry_interval
    ctx.log.info(
        "boot_notification",
        registration=registration.value,
        known=record is not None and record.known,
        vendor=info.vendor,
        model=info.model,
        firmware=info.firmware_version,
        reason=info.reason,
    )
    return {"status": registration.value, "currentTime": now, "interval": interval}


async def current_registration(ctx: CallContext) -> RegistrationStatus:
    """The registration the station currently holds.

    The answer to its last BootNotification (or the operator's later change); for a station
    that never booted and was not provisioned, what the policy would answer.
    """
    record = await ctx.services.stations.get(ctx.station_id)
    if record is None or (not record.known and record.last_boot_at is None):
        return policy_registration(ctx)
    return record.registration


PENDING_ALLOWED = frozenset(
    {
        "BootNotification",
        "Heartbeat",
        "StatusNotification",
        "FirmwareStatusNotification",
        "SignedFirmwareStatusNotification",
        "PublishFirmwareStatusNotification",
        "DiagnosticsStatusNotification",
        "LogStatusNotification",
        "SignCertificate",
        "NotifyReport",
    }
)
"""What a Pending station may send: BootNotification and the messages the CSMS can have
asked for while it is Pending.

OCPP 2.0.1 B02 (tested by TC_B_30_CSMS, requirement B02.FR.09) lets a Pending station send
only BootNotification and messages triggered by TriggerMessage, GetBaseReport or GetReport;
OCPP 1.6 §4.2 likewise allows only what the Central System triggered. A request does not say
whether it was triggered, so the CSMS allows every action a trigger can produce in either
version: TriggerMessage's Heartbeat, StatusNotification, FirmwareStatusNotification,
DiagnosticsStatusNotification (1.6), LogStatusNotification, the Sign*Certificate triggers
(sent as SignCertificate), PublishFirmwareStatusNotification, the 1.6 security extension's
SignedFirmwareStatusNotification, and NotifyReport (GetBaseReport / GetReport: what the
CSMS configures a Pending station with).

Refused although a trigger could produce them: MeterValues and TransactionEvent. A station
that is not registered has no transactions to report on, and they carry energy readings that
are billed; with them, Authorize, StartTransaction, StopTransaction, DataTransfer, NotifyEvent
and SecurityEventNotification are SecurityError (an unregistered client must not be able to
probe which tokens are valid or start billed transactions).
"""


def registration_refusal(registration: RegistrationStatus, action: str) -> OcppError | None:
    """The CallError a station holding ``registration`` gets for a Call of ``action``, or
    None when the Call may be handled. Pure: the router can ask before schema validation.

    - Accepted: nothing is refused.
    - Pending: anything outside :data:`PENDING_ALLOWED` is ``SecurityError`` (B02.FR.09).
    - Rejected: anything but BootNotification is ``SecurityError`` (2.0.1 B03.FR.07; 1.6
      forbids a Rejected charge point from sending anything else).
    """
    if registration is RegistrationStatus.ACCEPTED or action == "BootNotification":
        return None
    if registration is RegistrationStatus.PENDING:
        if action in PENDING_ALLOWED:
            return None
        return OcppError(
            RpcError.SECURITY_ERROR,
            f"station is pending: {action} is not accepted before registration",
            {"registration": registration.value},
        )
    return OcppError(
        RpcError.SECURITY_ERROR,
        "station is not accepted",
        {"registration": registration.value},
    )


async def require_accepted(ctx: CallContext) -> None:
    """Raise :func:`registration_refusal`'s SecurityError for this Call, if any.

    Every station Call handler but BootNotification's calls this first, so the rule holds
    even where nothing checked the registration before the handler ran.
    """
    refusal = registration_refusal(await current_registration(ctx), ctx.action)
    if refusal is not None:
        ctx.log.info(
            "call_refused_by_registration",
            registration=refusal.details.get("registration"),
        )
        raise refusal
