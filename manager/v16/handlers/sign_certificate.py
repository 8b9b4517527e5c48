"""OCPP 1.6 (security extension) SignCertificate: the charge point asks for a certificate
for its CSR (a ChargePointCertificate, 2.0.1's ChargingStationCertificate)."""

from __future__ import annotations

from typing import Any

from manager.common import certificates
from manager.context import CallContext
from services.certificates import CHARGING_STATION_CERTIFICATE

ACTION = "SignCertificate"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Accepted when the CSR may be signed (the chain follows in CertificateSigned), else
    Rejected (the reason is logged: 1.6's answer has no field for it)."""
    decision = await certificates.sign_certificate(
        ctx, payload["csr"], CHARGING_STATION_CERTIFICATE
    )
    return {"status": decision.status}
