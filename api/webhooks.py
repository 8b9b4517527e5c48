"""Webhook subscriptions (admin scope to change, read scope to look) and their deliveries.

The subscription's ``secret`` and its OAuth2 ``client_secret`` are write-only: accepted on
create and update, never returned. Deliveries are made by the dispatcher and the delivery
workers (``csms webhooks``, or inside ``csms run``); ``POST /v1/webhooks/{id}/test`` puts a
``webhook.test`` event in the outbox for one subscription, to try a receiver.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.auth import Admin, Reader
from api.context import API_PREFIX, Context
from api.errors import ApiError, ErrorBody
from api.paging import Cursor, Limit, listing
from services.outbound_auth import ClientCredentials
from services.webhooks import (
    ALL_EVENTS,
    Delivery,
    DeliveryState,
    Subscription,
    check_events,
    check_url,
    delivery_of,
    new_subscription_id,
    test_event,
)

__all__ = ["router"]

_log = structlog.get_logger("api.webhooks")

router = APIRouter(prefix=API_PREFIX, tags=["webhooks"])

WebhookId = Annotated[
    str, Path(pattern=r"^[0-9a-f]{16}$", description="subscription id (16 hex digits)")
]
AuthMethod = Literal["client_secret_basic", "client_secret_post"]
MAX_STATIONS = 1000


class OAuth2In(BaseModel):
    """OAuth2 client credentials: each delivery carries a bearer token of this client."""

    model_config = ConfigDict(extra="forbid")

    token_url: str = Field(description="the token endpoint (http or https)")
    client_id: str = Field(min_length=1, max_length=256)
    client_secret: str = Field(min_length=1, max_length=1024, description="write-only")
    scope: str | None = Field(default=None, max_length=1024, description="space-separated")
    audience: str | None = Field(default=None, max_length=1024)
    auth_method: AuthMethod = Field(
        default="client_secret_basic",
        description="client_secret_basic (HTTP Basic) or client_secret_post (form body)",
    )

    @field_validator("token_url")
    @classmethod
    def _check_token_url(cls, value: str) -> str:
        return check_url(value)

    def credentials(self) -> ClientCredentials:
        return ClientCredentials(
            token_url=self.token_url,
            client_id=self.client_id,
            client_secret=self.client_secret,
            scope=self.scope,
            audience=self.audience,
            auth_method=self.auth_method,
        )


class OAuth2Out(BaseModel):
    token_url: str
    client_id: str
    scope: str | None = None
    audience: str | None = None
    auth_method: AuthMethod

    @classmethod
    def of(cls, credentials: ClientCredentials) -> OAuth2Out:
        return cls(
            token_url=credentials.token_url,
            client_id=credentials.client_id,
            scope=credentials.scope,
            audience=credentials.audience,
            auth_method=credentials.auth_method,
        )


def _events(value: list[str]) -> list[str]:
    return list(check_events(value))


StationIds = list[Annotated[str, Field(min_length=1, max_length=255)]]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="receiver URL, http or https (use https outside a lab)")
    secret: str = Field(
        min_length=16, max_length=256, description="signs every delivery; write-only"
    )
    events: list[str] = Field(
        default=[ALL_EVENTS],
        min_length=1,
        max_length=64,
        description='event kinds, or ["*"] for all (docs/events.md)',
    )
    station_ids: StationIds | None = Field(
        default=None, max_length=MAX_STATIONS, description="only these stations' events"
    )
    description: str | None = Field(default=None, max_length=500)
    auth: OAuth2In | None = None
    active: bool = Field(default=True, description="false pauses new deliveries")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: list[str]) -> list[str]:
        return _events(value)


class WebhookPatch(BaseModel):
    """The fields to change; ``station_ids``, ``description`` and ``auth`` may be null to
    clear them."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    secret: str | None = Field(default=None, min_length=16, max_length=256)
    events: list[str] | None = Field(default=None, min_length=1, max_length=64)
    station_ids: StationIds | None = Field(default=None, max_length=MAX_STATIONS)
    description: str | None = Field(default=None, max_length=500)
    auth: OAuth2In | None = None
    active: bool | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _events(value)


class WebhookOut(BaseModel):
    """A subscription, without its secrets."""

    id: str
    url: str
    events: list[str]
    station_ids: list[str] | None = None
    description: str | None = None
    auth: OAuth2Out | None = None
    active: bool
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, sub: Subscription) -> WebhookOut:
        return cls(
            id=sub.id,
            url=sub.url,
            events=list(sub.events),
            station_ids=list(sub.station_ids) if sub.station_ids is not None else None,
            description=sub.description,
            auth=OAuth2Out.of(sub.auth) if sub.auth is not None else None,
            active=sub.active,
            created_at=sub.created_at,
            updated_at=sub.updated_at,
        )


class WebhookPage(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None = None


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    when = dt.datetime.fromtimestamp(moment, dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_kind: str
    state: DeliveryState = Field(description="pending, failed (a retry is due), delivered, dead")
    attempts: int = Field(description="tries so far")
    created_at: str
    last_attempt_at: str | None = None
    last_status: int | None = Field(default=None, description="the receiver's last HTTP status")
    last_error: str | None = Field(default=None, description="why the last try failed")
    next_attempt_at: str | None = Field(default=None, description="when the next try is due")
    delivered_at: str | None = None

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryOut:
        return cls(
            id=delivery.id,
            event_id=delivery.event_id,
            event_kind=delivery.event_kind,
            state=delivery.state,
            attempts=delivery.attempts,
            created_at=_iso(delivery.created_at) or "",
            last_attempt_at=_iso(delivery.last_attempt_at),
            last_status=delivery.last_status,
            last_error=delivery.last_error,
            next_attempt_at=_iso(delivery.next_at),
            delivered_at=_iso(delivery.delivered_at),
        )


class DeliveryPage(BaseModel):
    items: list[DeliveryOut] = Field(description="newest first")
    next_cursor: str | None = None


class TestQueued(BaseModel):
    delivery_id: str
    event_id: str


def _not_found(webhook_id: str) -> ApiError:
    return ApiError(
        404, "webhook_not_found", f"no webhook {webhook_id}", {"field": "webhook_id", "in": "path"}
    )


_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such webhook"}
}


@router.post("/webhooks", response_model=WebhookOut, status_code=201, summary="Subscribe")
async def create_webhook(ctx: Context, principal: Admin, body: WebhookIn) -> WebhookOut:
    now = ctx.clock()
    sub = Subscription(
        id=new_subscription_id(),
        url=body.url,
        secret=body.secret,
        events=tuple(body.events),
        station_ids=tuple(body.station_ids) if body.station_ids is not None else None,
        description=body.description,
        auth=body.auth.credentials() if body.auth is not None else None,
        active=body.active,
        created_at=now,
        updated_at=now,
    )
    await ctx.services.webhooks.create(sub)
    _log.info("webhook created", webhook=sub.id, url=sub.url, by=principal.key_id)
    return WebhookOut.of(sub)


@router.get("/webhooks", response_model=WebhookPage, summary="List webhooks (never secrets)")
async def list_webhooks(
    ctx: Context, _: Reader, cursor: Cursor = None, limit: Limit = 100
) -> WebhookPage:
    page = await listing(ctx.services.webhooks.list_subscriptions(cursor=cursor, limit=limit))
    return WebhookPage(
        items=[WebhookOut.of(sub) for sub in page.items], next_cursor=page.next_cursor
    )


async def _get(ctx: Context, webhook_id: str) -> Subscription:
    sub = await ctx.services.webhooks.get(webhook_id)
    if sub is None:
        raise _not_found(webhook_id)
    return sub


@router.get(
    "/webhooks/{webhook_id}", response_model=WebhookOut, summary="One webhook", responses=_NOT_FOUND
)
async def get_webhook(ctx: Context, _: Reader, webhook_id: WebhookId) -> WebhookOut:
    return WebhookOut.of(await _get(ctx, webhook_id))


@router.patch(
    "/webhooks/{webhook_id}",
    response_model=WebhookOut,
    summary="Change a webhook",
    responses=_NOT_FOUND,
)
async def update_webhook(
    ctx: Context, principal: Admin, webhook_id: WebhookId, body: WebhookPatch
) -> WebhookOut:
    sub = await _get(ctx, webhook_id)
    given = body.model_fields_set
    for name in ("url", "secret", "events", "active"):
        if name in given and getattr(body, name) is None:
            raise ApiError(
                422,
                "invalid_request",
                f"{name}: may not be null",
                {"field": name, "in": "body", "rule": "not_null"},
            )
    if body.url is not None:
        sub.url = body.url
    if body.secret is not None:
        sub.secret = body.secret
    if body.events is not None:
        sub.events = tuple(body.events)
    if body.active is not None:
        sub.active = body.active
    if "station_ids" in given:
        sub.station_ids = tuple(body.station_ids) if body.station_ids is not None else None
    if "description" in given:
        sub.description = body.description
    if "auth" in given:
        sub.auth = body.auth.credentials() if body.auth is not None else None
    sub.updated_at = ctx.clock()
    if not await ctx.services.webhooks.replace(sub):
        raise _not_found(webhook_id)
    _log.info("webhook changed", webhook=sub.id, fields=sorted(given), by=principal.key_id)
    return WebhookOut.of(sub)


@router.delete(
    "/webhooks/{webhook_id}",
    status_code=204,
    summary="Unsubscribe (its pending deliveries go too)",
    responses=_NOT_FOUND,
)
async def delete_webhook(ctx: Context, principal: Admin, webhook_id: WebhookId) -> None:
    if not await ctx.services.webhooks.delete(webhook_id):
        raise _not_found(webhook_id)
    _log.info("webhook deleted", webhook=webhook_id, by=principal.key_id)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryPage,
    summary="Recent deliveries of a webhook, newest first",
    responses=_NOT_FOUND,
)
async def list_deliveries(
    ctx: Context, _: Reader, webhook_id: WebhookId, cursor: Cursor = None, limit: Limit = 100
) -> DeliveryPage:
    await _get(ctx, webhook_id)
    page = await listing(ctx.services.webhooks.deliveries(webhook_id, cursor=cursor, limit=limit))
    return DeliveryPage(
        items=[DeliveryOut.of(item) for item in page.items], next_cursor=page.next_cursor
    )


@router.post(
    "/webhooks/{webhook_id}/test",
    response_model=TestQueued,
    status_code=202,
    summary="Send a webhook.test event to this webhook",
    responses=_NOT_FOUND,
)
async def test_webhook(ctx: Context, principal: Admin, webhook_id: WebhookId) -> TestQueued:
    sub = await _get(ctx, webhook_id)
    event = test_event(sub.id)
    delivery = delivery_of(event, sub, time.time())
    await ctx.services.webhooks.enqueue([delivery])
    _log.info("webhook test queued", webhook=sub.id, delivery=delivery.id, by=principal.key_id)
    return TestQueued(delivery_id=delivery.id, event_id=event.id)
