"""Station certificates of both versions: SignCertificate, CertificateSigned, renewal.

A station's SignCertificate (2.0.1 A02/A03, 1.6 security extension) is answered from the
CSR check alone (:func:`services.certificates.check_csr`); signing happens afterwards, off
the station's Call, by the configured :class:`~services.certificates.CertificateSigner`, and
the chain goes to the station in a CertificateSigned call. The station's answer to it is
recorded as an :class:`~services.station_state.IssuedCertificate` (serial, type, not-after,
fingerprint), which the renewal check reads: ``certificate_renew_days`` before not-after an
online station is asked (TriggerMessage / 1.6 ExtendedTriggerMessage) to send a new CSR,
once per certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from csms.versions import spec
from manager.common import notifications
from manager.common.registration import require_accepted
from manager.context import CallContext, ResultContext, iso, utc_now
from services import rules
from services.certificates import (
    CHARGING_STATION_CERTIFICATE,
    V2G_CERTIFICATE,
    CsrRefused,
    check_csr,
    describe_chain,
)
from services.pnc import wrap
from services.station_state import IssuedCertificate

if TYPE_CHECKING:
    from manager.router import Deps

__all__ = [
    "CERTIFICATE_SIGNED",
    "SignDecision",
    "certificate_signed_result",
    "renew_due_certificates",
    "renewal_round",
    "sign_certificate",
]

CERTIFICATE_SIGNED = "CertificateSigned"
_TRIGGERS = {
    # 2.x: TriggerMessage's MessageTriggerEnumType per certificate type.
    2: {
        CHARGING_STATION_CERTIFICATE: "SignChargingStationCertificate",
        V2G_CERTIFICATE: "SignV2GCertificate",
    },
    # 1.6 security extension: ExtendedTriggerMessage knows only the charge point certificate.
    1: {CHARGING_STATION_CERTIFICATE: "SignChargePointCertificate"},
}
_TRIGGER_ACTION = {2: "TriggerMessage", 1: "ExtendedTriggerMessage"}
_log = structlog.get_logger("manager.certificates")
_deliveries: set[asyncio.Task[None]] = set()
"""Signings in progress (a reference, so they are not garbage-collected mid-way)."""
_last_rounds: dict[str, int] = {}
"""The last renewal round each manager instance took part in."""


@dataclass(frozen=True, slots=True)
class SignDecision:
    """The SignCertificate answer: status, and for a refusal a reason code (2.0.1
    ``statusInfo.reasonCode``, at most 20 characters) and the reason in words."""

    status: str
    reason_code: str | None = None
    reason: str | None = None


async def sign_certificate(
    ctx: CallContext, csr: str, certificate_type: str, *, wrapped: bool = False
) -> SignDecision:
    """Check the CSR and decide the answer; when Accepted, sign it and send the chain in
    CertificateSigned once the answer is out (``certificate_signed_delay``). ``wrapped``:
    the CSR came in a 1.6 Plug & Charge DataTransfer, so the chain goes back in one too."""
    await require_accepted(ctx)
    signer = ctx.services.certificate_signer
    if signer is None:
        reason = "no certificate signer configured (ca_certificate_file / ca_key_file or "
        reason += "certificate_signer)"
        ctx.log.warning("sign_certificate_rejected", reason=reason)
        return SignDecision("Rejected", "NoCA", reason)
    record = await ctx.services.stations.get(ctx.station_id)
    names = {ctx.station_id}
    if record is not None and record.certificate_identity:
        names.add(record.certificate_identity)
    try:
        check_csr(csr, names=names, organization=ctx.settings.certificate_organization)
    except CsrRefused as exc:
        ctx.log.warning(
            "sign_certificate_rejected", reason=str(exc), certificate_type=certificate_type
        )
        return SignDecision("Rejected", "InvalidCSR", str(exc))
    ctx.log.info("sign_certificate_accepted", certificate_type=certificate_type)
    task = asyncio.create_task(_deliver(ctx, csr, certificate_type, wrapped=wrapped))
    _deliveries.add(task)
    task.add_done_callback(_deliveries.discard)
    return SignDecision("Accepted")


async def _deliver(
    ctx: CallContext, csr: str, certificate_type: str, *, wrapped: bool = False
) -> None:
    """Sign and send CertificateSigned (``wrapped``: the 2.0.1 one in a 1.6 DataTransfer);
    a failure is logged (the station will ask again)."""
    signer = ctx.services.certificate_signer
    assert signer is not None
    await asyncio.sleep(ctx.settings.certificate_signed_delay)
    try:
        chain = await signer.sign(csr, ctx.station_id, certificate_type)
        payload: dict[str, Any] = {"certificateChain": chain}
        action = CERTIFICATE_SIGNED
        if wrapped or spec(ctx.version).generation >= 2:
            payload["certificateType"] = certificate_type
        if wrapped:
            payload, action = wrap(CERTIFICATE_SIGNED, payload), "DataTransfer"
        await ctx.calls.call(
            ctx.station_id,
            ctx.version,
            action,
            payload,
            meta={"certificate_type": certificate_type},
        )
    except Exception as exc:
        ctx.log.error(
            "certificate_not_delivered", certificate_type=certificate_type, error=repr(exc)
        )
        return
    ctx.log.info("certificate_signed_sent", certificate_type=certificate_type, wrapped=wrapped)


async def certificate_signed_result(ctx: ResultContext) -> None:
    """Record the certificate a CertificateSigned carried with the station's answer."""
    chain = ctx.request.payload.get("certificateChain", "")
    certificate_type = (
        ctx.request.payload.get("certificateType")
        or ctx.request.meta.get("certificate_type")
        or CHARGING_STATION_CERTIFICATE
    )
    if notifications.result_failed(ctx) or ctx.payload is None:
        status = ctx.error_code or ("timeout" if ctx.timed_out else "undelivered")
    else:
        status = ctx.payload["status"]
    try:
        facts = describe_chain(chain)
    except (ValueError, IndexError) as exc:
        ctx.log.warning("certificate_signed_unreadable", error=str(exc))
        return
    await ctx.services.station_state.note_issued(
        ctx.station_id,
        IssuedCertificate(
            certificate_type=certificate_type,
            serial_number=facts.serial_number,
            not_after=iso(facts.not_after),
            fingerprint_sha256=facts.fingerprint_sha256,
            status=status,
            issued_at=iso(utc_now()),
        ),
    )
    ctx.log.info(
        "certificate_signed",
        status=status,
        certificate_type=certificate_type,
        serial_number=facts.serial_number,
        not_after=iso(facts.not_after),
    )


async def renew_due_certificates(deps: Deps, now: dt.datetime) -> int:
    """Ask each online station whose accepted certificate expires within
    ``certificate_renew_days`` of ``now`` for a new CSR, once per certificate; returns how
    many were asked. A station no gateway holds is left for the next round."""
    horizon = now + dt.timedelta(days=deps.settings.certificate_renew_days)
    services = deps.services
    asked = 0
    cursor: str | None = None
    while True:
        page = await services.stations.list_stations(cursor=cursor, online=True, limit=200)
        for record in page.items:
            version = record.ocpp_version
            if version is None:
                continue
            for issued in await services.station_state.issued_certificates(record.station_id):
                not_after = rules.parse_time(issued.not_after)
                if (
                    issued.status != "Accepted"
                    or issued.renewal_requested_at is not None
                    or not_after is None
                    or not_after > horizon
                ):
                    continue
                if await _trigger(deps, record.station_id, version, issued, now):
                    asked += 1
        cursor = page.next_cursor
        if cursor is None:
            return asked


async def _trigger(
    deps: Deps, station_id: str, version: str, issued: IssuedCertificate, now: dt.datetime
) -> bool:
    generation = spec(version).generation
    requested = _TRIGGERS.get(generation, {}).get(issued.certificate_type)
    action = _TRIGGER_ACTION[generation]
    payload: dict[str, Any] = {"requestedMessage": requested}
    if generation == 1 and issued.certificate_type == V2G_CERTIFICATE:
        # A 1.6 charge point's V2G certificate came through the Plug & Charge wrapping:
        # so does the request to renew it.
        payload = wrap("TriggerMessage", {"requestedMessage": "SignV2GCertificate"})
        action, requested = "DataTransfer", "SignV2GCertificate"
    if requested is None:
        return False
    try:
        await deps.calls.call(
            station_id,
            version,
            action,
            payload,
            meta={"certificate_renewal": issued.serial_number},
        )
    except Exception as exc:
        _log.warning("certificate_renewal_not_sent", station=station_id, error=repr(exc))
        return False
    await deps.services.station_state.note_issued(
        station_id,
        msgspec.structs.replace(issued, renewal_requested_at=iso(now)),
    )
    _log.info(
        "certificate_renewal_requested",
        station=station_id,
        certificate_type=issued.certificate_type,
        serial_number=issued.serial_number,
        not_after=issued.not_after,
    )
    return True


async def renewal_round(deps: Deps, owner: str, now: dt.datetime | None = None) -> bool:
    """The manager's housekeeping calls this every tick: once per
    ``certificate_check_interval`` (rounds aligned on the clock, so every manager agrees on
    them) one manager takes the round's key in the idempotency store and runs
    :func:`renew_due_certificates`; True when this one did."""
    wall = time.time() if now is None else now.timestamp()
    round_number = int(wall // deps.settings.certificate_check_interval)
    if _last_rounds.get(owner) == round_number:
        return False
    _last_rounds[owner] = round_number
    key = f"certificate-renewal:{round_number}"
    ttl = 2 * deps.settings.certificate_check_interval
    if await deps.services.idempotency.claim(key, owner, ttl) is not True:
        return False
    await deps.services.idempotency.complete(key, owner.encode(), ttl)
    await renew_due_certificates(deps, now or utc_now())
    return True
