"""OCPP 1.6 ChangeConfiguration answer (§5.3): did the charge point take the new value?"""

from __future__ import annotations

from manager import password_results
from manager.common import notifications
from manager.context import ResultContext
from operations import password as password_rotation

ACTION = "ChangeConfiguration"


async def handle_result(ctx: ResultContext) -> None:
    """Log the outcome for the key that was set: Accepted and RebootRequired took the value
    (the latter only after a reboot), Rejected and NotSupported did not and are warnings.

    An ``AuthorizationKey`` (the Basic auth password, security whitepaper) is never logged;
    once Accepted its hash replaces the registry's (see :mod:`operations.password`).
    """
    if password_rotation.sets_password(ctx.version, ctx.request):
        await password_results.apply_result(ctx)
        return
    if notifications.result_failed(ctx) or ctx.payload is None:
        return
    status = ctx.payload["status"]
    log = ctx.log.info if status in ("Accepted", "RebootRequired") else ctx.log.warning
    log(
        "configuration_change",
        key=ctx.request.payload.get("key"),
        value=ctx.request.payload.get("value"),
        status=status,
    )
