"""Applying a station's Accepted to a security-profile upgrade (OCPP 2.0.1 A05, 1.6 security
whitepaper): the registry records the upgrade as pending.

The station moves up only when it reconnects (2.0.1: after its reset onto the new network
profile), so the registered profile is not raised here: a connection at the old profile keeps
working meanwhile. The gateway raises it at the first connection authenticated at the new
profile or higher (``ConnectionEvent.security_profile_reached``), after which connections
below it are refused.
"""

from __future__ import annotations

from typing import Any

from manager.context import ResultContext
from services.interfaces import StoreUnavailable

__all__ = ["SECURITY_CTRLR", "SECURITY_PROFILE", "parse_profile", "record_upgrade"]

SECURITY_PROFILE = "SecurityProfile"
"""1.6 configuration key and 2.0.1 variable (of :data:`SECURITY_CTRLR`)."""
SECURITY_CTRLR = "SecurityCtrlr"


def parse_profile(value: Any) -> int | None:
    """The profile a request asks for (an int, or its decimal string), None unless 1-3."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit():
            return None
        value = int(value)
    return value if isinstance(value, int) and value in (1, 2, 3) else None


async def record_upgrade(ctx: ResultContext, profile: int) -> None:
    """Record ``profile`` as the station's pending upgrade; a profile not above the
    registered one changes nothing (only ever raise). A store outage is logged, not raised:
    the station then keeps its registered profile, which is where it was."""
    try:
        recorded = await ctx.services.stations.set_pending_security_profile(ctx.station_id, profile)
    except StoreUnavailable as exc:
        ctx.log.error(
            "security_profile_upgrade_not_recorded",
            security_profile=profile,
            error=str(exc),
            consequence="the registered profile stays as it is: lower-profile connections "
            "are still admitted; set it with 'csms station add --profile'",
        )
        return
    if recorded:
        ctx.log.info(
            "security_profile_upgrade_pending",
            security_profile=profile,
            applies="at the first connection authenticated at this profile or higher",
        )
    else:
        ctx.log.info(
            "security_profile_upgrade_ignored",
            security_profile=profile,
            reason="not above the registered profile, or station not in the registry",
        )
