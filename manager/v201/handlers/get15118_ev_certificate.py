"""OCPP 2.0.1 Get15118EVCertificate (M01, M02): an EV asks for its contract certificate."""

from __future__ import annotations

from typing import Any

from manager.common import pnc, registration
from manager.context import CallContext

ACTION = "Get15118EVCertificate"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Relayed to the contract-certificate provider; Failed when none is configured or it
    does not answer."""
    await registration.require_accepted(ctx)
    return await pnc.ev_certificate(ctx, payload)
