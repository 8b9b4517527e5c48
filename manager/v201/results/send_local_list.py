"""OCPP 2.0.1 SendLocalList answer (D01): once Accepted, the list has the version sent."""

from __future__ import annotations

from manager.common import notifications
from manager.context import ResultContext, iso, utc_now
from services.station_state import LocalListState

ACTION = "SendLocalList"


async def handle_result(ctx: ResultContext) -> None:
    """Accepted: store the request's ``versionNumber``. Failed and VersionMismatch leave the
    list as it was and are warnings."""
    if notifications.result_failed(ctx) or ctx.payload is None:
        return
    status = ctx.payload["status"]
    version = ctx.request.payload.get("versionNumber")
    update_type = ctx.request.payload.get("updateType")
    if status != "Accepted" or not isinstance(version, int):
        ctx.log.warning("local_list_not_updated", status=status, version=version)
        return
    state = LocalListState(
        version=version, source=ACTION, updated_at=iso(utc_now()), update_type=update_type
    )
    await ctx.services.station_state.set_local_list(ctx.station_id, state)
    ctx.log.info("local_list_updated", version=version, update_type=update_type)
