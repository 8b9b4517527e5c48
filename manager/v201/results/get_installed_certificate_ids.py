"""OCPP 2.0.1 GetInstalledCertificateIds answer (M03): the certificates the station holds."""

from __future__ import annotations

from manager.common import notifications
from manager.context import ResultContext, iso, utc_now
from services.station_state import CertificateHash, InstalledCertificate

ACTION = "GetInstalledCertificateIds"


async def handle_result(ctx: ResultContext) -> None:
    """The station's certificates of the requested types (every type when the request named
    none) are those of ``certificateHashDataChain``; NotFound means it holds none of them."""
    if notifications.result_failed(ctx) or ctx.payload is None:
        return
    at = iso(utc_now())
    chains = ctx.payload.get("certificateHashDataChain") or ()
    if ctx.payload["status"] != "Accepted":
        chains = ()
    certificates = [
        InstalledCertificate(
            certificate_type=chain["certificateType"],
            hash=CertificateHash.from_ocpp(chain["certificateHashData"]),
            child_hashes=[
                CertificateHash.from_ocpp(child)
                for child in chain.get("childCertificateHashData") or ()
            ],
            source=ACTION,
            updated_at=at,
        )
        for chain in chains
    ]
    types = ctx.request.payload.get("certificateType") or None
    dropped = await ctx.services.station_state.replace_certificates(
        ctx.station_id, certificates, types=types
    )
    ctx.log.info(
        "installed_certificates",
        status=ctx.payload["status"],
        types=types,
        certificates=len(certificates) - dropped,
    )
    if dropped:
        ctx.log.warning("certificates_full", dropped=dropped)
