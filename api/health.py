"""Liveness and readiness, the only routes without a key (probes carry none).

``/v1/health`` answers while the process serves HTTP. ``/v1/ready`` also checks that the
bus is connected and the stores answer, and is 503 otherwise, so a load balancer stops
sending work to a replica that cannot do it. Neither says more than ok / not ok.
"""

from __future__ import annotations

import asyncio

import structlog
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.context import API_PREFIX, Context
from api.models import HealthOut, ReadyOut

__all__ = ["router"]

_log = structlog.get_logger("api.health")

READY_TIMEOUT = 2.0
"""Seconds the store check may take before the replica counts as not ready."""

router = APIRouter(prefix=API_PREFIX, tags=["health"])


@router.get("/health", response_model=HealthOut, summary="Liveness")
async def health() -> HealthOut:
    return HealthOut()


@router.get(
    "/ready",
    response_model=ReadyOut,
    summary="Readiness: bus connected, stores reachable",
    responses={503: {"model": ReadyOut, "description": "not ready"}},
)
async def ready(ctx: Context) -> JSONResponse:
    bus_ok = ctx.bus.connected if ctx.bus is not None else True
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await ctx.services.stations.get("\x00ready")
        store_ok = True
    except Exception as exc:  # any failure means "not ready", whatever the store raised
        _log.warning("readiness: store check failed", error=str(exc))
        store_ok = False
    ok = bus_ok and store_ok
    body = ReadyOut(
        status="ready" if ok else "not_ready", checks={"bus": bus_ok, "store": store_ok}
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ok else 503)
