"""OCPP 2.0.1 SetNetworkProfile answer (B09, A05): did the station store the connection
profile? One with a higher ``securityProfile`` is the station's pending upgrade."""

from __future__ import annotations

from manager import security_profile_results
from manager.common import notifications
from manager.context import ResultContext

ACTION = "SetNetworkProfile"


async def handle_result(ctx: ResultContext) -> None:
    """Log the status for the slot; Accepted with a higher security profile records it as
    the station's pending upgrade, raised once it connects at that profile (after the
    operator sets ``NetworkConfigurationPriority`` and resets it). Rejected and Failed are
    warnings and record nothing."""
    if notifications.result_failed(ctx) or ctx.payload is None:
        return
    status = ctx.payload["status"]
    connection = ctx.request.payload.get("connectionData") or {}
    profile = security_profile_results.parse_profile(connection.get("securityProfile"))
    log = ctx.log.info if status == "Accepted" else ctx.log.warning
    log(
        "network_profile_set",
        slot=ctx.request.payload.get("configurationSlot"),
        security_profile=profile,
        status=status,
        reason=(ctx.payload.get("statusInfo") or {}).get("reasonCode"),
    )
    if status == "Accepted" and profile is not None:
        await security_profile_results.record_upgrade(ctx, profile)
