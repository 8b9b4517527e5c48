"""OCPP 1.6 ChangeConfiguration answer (§5.3): did the charge point take the new value? The
value taken is stored in the station's configuration."""

from __future__ import annotations

from manager import password_results, security_profile_results
from manager.common import notifications
from manager.context import ResultContext, iso, utc_now
from operations import password as password_rotation
from services.station_state import ConfigurationEntry

ACTION = "ChangeConfiguration"

_TOOK_VALUE = ("Accepted", "RebootRequired")


async def handle_result(ctx: ResultContext) -> None:
    """Log the outcome for the key that was set: Accepted and RebootRequired took the value
    (the latter only after a reboot), Rejected and NotSupported did not and are warnings.

    An ``AuthorizationKey`` (the Basic auth password, security whitepaper) is never logged
    nor stored; once Accepted its hash replaces the registry's (see
    :mod:`operations.password`). Any other key taken is stored with the requested value
    (writable, since it was written; RebootRequired flagged). A higher ``SecurityProfile``
    taken is recorded as the station's pending upgrade (see
    :mod:`manager.security_profile_results`).
    """
    if password_rotation.sets_password(ctx.version, ctx.request):
        await password_results.apply_result(ctx)
        return
    if notifications.result_failed(ctx) or ctx.payload is None:
        return
    status = ctx.payload["status"]
    key, value = ctx.request.payload.get("key"), ctx.request.payload.get("value")
    log = ctx.log.info if status in _TOOK_VALUE else ctx.log.warning
    log("configuration_change", key=key, value=value, status=status)
    if status in _TOOK_VALUE and isinstance(key, str) and isinstance(value, str):
        entry = ConfigurationEntry(
            key=key,
            readonly=False,
            value=value,
            reboot_required=status == "RebootRequired",
            source=ACTION,
            updated_at=iso(utc_now()),
        )
        dropped = await ctx.services.station_state.update_configuration(ctx.station_id, [entry])
        if dropped:
            ctx.log.warning("configuration_full", dropped=dropped)
        if key == security_profile_results.SECURITY_PROFILE:
            profile = security_profile_results.parse_profile(value)
            if profile is not None:
                await security_profile_results.record_upgrade(ctx, profile)
