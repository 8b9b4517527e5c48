"""OCPP 1.6 GetLocalListVersion answer (§5.10): the version of the local authorization list."""

from __future__ import annotations

from manager.common import notifications
from manager.context import ResultContext, iso, utc_now
from services.station_state import LocalListState

ACTION = "GetLocalListVersion"


async def handle_result(ctx: ResultContext) -> None:
    """Store the reported ``listVersion`` (0: no list installed; -1: no local list support)."""
    if notifications.result_failed(ctx) or ctx.payload is None:
        return
    version = ctx.payload["listVersion"]
    state = LocalListState(version=version, source=ACTION, updated_at=iso(utc_now()))
    await ctx.services.station_state.set_local_list(ctx.station_id, state)
    ctx.log.info("local_list_version", version=version)
