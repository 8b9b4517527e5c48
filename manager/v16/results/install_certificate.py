"""OCPP 1.6 (security extension) InstallCertificate answer: the charge point installed a root
certificate."""

from __future__ import annotations

from manager.common import notifications
from manager.context import ResultContext, iso, utc_now
from services.station_state import CertificateInstall

ACTION = "InstallCertificate"


async def handle_result(ctx: ResultContext) -> None:
    """Accepted: note that a certificate of the request's type was installed (which one shows
    in the next GetInstalledCertificateIds). Rejected and Failed are warnings."""
    if notifications.result_failed(ctx) or ctx.payload is None:
        return
    status = ctx.payload["status"]
    certificate_type = ctx.request.payload["certificateType"]
    if status != "Accepted":
        ctx.log.warning("certificate_not_installed", status=status, type=certificate_type)
        return
    install = CertificateInstall(certificate_type=certificate_type, installed_at=iso(utc_now()))
    await ctx.services.station_state.note_install(ctx.station_id, install)
    ctx.log.info("certificate_installed", type=certificate_type)
