"""The dispatcher: events from the log into the outbox, one delivery per matching
subscription, at least once.

It reads the :class:`~services.events.EventLog` after its named cursor (``webhooks``),
enqueues the deliveries, and only then saves the cursor: a dispatcher that dies in between
reads the same events again, and the outbox's dedupe on ``<event id>.<subscription id>``
drops the repeats. The same holds for several dispatchers (replicas of ``csms webhooks``)
reading at once, so none needs to be elected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from services.events import EventLog, EventPage
from services.interfaces import StoreUnavailable
from services.webhooks import Delivery, WebhookStore, delivery_of
from webhooks.config import WebhookConfig
from webhooks.worker import stop_if_cancelled

__all__ = ["CURSOR", "Dispatcher"]

_log = structlog.get_logger("webhooks.dispatcher")

CURSOR = "webhooks"
"""Name of the dispatcher's position in the event log."""
LONG_POLL = 5.0
"""Seconds one wait for new events lasts (a new event ends it at once)."""
ENQUEUE_CHUNK = 200
RETRY_PAUSE = 1.0


class Dispatcher:
    """Fans events out to the subscriptions that want them. ``notify`` is called when new
    deliveries were enqueued (this process's workers look at once instead of at their next
    poll)."""

    def __init__(
        self,
        events: EventLog,
        store: WebhookStore,
        config: WebhookConfig,
        *,
        notify: Callable[[], None] | None = None,
        cursor: str = CURSOR,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._events = events
        self._store = store
        self._config = config
        self._notify = notify
        self._cursor_name = cursor
        self._clock = clock
        self._cursor: str | None = None
        self._started = False

    async def start_position(self) -> str | None:
        """The saved cursor; a first start (none saved) begins after the newest event kept,
        so a new installation does not replay history to its first subscribers."""
        saved = await self._events.get_cursor(self._cursor_name)
        if saved is None:
            saved = await self._events.latest_id()
            if saved is not None:
                await self._events.set_cursor(self._cursor_name, saved)
        return saved

    async def dispatch_once(self, wait: float = 0.0) -> int:
        """Read one batch after the cursor (waiting up to ``wait`` seconds for one), enqueue
        its deliveries, save the cursor; returns how many deliveries were new."""
        if not self._started:
            self._cursor = await self.start_position()
            self._started = True
        limit = self._config.batch
        page: EventPage
        if wait > 0:
            page = await self._events.wait(self._cursor, wait, limit=limit)
        else:
            page = await self._events.read(self._cursor, limit=limit)
        if page.truncated:
            _log.warning(
                "events dropped from the log before webhooks dispatched them",
                after=self._cursor,
            )
        added = 0
        if page.events:
            now = self._clock()
            subscriptions = [sub for sub in await self._store.subscriptions() if sub.active]
            deliveries: list[Delivery] = [
                delivery_of(event, sub, now)
                for event in page.events
                for sub in subscriptions
                if sub.matches(event)
            ]
            for start in range(0, len(deliveries), ENQUEUE_CHUNK):
                added += await self._store.enqueue(deliveries[start : start + ENQUEUE_CHUNK])
            if added and self._notify is not None:
                self._notify()
        if page.last_id is not None and page.last_id != self._cursor:
            await self._events.set_cursor(self._cursor_name, page.last_id)
            self._cursor = page.last_id
        return added

    async def run(self) -> None:
        """Dispatch until cancelled; store outages are logged and waited out."""
        while True:
            stop_if_cancelled()
            try:
                await self.dispatch_once(wait=LONG_POLL)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                _log.warning("webhook dispatch paused: store unavailable", error=str(exc))
                await asyncio.sleep(RETRY_PAUSE)
            except Exception:
                _log.exception("webhook dispatch failed")
                await asyncio.sleep(RETRY_PAUSE)
