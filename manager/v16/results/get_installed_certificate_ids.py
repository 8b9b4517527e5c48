"""OCPP 1.6 (security extension) GetInstalledCertificateIds answer: the root certificates of
one type the charge point holds."""

from __future__ import annotations

from manager.common import notifications
from manager.context import ResultContext, iso, utc_now
from services.station_state import CertificateHash, InstalledCertificate

ACTION = "GetInstalledCertificateIds"


async def handle_result(ctx: ResultContext) -> None:
    """The charge point's certificates of the requested ``certificateType`` are those of
    ``certificateHashData``; NotFound means it holds none of that type."""
    if notifications.result_failed(ctx) or ctx.payload is None:
        return
    at = iso(utc_now())
    certificate_type = ctx.request.payload["certificateType"]
    hashes = ctx.payload.get("certificateHashData") or ()
    if ctx.payload["status"] != "Accepted":
        hashes = ()
    certificates = [
        InstalledCertificate(
            certificate_type=certificate_type,
            hash=CertificateHash.from_ocpp(data),
            source=ACTION,
            updated_at=at,
        )
        for data in hashes
    ]
    dropped = await ctx.services.station_state.replace_certificates(
        ctx.station_id, certificates, types=[certificate_type]
    )
    ctx.log.info(
        "installed_certificates",
        status=ctx.payload["status"],
        types=[certificate_type],
        certificates=len(certificates) - dropped,
    )
    if dropped:
        ctx.log.warning("certificates_full", dropped=dropped)
