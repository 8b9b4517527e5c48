"""Delivery workers: claim due deliveries, POST them signed, record how it went.

One claim loop per process hands each claimed delivery to a task of its own, at most
``workers`` at once. The outbox gives out one delivery per subscription at a time, so a
receiver that hangs holds one task until ``timeout``, never the other subscriptions'. A 2xx
answer is delivered; anything else (another status, a redirect, a timeout, a refused
connection, a token endpoint that fails) is retried after the jittered backoff of
:func:`webhooks.config.retry_delay`, and dead-lettered after ``max_attempts`` tries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import httpx
import structlog

from services.interfaces import StoreUnavailable
from services.outbound_auth import OAuth2TokenProvider, TokenFetchFailed
from services.webhooks import Attempt, Claimed, Delivery, Subscription, WebhookStore
from webhooks.config import WebhookConfig, retry_delay
from webhooks.signing import SIGNATURE_HEADER, signature_header

__all__ = ["USER_AGENT", "DeliveryWorkers"]

_log = structlog.get_logger("webhooks.worker")

USER_AGENT = "csms-webhooks/1"
MAX_RESPONSE_READ = 65_536
"""Bytes of a receiver's answer read (the status is what counts); more closes the
connection."""
MAX_ERROR_LENGTH = 300
RETRY_PAUSE = 1.0


def stop_if_cancelled() -> None:
    """Raise CancelledError when this task was asked to stop. A loop that survives its own
    errors calls it each round: a cancellation a library turned into an error it catches
    (a store client that reports "connection closed" when cancelled mid-read) would
    otherwise be lost, and the loop, its task still "cancelling", would run forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:MAX_ERROR_LENGTH]


class DeliveryWorkers:
    """The claim loop and its delivery tasks. ``http`` must not follow redirects."""

    def __init__(
        self,
        store: WebhookStore,
        config: WebhookConfig,
        *,
        http: httpx.AsyncClient,
        tokens: OAuth2TokenProvider,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._config = config
        self._http = http
        self._tokens = tokens
        self._clock = clock
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Look for due deliveries now (new ones were enqueued)."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self) -> None:
        """Claim and deliver until cancelled (tasks in flight are cancelled too: their
        leases expire and the deliveries are tried again)."""
        try:
            while True:
                stop_if_cancelled()
                self._wake.clear()
                free = self._config.workers - len(self._tasks)
                claimed: list[Claimed] = []
                if free > 0:
                    try:
                        claimed = await self._store.claim(self._clock(), self._config.lease, free)
                    except StoreUnavailable as exc:
                        _log.warning("webhook claims paused: store unavailable", error=str(exc))
                        await asyncio.sleep(RETRY_PAUSE)
                        continue
                for item in claimed:
                    task = asyncio.create_task(self._deliver(item))
                    self._tasks.add(task)
                    task.add_done_callback(self._finished)
                if claimed and len(claimed) == free:
                    continue  # maybe more are due; the next claim has no slots or finds none
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._config.poll_interval):
                        await self._wake.wait()
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()  # a slot is free, and its subscription may have more due

    async def _deliver(self, claimed: Claimed) -> None:
        delivery = claimed.delivery
        try:
            subscription = await self._store.get(delivery.subscription_id)
            if subscription is None:
                return  # deleted meanwhile: its deliveries went with it
            attempt = await self.attempt(subscription, delivery)
            next_at: float | None = None
            if not attempt.delivered:
                delay = retry_delay(self._config, delivery.attempts)
                next_at = None if delay is None else attempt.at + delay
            kept = await self._store.complete(claimed, attempt, next_at)
        except StoreUnavailable as exc:
            _log.warning(
                "webhook delivery not recorded: store unavailable (it will be tried again)",
                delivery=delivery.id,
                error=str(exc),
            )
            return
        except Exception:
            _log.exception("webhook delivery failed unexpectedly", delivery=delivery.id)
            return
        self._log(subscription, delivery, attempt, next_at, kept)

    def _log(
        self,
        subscription: Subscription,
        delivery: Delivery,
        attempt: Attempt,
        next_at: float | None,
        kept: bool,
    ) -> None:
        facts = {
            "subscription": subscription.id,
            "delivery": delivery.id,
            "event_kind": delivery.event_kind,
            "attempt": delivery.attempts,
            "status": attempt.status,
        }
        if not kept:
            _log.info("webhook delivery outcome ignored: its lease was lost", **facts)
        elif attempt.delivered:
            _log.debug("webhook delivered", **facts)
        elif next_at is None:
            _log.warning("webhook delivery dead-lettered", error=attempt.error, **facts)
        else:
            _log.info(
                "webhook delivery failed; will retry",
                error=attempt.error,
                retry_in=round(next_at - attempt.at, 3),
                **facts,
            )

    async def attempt(self, subscription: Subscription, delivery: Delivery) -> Attempt:
        """One try of ``delivery`` to ``subscription``'s receiver, within ``timeout``."""
        body = delivery.body.encode()
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self._config.timeout):
                status = await self._post(subscription, delivery, body)
        except TimeoutError:
            error = f"no answer within {self._config.timeout:g} s"
        except TokenFetchFailed as exc:
            error = str(exc)[:MAX_ERROR_LENGTH]
        except httpx.HTTPError as exc:
            error = _error_text(exc)
        delivered = status is not None and 200 <= status < 300
        if status is not None and not delivered:
            error = f"HTTP {status}"
        return Attempt(at=self._clock(), delivered=delivered, status=status, error=error)

    async def _post(self, subscription: Subscription, delivery: Delivery, body: bytes) -> int:
        auth = subscription.auth
        token = await self._tokens.token(auth) if auth is not None else None
        status = await self._send(subscription, delivery, body, token)
        if status == 401 and auth is not None and token is not None:
            self._tokens.invalidate(auth, token)  # revoked early? once, with a fresh one
            token = await self._tokens.token(auth)
            status = await self._send(subscription, delivery, body, token)
        return status

    async def _send(
        self, subscription: Subscription, delivery: Delivery, body: bytes, token: str | None
    ) -> int:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-CSMS-Event-Id": delivery.event_id,
            "X-CSMS-Event-Kind": delivery.event_kind,
            "X-CSMS-Delivery-Attempt": str(delivery.attempts),
            SIGNATURE_HEADER: signature_header(subscription.secret, body),
        }
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = self._http.build_request("POST", subscription.url, content=body, headers=headers)
        response = await self._http.send(request, stream=True, follow_redirects=False)
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read > MAX_RESPONSE_READ:
                    break
        finally:
            await response.aclose()
        return response.status_code
