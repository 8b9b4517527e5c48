"""OCPP 2.0.1 DeleteCertificate answer (M04): a deleted certificate is no longer installed."""

from __future__ import annotations

from manager.common import notifications
from manager.context import ResultContext
from services.station_state import CertificateHash

ACTION = "DeleteCertificate"

_GONE = ("Accepted", "NotFound")


async def handle_result(ctx: ResultContext) -> None:
    """Accepted (deleted) and NotFound (it was not there) both mean the station does not hold
    the certificate: forget it. Failed keeps it and is a warning."""
    if notifications.result_failed(ctx) or ctx.payload is None:
        return
    status = ctx.payload["status"]
    certificate = CertificateHash.from_ocpp(ctx.request.payload["certificateHashData"])
    if status not in _GONE:
        ctx.log.warning("certificate_not_deleted", status=status, serial=certificate.serial_number)
        return
    await ctx.services.station_state.remove_certificate(ctx.station_id, certificate)
    ctx.log.info("certificate_deleted", status=status, serial=certificate.serial_number)
