"""Webhook subscriptions and their outbox: what to send where, and what was sent.

A :class:`Subscription` names a receiver (``url``), the secret its deliveries are signed
with, the event kinds (``*`` = all) and optionally the stations it wants. The dispatcher
(``webhooks.dispatcher``) turns each matching event into one :class:`Delivery` in the
outbox; the delivery workers (``webhooks.worker``) claim due deliveries, POST them and
report the attempt. The outbox rules, the same in memory and in Redis:

- **Once per (event, subscription).** A delivery's id is ``<event id>.<subscription id>``;
  :meth:`WebhookStore.enqueue` skips ids it has seen within ``dedupe_ttl``, so dispatchers
  that read the same events (two replicas, a restart before the cursor was saved) never
  send an event twice to one receiver.
- **One in flight per subscription.** :meth:`WebhookStore.claim` hands out at most one
  delivery per subscription at a time, the subscriptions with the oldest due delivery
  first: a receiver that hangs holds one worker, never the others' deliveries.
- **Leases.** A claim holds for ``lease`` seconds under a fresh token; a worker that dies
  mid-delivery leaves the lease to expire, and the delivery is claimed again. A late
  :meth:`WebhookStore.complete` with a token that is no longer current changes nothing.
- **Bounded history.** Each subscription keeps its newest ``max_history`` finished
  deliveries (delivered or dead) for ``GET /v1/webhooks/{id}/deliveries``; pending and
  failed ones are kept until they finish.

Delivery states: ``pending`` (not tried yet, or being tried), ``failed`` (the last try
failed; another is due at ``next_at``), ``delivered`` (a 2xx), ``dead`` (every allowed try
failed, or the subscription lost its receiver). Times are Unix seconds.

:class:`MemoryWebhookStore` is the embedded default; :mod:`services.redis_webhooks` the
fleet's.
"""

from __future__ import annotations

import enum
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

import msgspec

from services import rules
from services.events import Event, EventKind, utc_now
from services.models import Page
from services.outbound_auth import ClientCredentials

__all__ = [
    "ALL_EVENTS",
    "DEFAULT_DEDUPE_TTL",
    "DEFAULT_MAX_HISTORY",
    "MAX_URL_LENGTH",
    "TEST_EVENT_KIND",
    "Attempt",
    "Claimed",
    "Delivery",
    "DeliveryState",
    "MemoryWebhookStore",
    "Subscription",
    "WebhookStore",
    "check_events",
    "check_url",
    "delivery_id",
    "delivery_of",
    "new_subscription_id",
    "test_event",
]

ALL_EVENTS = "*"
TEST_EVENT_KIND = "webhook.test"
"""Kind of the event ``POST /v1/webhooks/{id}/test`` sends (to that subscription only)."""
MAX_URL_LENGTH = 2048
DEFAULT_MAX_HISTORY = 100
DEFAULT_DEDUPE_TTL = 86_400.0
SUBSCRIPTION_CURSOR = "webhooks"
DELIVERY_CURSOR = "webhook-deliveries"


class Subscription(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One receiver and what it wants. ``secret`` signs its deliveries; the API never shows
    it (nor ``auth.client_secret``)."""

    id: str
    url: str
    secret: str
    events: tuple[str, ...] = (ALL_EVENTS,)
    """Event kinds, or ``("*",)`` for all."""
    station_ids: tuple[str, ...] | None = None
    """Only these stations' events (events of no station never match); None = any."""
    description: str | None = None
    auth: ClientCredentials | None = None
    """OAuth2 client credentials: deliveries carry ``Authorization: Bearer <token>``."""
    active: bool = True
    """False pauses the subscription: no new deliveries are made for it."""
    created_at: str = ""
    updated_at: str = ""

    def matches(self, event: Event) -> bool:
        """True when this subscription wants ``event``."""
        if not self.active:
            return False
        if ALL_EVENTS not in self.events and event.kind not in self.events:
            return False
        return self.station_ids is None or event.station_id in self.station_ids


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    FAILED = "failed"
    DELIVERED = "delivered"
    DEAD = "dead"

    @property
    def finished(self) -> bool:
        return self in (DeliveryState.DELIVERED, DeliveryState.DEAD)


class Delivery(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One event for one subscription, and how sending it went."""

    id: str
    subscription_id: str
    event_id: str
    event_kind: str
    body: str
    """The event's JSON exactly as it is POSTed (and signed) on every try."""
    created_at: float
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    """Tries started (a try cut short by a dying worker counts)."""
    next_at: float | None = None
    """When the next try is due (pending or failed), else None."""
    last_attempt_at: float | None = None
    last_status: int | None = None
    """The receiver's HTTP status of the last try, None when it gave none."""
    last_error: str | None = None
    """Why the last try failed (a status other than 2xx, a timeout, a refused connection)."""
    delivered_at: float | None = None


class Claimed(msgspec.Struct, kw_only=True, frozen=True):
    """A delivery a worker holds until ``lease_until``; ``token`` proves it on completion."""

    delivery: Delivery
    token: str
    lease_until: float


class Attempt(msgspec.Struct, kw_only=True, frozen=True):
    """The result of one try."""

    at: float
    delivered: bool
    status: int | None = None
    error: str | None = None


def new_subscription_id() -> str:
    """16 random hex digits (safe in URLs and keys as they are)."""
    return secrets.token_hex(8)


def delivery_id(event_id: str, subscription_id: str) -> str:
    return f"{event_id}.{subscription_id}"


def delivery_of(event: Event, subscription: Subscription, now: float) -> Delivery:
    """The outbox entry that sends ``event`` to ``subscription``, due at once."""
    return Delivery(
        id=delivery_id(event.id, subscription.id),
        subscription_id=subscription.id,
        event_id=event.id,
        event_kind=event.kind,
        body=msgspec.json.encode(event).decode(),
        created_at=now,
        next_at=now,
    )


def test_event(subscription_id: str) -> Event:
    """A ``webhook.test`` event for one subscription (its id is unique, not in the log)."""
    return Event(
        kind=TEST_EVENT_KIND,
        at=utc_now(),
        data={"subscription_id": subscription_id},
        id=f"test-{secrets.token_hex(8)}",
    )


test_event.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest


def check_url(url: str) -> str:
    """``url`` when it is an absolute http(s) URL with a host and no user info; else
    ``ValueError`` saying why. Receivers should use https (docs/events.md)."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"url is longer than {MAX_URL_LENGTH} characters")
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        raise ValueError("url contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"url is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("url must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("url has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url must not carry credentials (use auth or the secret)")
    if port == 0:
        raise ValueError("url has port 0")
    return url


def check_events(kinds: Iterable[str]) -> tuple[str, ...]:
    """The subscribed kinds, ``("*",)`` for all; ``ValueError`` naming an unknown kind."""
    found = tuple(dict.fromkeys(kinds))
    if not found:
        raise ValueError("events must name at least one event kind, or '*'")
    if ALL_EVENTS in found:
        if len(found) > 1:
            raise ValueError("events: '*' already means every kind")
        return found
    known = {kind.value for kind in EventKind}
    for kind in found:
        if kind not in known:
            raise ValueError(f"events: unknown event kind {kind!r}")
    return found


@runtime_checkable
class WebhookStore(Protocol):
    """Subscriptions and the outbox of their deliveries (shared by API, dispatchers and
    workers). Failures raise ``StoreUnavailable``."""

    async def create(self, subscription: Subscription) -> None: ...

    async def get(self, subscription_id: str) -> Subscription | None: ...

    async def replace(self, subscription: Subscription) -> bool:
        """Store a changed subscription; False when it no longer exists."""
        ...

    async def delete(self, subscription_id: str) -> bool:
        """Forget the subscription and its deliveries (a delivery in flight finishes, and
        its completion is ignored); False when there was none."""
        ...

    async def list_subscriptions(
        self, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Subscription]:
        """Subscriptions in id order; ``ValueError`` for a bad cursor or limit."""
        ...

    async def subscriptions(self) -> list[Subscription]:
        """Every subscription (the dispatcher's view)."""
        ...

    async def enqueue(self, deliveries: Sequence[Delivery]) -> int:
        """Add the deliveries not seen before (by id) to the outbox, atomically each;
        returns how many were new."""
        ...

    async def claim(self, now: float, lease: float, limit: int) -> list[Claimed]:
        """Up to ``limit`` due deliveries of distinct subscriptions that have none in flight,
        each leased until ``now + lease``; its ``attempts`` counts this try."""
        ...

    async def complete(self, claimed: Claimed, attempt: Attempt, next_at: float | None) -> bool:
        """Record ``attempt``: delivered; else failed and due again at ``next_at``; else
        (``next_at`` None) dead. False (and nothing changed) when the lease was lost."""
        ...

    async def delivery(self, delivery_id: str) -> Delivery | None: ...

    async def deliveries(
        self, subscription_id: str, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Delivery]:
        """The subscription's deliveries, newest first; ``ValueError`` for a bad cursor."""
        ...


def history_member(delivery: Delivery) -> str:
    """The delivery's entry in its subscription's history: sorts by creation, then id."""
    return f"{round(delivery.created_at * 1000):015d}:{delivery.id}"


def subscription_query(cursor: str | None, limit: int) -> rules.IdQuery:
    return rules.IdQuery(
        limit=rules.check_limit(limit),
        after=rules.decode_cursor(SUBSCRIPTION_CURSOR, cursor) if cursor is not None else None,
    )


def subscription_page(items: list[Subscription], limit: int) -> Page[Subscription]:
    return rules.page_of(items, limit, lambda item: item.id, SUBSCRIPTION_CURSOR)


def delivery_query(cursor: str | None, limit: int) -> tuple[int, str | None]:
    """(limit, history member to list before) of a deliveries listing."""
    checked = rules.check_limit(limit)
    before = rules.decode_cursor(DELIVERY_CURSOR, cursor) if cursor is not None else None
    return checked, before


def delivery_page(items: list[tuple[str, Delivery]], limit: int) -> Page[Delivery]:
    """A page of (history member, delivery), newest first (one more than ``limit``: more)."""
    page = rules.page_of(items, limit, lambda item: item[0], DELIVERY_CURSOR)
    return Page(items=[delivery for _, delivery in page.items], next_cursor=page.next_cursor)


_sub_encoder = msgspec.json.Encoder()
_sub_decoder = msgspec.json.Decoder(Subscription)
_delivery_decoder = msgspec.json.Decoder(Delivery)


def encode_subscription(subscription: Subscription) -> bytes:
    return _sub_encoder.encode(subscription)


def decode_subscription(raw: bytes | str) -> Subscription:
    return _sub_decoder.decode(raw)


def _copy(delivery: Delivery) -> Delivery:
    return _delivery_decoder.decode(_sub_encoder.encode(delivery))


class MemoryWebhookStore:
    """:class:`WebhookStore` in dicts (embedded default, tests); the same rules as Redis's.
    ``clock`` (Unix seconds) ages the dedupe marks."""

    def __init__(
        self,
        *,
        max_history: int = DEFAULT_MAX_HISTORY,
        dedupe_ttl: float = DEFAULT_DEDUPE_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._subs: dict[str, bytes] = {}
        self._deliveries: dict[str, Delivery] = {}
        self._tokens: dict[str, str] = {}
        self._queues: dict[str, dict[str, float]] = {}
        """subscription id -> pending delivery id -> due time"""
        self._in_flight: dict[str, float] = {}
        """subscription id -> lease expiry"""
        self._history: dict[str, dict[str, str]] = {}
        """subscription id -> history member -> delivery id"""
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max_history = max_history
        self._dedupe_ttl = dedupe_ttl
        self._clock = clock

    # subscriptions

    async def create(self, subscription: Subscription) -> None:
        self._subs[subscription.id] = encode_subscription(subscription)

    async def get(self, subscription_id: str) -> Subscription | None:
        raw = self._subs.get(subscription_id)
        return decode_subscription(raw) if raw is not None else None

    async def replace(self, subscription: Subscription) -> bool:
        if subscription.id not in self._subs:
            return False
        self._subs[subscription.id] = encode_subscription(subscription)
        return True

    async def delete(self, subscription_id: str) -> bool:
        if self._subs.pop(subscription_id, None) is None:
            return False
        self._queues.pop(subscription_id, None)
        self._in_flight.pop(subscription_id, None)
        for member_id in self._history.pop(subscription_id, {}).values():
            self._deliveries.pop(member_id, None)
            self._tokens.pop(member_id, None)
        return True

    async def list_subscriptions(
        self, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Subscription]:
        query = subscription_query(cursor, limit)
        ids = sorted(key for key in self._subs if query.admits(key))[: query.limit + 1]
        return subscription_page([decode_subscription(self._subs[key]) for key in ids], limit)

    async def subscriptions(self) -> list[Subscription]:
        return [decode_subscription(raw) for raw in self._subs.values()]

    # outbox

    async def enqueue(self, deliveries: Sequence[Delivery]) -> int:
        now = self._clock()
        while self._seen and next(iter(self._seen.values())) <= now:
            self._seen.popitem(last=False)
        added = 0
        for delivery in deliveries:
            if delivery.id in self._seen or delivery.subscription_id not in self._subs:
                continue
            self._seen[delivery.id] = now + self._dedupe_ttl
            stored = _copy(delivery)
            self._deliveries[stored.id] = stored
            due = stored.next_at if stored.next_at is not None else stored.created_at
            self._queues.setdefault(stored.subscription_id, {})[stored.id] = due
            self._history.setdefault(stored.subscription_id, {})[history_member(stored)] = stored.id
            self._trim(stored.subscription_id)
            added += 1
        return added

    async def claim(self, now: float, lease: float, limit: int) -> list[Claimed]:
        for sub_id, until in list(self._in_flight.items()):
            if until <= now:
                del self._in_flight[sub_id]  # its worker died: the delivery is due again
        ready: list[tuple[float, str, str]] = []
        for sub_id, queue in self._queues.items():
            if sub_id in self._in_flight or not queue:
                continue
            delivery_key, due = min(queue.items(), key=lambda item: (item[1], item[0]))
            if due <= now:
                ready.append((due, sub_id, delivery_key))
        claimed = []
        for _, sub_id, delivery_key in sorted(ready)[:limit]:
            delivery = self._deliveries[delivery_key]
            delivery.attempts += 1
            delivery.last_attempt_at = now
            token = secrets.token_hex(8)
            self._tokens[delivery_key] = token
            self._in_flight[sub_id] = now + lease
            claimed.append(Claimed(delivery=_copy(delivery), token=token, lease_until=now + lease))
        return claimed

    async def complete(self, claimed: Claimed, attempt: Attempt, next_at: float | None) -> bool:
        key = claimed.delivery.id
        delivery = self._deliveries.get(key)
        if delivery is None or self._tokens.get(key) != claimed.token:
            return False
        del self._tokens[key]
        sub_id = delivery.subscription_id
        delivery.last_status = attempt.status
        delivery.last_error = attempt.error
        queue = self._queues.setdefault(sub_id, {})
        if attempt.delivered:
            delivery.state, delivery.delivered_at, delivery.next_at = (
                DeliveryState.DELIVERED,
                attempt.at,
                None,
            )
            queue.pop(key, None)
        elif next_at is None:
            delivery.state, delivery.next_at = DeliveryState.DEAD, None
            queue.pop(key, None)
        else:
            delivery.state, delivery.next_at = DeliveryState.FAILED, next_at
            queue[key] = next_at
        self._in_flight.pop(sub_id, None)
        self._trim(sub_id)
        return True

    def _trim(self, sub_id: str) -> None:
        history = self._history.get(sub_id, {})
        excess = len(history) - self._max_history
        if excess <= 0:
            return
        for member in sorted(history):
            if excess <= 0:
                break
            delivery = self._deliveries.get(history[member])
            if delivery is not None and not delivery.state.finished:
                continue
            del history[member]
            if delivery is not None:
                del self._deliveries[delivery.id]
            excess -= 1

    async def delivery(self, delivery_id: str) -> Delivery | None:
        found = self._deliveries.get(delivery_id)
        return _copy(found) if found is not None else None

    async def deliveries(
        self, subscription_id: str, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Delivery]:
        checked, before = delivery_query(cursor, limit)
        history = self._history.get(subscription_id, {})
        members = sorted((m for m in history if before is None or m < before), reverse=True)
        items = [
            (member, _copy(self._deliveries[history[member]]))
            for member in members[: checked + 1]
            if history[member] in self._deliveries
        ]
        return delivery_page(items, checked)
