"""The operator API's FastAPI application: :func:`create_app`.

Everything is under ``/v1``; the OpenAPI document is ``/v1/openapi.json`` and interactive
docs are at ``/docs``. The app holds no state of its own: the services (stores) and the
CallSender (one bus connection's reply topic) are handed in, so any number of replicas can
run side by side, and ``csms run`` mounts one beside its gateway and manager.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from api import (
    calls,
    charging,
    events,
    health,
    iso15118,
    keys,
    message_log,
    monitoring,
    rules,
    schemas,
    station_reports,
    station_state,
    stations,
    tokens,
    transactions,
    ui,
    webhooks,
)
from api.context import ApiContext
from api.errors import ErrorBody, install
from api.limits import BodyLimit
from api.metrics import ApiMetrics, MetricsMiddleware
from api.oidc import OidcConfig, OidcVerifier
from csms.bus import Bus
from csms.config import Settings
from operations.calls import CallSender
from services import Services

__all__ = ["API_VERSION", "create_app"]

API_VERSION = "1"

CALL_WAIT_MARGIN = 5.0
"""Seconds a call route waits beyond the gateway's ``call_timeout`` by default, so a station
that answers late is still reported as the gateway's timeout outcome."""

_COMMON_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "bad parameter or cursor"},
    401: {"model": ErrorBody, "description": "no key or token, or an invalid or revoked one"},
    403: {"model": ErrorBody, "description": "the key's scope does not allow this"},
    422: {"model": ErrorBody, "description": "request refused by validation"},
    503: {"model": ErrorBody, "description": "broker or store temporarily unavailable"},
}


def create_app(
    settings: Settings,
    services: Services,
    sender: CallSender,
    *,
    bus: Bus | None = None,
    admin_key: str | None = None,
    oidc: OidcVerifier | None = None,
) -> FastAPI:
    """The API app for these services and sender.

    ``admin_key`` (default: the ``api_admin_key`` setting) is accepted with admin scope
    besides the stored keys; ``bus`` is the sender's, reported by ``/v1/ready``. ``oidc``
    (default: one for the ``api_oidc_*`` settings, when an issuer is set) checks OIDC
    access tokens; the app's lifespan closes it.
    """
    if admin_key is None and settings.api_admin_key is not None:
        admin_key = settings.api_admin_key.get_secret_value()
    if oidc is None:
        oidc_config = OidcConfig.from_settings(settings)
        oidc = OidcVerifier(oidc_config) if oidc_config is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if oidc is not None:
            await oidc.aclose()

    app = FastAPI(
        title="OCPP CSMS operator API",
        version=API_VERSION,
        description="Stations, transactions, tokens and every CSMS-initiated OCPP call of "
        "OCPP 1.6 and 2.0.1, answered with the station's reply. Authenticate with an API "
        "key (`Authorization: Bearer <key>` or `X-API-Key: <key>`) or, when configured, an "
        "OIDC access token (`Authorization: Bearer <JWT>`).",
        openapi_url="/v1/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    install(app)
    rules.install(app)
    api_metrics = ApiMetrics()
    app.add_middleware(BodyLimit, limit=settings.max_frame_bytes)
    app.add_middleware(MetricsMiddleware, metrics=api_metrics)
    app.state.context = ApiContext(
        services=services,
        sender=sender,
        call_wait=min(settings.call_timeout + CALL_WAIT_MARGIN, calls.MAX_CALL_WAIT),
        max_call_wait=calls.MAX_CALL_WAIT,
        admin_key=admin_key,
        oidc=oidc,
        bus=bus,
        metrics=api_metrics,
    )
    app.include_router(health.router)
    app.include_router(station_state.router, responses=_COMMON_ERRORS)
    app.include_router(station_reports.router, responses=_COMMON_ERRORS)  # before stations
    app.include_router(message_log.router, responses=_COMMON_ERRORS)  # before stations' path
    # Calls, charging, rules first: the station detail route's id matches any rest of the path.
    for module in (
        calls,
        iso15118,
        charging,
        rules,
        stations,
        transactions,
        tokens,
        keys,
        monitoring,
    ):
        app.include_router(module.router, responses=_COMMON_ERRORS)
    app.include_router(webhooks.router, responses=_COMMON_ERRORS)
    app.include_router(events.router, responses=_COMMON_ERRORS)
    app.include_router(schemas.router, responses=_COMMON_ERRORS)
    ui.install(app)  # the dashboard at /
    return app
