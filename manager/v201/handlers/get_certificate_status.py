"""OCPP 2.0.1 GetCertificateStatus (M06): the CSMS asks the OCSP responder for the station."""

from __future__ import annotations

from typing import Any

from manager.common import pnc, registration
from manager.context import CallContext

ACTION = "GetCertificateStatus"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Accepted with the responder's DER answer (base64), Failed when there is none."""
    await registration.require_accepted(ctx)
    return await pnc.certificate_status(ctx, payload)
