"""OCPP 2.0.1 Authorize (C01, C07): may this idToken charge, and is its contract good?"""

from __future__ import annotations

from typing import Any

from manager.common import pnc, registration
from manager.context import CallContext

ACTION = "Authorize"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """The token store decides, per token and type; ISO 15118 contract data (a PEM chain
    and/or OCSP request data) is verified and answered as ``certificateStatus``.

    No ConcurrentTx check here: the same token is presented to stop its own transaction.
    """
    await registration.require_accepted(ctx)
    return await pnc.authorize(ctx, payload)
