"""``GET /v1/metrics``: this API process's Prometheus metrics (:mod:`api.metrics`; under
``csms run`` the gateway's and the manager's too) in the text
exposition format. Like every route but health it needs a key (``read``): give the scraper
one (Prometheus ``authorization: {credentials: <key>}``)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.auth import Reader
from api.context import API_PREFIX, Context

__all__ = ["router"]

router = APIRouter(prefix=API_PREFIX, tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics of this API process",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "text format"}},
)
async def metrics(ctx: Context, _: Reader) -> Response:
    return Response(ctx.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
