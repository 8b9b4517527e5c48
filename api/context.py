"""What every route works with: the services, the CallSender, and the few settings it needs.

One :class:`ApiContext` per app, built by :func:`api.app.create_app` and read by routes
through the :func:`context` dependency, so tests compose any services and sender they like.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from api.metrics import ApiMetrics
from api.oidc import OidcVerifier
from csms.bus import Bus
from operations.calls import CallSender
from services import Services

__all__ = ["API_PREFIX", "ApiContext", "Context", "context", "utc_now"]

API_PREFIX = "/v1"
"""Every route is under it (the API's major version)."""


def utc_now() -> str:
    """Now as OCPP writes times: ISO 8601 UTC with a ``Z``, millisecond precision."""
    moment = dt.datetime.now(dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class ApiContext:
    services: Services
    sender: CallSender
    call_wait: float
    """Default seconds a call route waits for the outcome (beyond the gateway's
    ``call_timeout``, so a station's late answer still arrives as a timeout outcome)."""
    max_call_wait: float
    """Largest ``?timeout=`` a caller may ask for."""
    admin_key: str | None = None
    """The configured (or generated) bootstrap admin key, accepted besides stored keys."""
    oidc: OidcVerifier | None = None
    """Checks OIDC access tokens when ``api_oidc_issuer`` is set."""
    bus: Bus | None = None
    """The sender's bus, for readiness."""
    metrics: ApiMetrics = field(default_factory=ApiMetrics)
    clock: Callable[[], str] = field(default=utc_now)


def context(request: Request) -> ApiContext:
    found: ApiContext = request.app.state.context
    return found


Context = Annotated[ApiContext, Depends(context)]
