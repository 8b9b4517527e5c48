"""Webhooks: the dispatcher and the delivery workers, a process role of its own.

``csms webhooks`` runs them against the fleet's event log and outbox (Redis); ``csms run``
runs them as background tasks of the embedded process. They are never on a station's
message path: managers only append events, and everything here reads the log afterwards.

:class:`WebhookRunner` starts both as tasks for the duration of an ``async with``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import httpx
import structlog

from services.events import EventLog
from services.interfaces import StoreUnavailable
from services.outbound_auth import OAuth2TokenProvider
from services.webhooks import WebhookStore
from webhooks.config import WebhookConfig, retry_delay
from webhooks.dispatcher import Dispatcher
from webhooks.signing import sign, signature_header, verify_signature
from webhooks.worker import DeliveryWorkers

__all__ = [
    "DeliveryWorkers",
    "Dispatcher",
    "WebhookConfig",
    "WebhookRunner",
    "retry_delay",
    "sign",
    "signature_header",
    "verify_signature",
]

_log = structlog.get_logger("webhooks")


STOP_TIMEOUT = 5.0
"""Seconds the runner waits for its tasks to stop when it exits."""


class WebhookRunner:
    """Dispatcher + delivery workers on ``events`` and ``store``, as two tasks."""

    def __init__(
        self,
        events: EventLog,
        store: WebhookStore,
        config: WebhookConfig,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout), follow_redirects=False
        )
        self.tokens = OAuth2TokenProvider(self.http)
        self.workers = DeliveryWorkers(store, config, http=self.http, tokens=self.tokens)
        self.dispatcher = Dispatcher(events, store, config, notify=self.workers.wake)
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> WebhookRunner:
        try:
            await self.dispatcher.dispatch_once()  # place the cursor before anything else
        except StoreUnavailable as exc:
            _log.warning("webhook store unavailable at start; retrying", error=str(exc))
        self._tasks = [
            asyncio.create_task(self.dispatcher.run(), name="webhook-dispatcher"),
            asyncio.create_task(self.workers.run(), name="webhook-workers"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        # Bounded: a task that does not stop (a cancellation lost in a library) must not
        # hold up the process's shutdown.
        done, stuck = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                _log.error(
                    "webhook task failed", task=task.get_name(), error=repr(task.exception())
                )
        if stuck:
            _log.warning("webhook tasks did not stop in time", tasks=[t.get_name() for t in stuck])
        await self.tokens.aclose()
        if self._own_http:
            await self.http.aclose()
