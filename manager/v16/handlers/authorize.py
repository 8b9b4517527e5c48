"""OCPP 1.6 Authorize (§4.1): may this idTag charge?"""

from __future__ import annotations

from typing import Any

from manager.common import authorization, events, registration
from manager.context import CallContext

ACTION = "Authorize"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """The token store decides; statuses 1.6 lacks are answered Invalid.

    No ConcurrentTx check here: a driver presents the same tag to stop a running
    transaction, and that Authorize must succeed.
    """
    await registration.require_accepted(ctx)
    decision = await authorization.authorize(ctx, payload["idTag"])
    ctx.log.info("authorize", id_tag=payload["idTag"], status=decision.status.value)
    await events.authorization_refused(ctx, decision, payload["idTag"])
    return {"idTagInfo": authorization.id_tag_info(decision)}
