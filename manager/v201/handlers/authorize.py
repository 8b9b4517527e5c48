"""OCPP 2.0.1 Authorize (C01): may this idToken charge?"""

from __future__ import annotations

from typing import Any

from manager.common import authorization, events, registration
from manager.context import CallContext

ACTION = "Authorize"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """The token store decides, per token and type.

    No ConcurrentTx check here: the same token is presented to stop its own transaction.
    ISO 15118 certificate data is not checked (no certificateStatus is answered).
    """
    await registration.require_accepted(ctx)
    token = payload["idToken"]
    decision = await authorization.authorize(ctx, token["idToken"], token["type"])
    ctx.log.info(
        "authorize",
        id_token=token["idToken"],
        token_type=token["type"],
        status=decision.status.value,
    )
    await events.authorization_refused(ctx, decision, token["idToken"], token["type"])
    return {"idTokenInfo": authorization.id_token_info(decision)}
