"""OCPP 2.0.1 SignCertificate (A02/A03): the station asks for a certificate for its CSR."""

from __future__ import annotations

from typing import Any

from manager.common import certificates
from manager.context import CallContext
from services.certificates import CHARGING_STATION_CERTIFICATE

ACTION = "SignCertificate"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Accepted when the CSR may be signed (the chain follows in CertificateSigned), else
    Rejected with the reason in ``statusInfo``."""
    certificate_type = payload.get("certificateType") or CHARGING_STATION_CERTIFICATE
    decision = await certificates.sign_certificate(ctx, payload["csr"], certificate_type)
    answer: dict[str, Any] = {"status": decision.status}
    if decision.reason_code is not None:
        info = {"reasonCode": decision.reason_code}
        if decision.reason:
            info["additionalInfo"] = decision.reason[:512]
        answer["statusInfo"] = info
    return answer
