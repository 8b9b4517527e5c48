"""Webhooks: the outbox contract (memory here; tests/integration/test_webhooks_redis.py runs
the same tests on Redis), signatures, the retry schedule, OAuth2 tokens, and deliveries to
real HTTP receivers (uvicorn in the test) through the dispatcher and the workers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from api import ApiServer
from services.events import Event, EventKind, EventPage, MemoryEventLog, event_of, utc_now
from services.interfaces import StoreUnavailable
from services.outbound_auth import ClientCredentials, OAuth2TokenProvider, TokenFetchFailed
from services.webhooks import (
    Attempt,
    Claimed,
    Delivery,
    DeliveryState,
    MemoryWebhookStore,
    Subscription,
    WebhookStore,
    check_events,
    check_url,
    delivery_of,
)
from tests.timing import timeout
from webhooks import WebhookConfig, WebhookRunner, retry_delay, signing
from webhooks.signing import sign, signature_header, verify_signature

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_768_478_400.0
LEASE = 30.0

StoreFactory = Callable[..., Awaitable[WebhookStore]]


@pytest.fixture
def make_store() -> StoreFactory:
    async def make(**options: Any) -> WebhookStore:
        return MemoryWebhookStore(**options)

    return make


def subscription(sub_id: str, **fields: Any) -> Subscription:
    values: dict[str, Any] = {
        "id": sub_id,
        "url": "http://127.0.0.1:9/hook",
        "secret": "s" * 16,
        "created_at": "2026-01-15T12:00:00.000Z",
        "updated_at": "2026-01-15T12:00:00.000Z",
    }
    values.update(fields)
    return Subscription(**values)


def event(event_id: str, kind: str = "station.connected", station: str | None = "CS1") -> Event:
    return Event(kind=kind, at="2026-01-15T12:00:00.000Z", station_id=station, id=event_id)


def failed(at: float, status: int = 500) -> Attempt:
    return Attempt(at=at, delivered=False, status=status, error=f"HTTP {status}")


# --- the outbox contract ---------------------------------------------------------------------


async def test_store_subscriptions_crud_and_pages(make_store: StoreFactory) -> None:
    store = await make_store()
    for index in range(5):
        await store.create(subscription(f"{index:016x}"))
    assert (await store.get(f"{2:016x}")) == subscription(f"{2:016x}")
    assert await store.get("f" * 16) is None
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_subscriptions(cursor=cursor, limit=2)
        seen += [sub.id for sub in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"{index:016x}" for index in range(5)]
    with pytest.raises(ValueError, match="cursor"):
        await store.list_subscriptions(cursor="nonsense")
    changed = subscription(f"{1:016x}", url="https://example.com/x", active=False)
    assert await store.replace(changed)
    assert (await store.get(changed.id)) == changed
    assert not await store.replace(subscription("e" * 16))
    assert await store.delete(changed.id)
    assert not await store.delete(changed.id)
    assert sorted(sub.id for sub in await store.subscriptions()) == [
        f"{index:016x}" for index in (0, 2, 3, 4)
    ]


async def test_store_enqueues_once_per_event_and_subscription(make_store: StoreFactory) -> None:
    store = await make_store()
    sub = subscription("a" * 16)
    await store.create(sub)
    first = delivery_of(event("1-0"), sub, T0)
    assert await store.enqueue([first, delivery_of(event("2-0"), sub, T0)]) == 2
    assert await store.enqueue([first]) == 0  # a second dispatcher, or a replay
    unknown = delivery_of(event("3-0"), subscription("b" * 16), T0)
    assert await store.enqueue([unknown]) == 0  # no such subscription (deleted meanwhile)
    stored = await store.delivery(first.id)
    assert stored is not None and stored.state is DeliveryState.PENDING
    assert stored.body == first.body and json.loads(stored.body)["id"] == "1-0"


async def test_store_claims_one_per_subscription_oldest_first(make_store: StoreFactory) -> None:
    store = await make_store()
    a, b = subscription("a" * 16), subscription("b" * 16)
    await store.create(a)
    await store.create(b)
    await store.enqueue([delivery_of(event("1-0"), b, T0 + 1), delivery_of(event("2-0"), b, T0)])
    await store.enqueue([delivery_of(event("3-0"), a, T0 + 2)])
    assert await store.claim(T0 - 1, LEASE, 10) == []  # nothing due yet
    claimed = await store.claim(T0 + 5, LEASE, 10)
    assert [c.delivery.id for c in claimed] == [f"2-0.{b.id}", f"3-0.{a.id}"]
    assert all(c.delivery.attempts == 1 for c in claimed)
    assert await store.claim(T0 + 5, LEASE, 10) == []  # both subscriptions are in flight
    for item in claimed:
        assert await store.complete(item, Attempt(at=T0 + 6, delivered=True, status=204), None)
    again = await store.claim(T0 + 7, LEASE, 10)
    assert [c.delivery.id for c in again] == [f"1-0.{b.id}"]
    done = await store.delivery(f"2-0.{b.id}")
    assert done is not None and done.state is DeliveryState.DELIVERED
    assert done.delivered_at == T0 + 6 and done.last_status == 204 and done.next_at is None


async def test_store_limit_counts_subscriptions(make_store: StoreFactory) -> None:
    store = await make_store()
    subs = [subscription(f"{index:016x}") for index in range(3)]
    for index, sub in enumerate(subs):
        await store.create(sub)
        await store.enqueue([delivery_of(event(f"{index}-0"), sub, T0 + index)])
    first = await store.claim(T0 + 10, LEASE, 2)
    assert [c.delivery.subscription_id for c in first] == [subs[0].id, subs[1].id]
    second = await store.claim(T0 + 10, LEASE, 2)
    assert [c.delivery.subscription_id for c in second] == [subs[2].id]


async def test_store_retries_then_dead_letters(make_store: StoreFactory) -> None:
    store = await make_store()
    sub = subscription("a" * 16)
    await store.create(sub)
    await store.enqueue([delivery_of(event("1-0"), sub, T0)])
    (claimed,) = await store.claim(T0, LEASE, 1)
    assert await store.complete(claimed, failed(T0 + 1), T0 + 60)
    stored = await store.delivery(claimed.delivery.id)
    assert stored is not None
    assert (stored.state, stored.next_at, stored.last_status) == (
        DeliveryState.FAILED,
        T0 + 60,
        500,
    )
    assert await store.claim(T0 + 59, LEASE, 1) == []  # not due before its retry time
    (retry,) = await store.claim(T0 + 60, LEASE, 1)
    assert retry.delivery.attempts == 2 and retry.token != claimed.token
    assert not await store.complete(claimed, failed(T0 + 61), T0 + 99)  # an old token
    error = Attempt(at=T0 + 61, delivered=False, error="ConnectError: refused")
    assert await store.complete(retry, error, None)
    dead = await store.delivery(retry.delivery.id)
    assert dead is not None and dead.state is DeliveryState.DEAD
    assert (dead.last_status, dead.last_error, dead.next_at) == (
        None,
        "ConnectError: refused",
        None,
    )
    assert await store.claim(T0 + 10_000, LEASE, 1) == []


async def test_store_lease_expires_and_the_delivery_is_claimed_again(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    sub = subscription("a" * 16)
    await store.create(sub)
    await store.enqueue([delivery_of(event("1-0"), sub, T0)])
    (lost,) = await store.claim(T0, LEASE, 1)  # its worker dies mid-delivery
    assert await store.claim(T0 + LEASE - 1, LEASE, 1) == []
    (again,) = await store.claim(T0 + LEASE, LEASE, 1)
    assert again.delivery.id == lost.delivery.id and again.delivery.attempts == 2
    assert not await store.complete(lost, Attempt(at=T0 + LEASE, delivered=True), None)
    assert await store.complete(again, Attempt(at=T0 + LEASE + 1, delivered=True), None)


async def test_store_history_is_bounded_and_paged_newest_first(make_store: StoreFactory) -> None:
    store = await make_store(max_history=3)
    sub = subscription("a" * 16)
    await store.create(sub)
    for index in range(5):
        await store.enqueue([delivery_of(event(f"{index}-0"), sub, T0 + index)])
    # Unfinished deliveries are kept whatever the bound.
    page = await store.deliveries(sub.id, limit=100)
    assert [d.event_id for d in page.items] == ["4-0", "3-0", "2-0", "1-0", "0-0"]
    for step in range(5):
        (claimed,) = await store.claim(T0 + 100 + step, LEASE, 1)
        await store.complete(claimed, Attempt(at=T0 + 100 + step, delivered=True), None)
    listed: list[Delivery] = []
    cursor = None
    while True:
        page = await store.deliveries(sub.id, cursor=cursor, limit=2)
        listed += page.items
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [d.event_id for d in listed] == ["4-0", "3-0", "2-0"]
    assert await store.delivery(f"0-0.{sub.id}") is None
    with pytest.raises(ValueError, match="cursor"):
        await store.deliveries(sub.id, cursor="nope")


async def test_store_delete_drops_deliveries_and_late_completions(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    sub = subscription("a" * 16)
    await store.create(sub)
    await store.enqueue([delivery_of(event(f"{i}-0"), sub, T0) for i in range(3)])
    (claimed,) = await store.claim(T0, LEASE, 1)
    assert await store.delete(sub.id)
    assert not await store.complete(claimed, Attempt(at=T0 + 1, delivered=True), None)
    assert (await store.deliveries(sub.id)).items == []
    assert await store.claim(T0 + LEASE * 2, LEASE, 10) == []


# --- pure parts --------------------------------------------------------------------------------


def test_subscriptions_match_kinds_and_stations() -> None:
    everything = subscription("a" * 16)
    some = subscription("b" * 16, events=("transaction.ended",), station_ids=("CS1",))
    paused = subscription("c" * 16, active=False)
    ended = event("1-0", "transaction.ended", "CS1")
    assert everything.matches(ended) and some.matches(ended) and not paused.matches(ended)
    assert not some.matches(event("2-0", "transaction.ended", "CS2"))
    assert not some.matches(event("3-0", "transaction.started", "CS1"))
    assert not some.matches(event("4-0", "transaction.ended", None))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "example.com/hook",
        "http:///nohost",
        "https://user:pw@example.com/",
        "https://example.com/a b",
        "https://example.com:99999/",
        "https://example.com/" + "x" * 2100,
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        check_url(url)


def test_good_urls_and_event_kinds() -> None:
    assert check_url("https://example.com:8443/hooks?x=1") == "https://example.com:8443/hooks?x=1"
    assert check_url("http://[::1]:8080/") == "http://[::1]:8080/"
    assert check_events(["*"]) == ("*",)
    assert check_events(["transaction.ended", "transaction.ended"]) == ("transaction.ended",)
    for bad in ([], ["*", "station.booted"], ["no.such.kind"]):
        with pytest.raises(ValueError):
            check_events(bad)


def test_signature_verifies_and_tampering_fails() -> None:
    body = b'{"kind":"station.connected","id":"1-0"}'
    now = int(time.time())
    header = signature_header("secret-0123456789", body, now)
    expected = hmac.new(b"secret-0123456789", f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert (
        header == f"t={now},v1={expected}" == f"t={now},v1={sign('secret-0123456789', now, body)}"
    )
    assert verify_signature("secret-0123456789", header, body)
    assert not verify_signature("another-secret-xx", header, body)
    assert not verify_signature("secret-0123456789", header, body + b" ")
    old = signature_header("secret-0123456789", body, now - 301)
    assert not verify_signature("secret-0123456789", old, body)
    assert verify_signature("secret-0123456789", old, body, tolerance=400)
    for broken in ("", "t=abc,v1=00", "v1=00", "garbage"):
        assert not verify_signature("secret-0123456789", broken, body)


def _docs_snippet() -> str:
    text = (ROOT / "docs" / "events.md").read_text()
    section = text[text.index("## Webhooks") :]
    blocks: list[str] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return next(block for block in blocks if "def verify_signature" in block)


def test_the_docs_snippet_is_the_verifier_and_runs() -> None:
    snippet = _docs_snippet()
    assert inspect.getsource(signing.verify_signature) in snippet
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/events.md", "exec"), namespace)
    body = b'{"id":"1-0"}'
    header = signature_header("receiver-secret-01", body)
    assert namespace["verify_signature"]("receiver-secret-01", header, body) is True
    assert namespace["verify_signature"]("receiver-secret-01", header, body + b"x") is False


def test_retry_delays_follow_the_schedule_with_full_jitter() -> None:
    config = WebhookConfig(max_attempts=4, retry_schedule=(10, 30, 120))
    highest = [retry_delay(config, n, lambda low, high: high) for n in range(1, 5)]
    assert highest == [10, 30, 120, None]
    lowest = [retry_delay(config, n, lambda low, high: low) for n in range(1, 4)]
    assert lowest == [0, 0, 0]
    long = WebhookConfig(max_attempts=10, retry_schedule=(10, 30))
    assert retry_delay(long, 7, lambda low, high: high) == 30  # the last step repeats


# --- real receivers ----------------------------------------------------------------------------


@dataclass
class Receiver:
    """What a receiver saw: every request, and its deduplicated view by event id."""

    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def saw(self, request: Request, body: bytes) -> None:
        self.requests.append(({k.lower(): v for k, v in request.headers.items()}, body))
        self.changed.set()

    async def until(self, check: Callable[[], bool], seconds: float = 10) -> None:
        async with asyncio.timeout(timeout(seconds)):
            while not check():
                self.changed.clear()
                await self.changed.wait()


Behaviour = Callable[[Request, bytes, int], Awaitable[Response]]


@contextlib.asynccontextmanager
async def receiver(behave: Behaviour) -> AsyncIterator[tuple[str, Receiver]]:
    """A real HTTP receiver on a free port: ``behave(request, body, n)`` answers the n-th
    request (from 1); 2xx answers add the event to the deduplicated view."""
    seen = Receiver()
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        body = await request.body()
        seen.saw(request, body)
        answer = await behave(request, body, len(seen.requests))
        if 200 <= answer.status_code < 300:
            seen.events.setdefault(request.headers["x-csms-event-id"], json.loads(body))
        return answer

    async with ApiServer(app, "127.0.0.1", 0) as server:
        yield f"{server.url}/hook", seen


def config(**changes: Any) -> WebhookConfig:
    values: dict[str, Any] = {
        "workers": 4,
        "max_attempts": 3,
        "retry_schedule": (0.01,),
        "timeout": 5.0,
        "lease": 30.0,
        "poll_interval": 0.05,
    }
    values.update(changes)
    return WebhookConfig(**values)


async def wait_for(check: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    async with asyncio.timeout(timeout(seconds)):
        while not await check():  # noqa: ASYNC110 (polls a store, which has no event)
            await asyncio.sleep(0.01)


async def state_of(store: WebhookStore, delivery_key: str) -> DeliveryState | None:
    found = await store.delivery(delivery_key)
    return found.state if found is not None else None


SECRET = "whsec-0123456789abcdef"


async def test_fails_twice_then_delivers_once_signed() -> None:
    async def flaky(_request: Request, _body: bytes, n: int) -> Response:
        return Response(status_code=500 if n <= 2 else 204)

    events, store = MemoryEventLog(), MemoryWebhookStore()
    async with receiver(flaky) as (url, seen):
        sub = subscription("a" * 16, url=url, secret=SECRET)
        await store.create(sub)
        async with WebhookRunner(events, store, config()):
            appended = await events.append(
                event_of(EventKind.TRANSACTION_ENDED, utc_now(), "CS1", {"transaction_id": "T1"})
            )
            key = f"{appended.id}.{sub.id}"
            await wait_for(lambda: _is(store, key, DeliveryState.DELIVERED))
    assert list(seen.events) == [appended.id]
    assert seen.events[appended.id]["data"] == {"transaction_id": "T1"}
    assert len(seen.requests) == 3
    for index, (headers, body) in enumerate(seen.requests, start=1):
        assert verify_signature(SECRET, headers["x-csms-signature"], body)
        assert headers["x-csms-event-id"] == appended.id
        assert headers["x-csms-event-kind"] == "transaction.ended"
        assert headers["content-type"] == "application/json"
        assert headers["x-csms-delivery-attempt"] == str(index)
        assert json.loads(body)["id"] == appended.id
    delivered = await store.delivery(key)
    assert delivered is not None
    assert (delivered.attempts, delivered.last_status) == (3, 204)


async def _is(store: WebhookStore, key: str, state: DeliveryState) -> bool:
    return await state_of(store, key) is state


async def test_dead_lettered_after_the_last_attempt() -> None:
    async def broken(_request: Request, _body: bytes, _n: int) -> Response:
        return Response(status_code=503)

    events, store = MemoryEventLog(), MemoryWebhookStore()
    async with receiver(broken) as (url, seen):
        sub = subscription("a" * 16, url=url)
        await store.create(sub)
        async with WebhookRunner(events, store, config(max_attempts=3)):
            appended = await events.append(event_of(EventKind.STATION_BOOTED, utc_now(), "X", {}))
            key = f"{appended.id}.{sub.id}"
            await wait_for(lambda: _is(store, key, DeliveryState.DEAD))
    dead = await store.delivery(key)
    assert dead is not None
    assert (dead.attempts, dead.last_status, dead.last_error) == (3, 503, "HTTP 503")
    assert len(seen.requests) == 3 and seen.events == {}


async def test_redirects_are_not_followed() -> None:
    async def moved(_request: Request, _body: bytes, _n: int) -> Response:
        return Response(status_code=307, headers={"Location": "http://127.0.0.1:9/elsewhere"})

    events, store = MemoryEventLog(), MemoryWebhookStore()
    async with receiver(moved) as (url, seen):
        sub = subscription("a" * 16, url=url)
        await store.create(sub)
        async with WebhookRunner(events, store, config(max_attempts=1)):
            appended = await events.append(event_of(EventKind.STATION_BOOTED, utc_now(), "X", {}))
            await wait_for(lambda: _is(store, f"{appended.id}.{sub.id}", DeliveryState.DEAD))
    assert len(seen.requests) == 1
    dead = await store.delivery(f"{appended.id}.{sub.id}")
    assert dead is not None and dead.last_status == 307


async def test_a_hanging_receiver_does_not_delay_other_subscriptions() -> None:
    release = asyncio.Event()

    async def hangs(_request: Request, _body: bytes, _n: int) -> Response:
        await release.wait()
        return Response(status_code=204)

    async def fine(_request: Request, _body: bytes, _n: int) -> Response:
        return Response(status_code=204)

    events, store = MemoryEventLog(), MemoryWebhookStore()
    async with receiver(hangs) as (slow_url, slow), receiver(fine) as (fast_url, fast):
        await store.create(subscription("a" * 16, url=slow_url))
        await store.create(subscription("b" * 16, url=fast_url))
        # Two workers: the hanging receiver holds one of them, never both.
        async with WebhookRunner(events, store, config(workers=2, timeout=60, lease=120)):
            ids = [
                (await events.append(event_of(EventKind.CONNECTOR_STATUS, utc_now(), "CS", {}))).id
                for _ in range(5)
            ]
            await fast.until(lambda: len(fast.events) == 5)
            assert list(fast.events) == ids
            assert len(slow.requests) == 1  # still answering its first delivery
            release.set()
            await slow.until(lambda: len(slow.events) == 5)
    assert list(slow.events) == ids


async def test_a_deleted_subscription_gets_nothing_more() -> None:
    async def fine(_request: Request, _body: bytes, _n: int) -> Response:
        return Response(status_code=200)

    events, store = MemoryEventLog(), MemoryWebhookStore()
    async with receiver(fine) as (url, seen):
        kept = subscription("a" * 16, url=url, events=("station.booted",))
        gone = subscription("b" * 16, url=url)
        await store.create(kept)
        await store.create(gone)
        await store.delete(gone.id)
        async with WebhookRunner(events, store, config()):
            await events.append(event_of(EventKind.STATION_CONNECTED, utc_now(), "X", {}))
            booted = await events.append(event_of(EventKind.STATION_BOOTED, utc_now(), "X", {}))
            await seen.until(lambda: booted.id in seen.events)
    assert list(seen.events) == [booted.id]  # the connected event matched no subscription


# --- OAuth2 ------------------------------------------------------------------------------------


@dataclass
class TokenEndpoint:
    lifetime: float = 3600.0
    issued: list[str] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    status: int = 200


@contextlib.asynccontextmanager
async def token_endpoint(endpoint: TokenEndpoint) -> AsyncIterator[str]:
    app = FastAPI()

    @app.post("/token")
    async def issue(request: Request) -> Response:
        endpoint.forms.append(dict(parse_qsl((await request.body()).decode())))
        endpoint.authorizations.append(request.headers.get("authorization"))
        await asyncio.sleep(0.05)  # concurrent askers overlap with this fetch
        if endpoint.status != 200:
            return Response(status_code=endpoint.status)
        token = f"tok-{len(endpoint.issued) + 1}"
        endpoint.issued.append(token)
        body = {"access_token": token, "token_type": "Bearer", "expires_in": endpoint.lifetime}
        return Response(json.dumps(body), media_type="application/json")

    async with ApiServer(app, "127.0.0.1", 0) as server:
        yield f"{server.url}/token"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_oauth2_token_fetched_once_cached_and_refreshed_ahead_of_expiry() -> None:
    endpoint, clock = TokenEndpoint(lifetime=600), Clock()
    async with token_endpoint(endpoint) as url:
        credentials = ClientCredentials(
            token_url=url, client_id="csms", client_secret="pw", scope="hooks", audience="rx"
        )
        provider = OAuth2TokenProvider(clock=clock)
        try:
            tokens = await asyncio.gather(*(provider.token(credentials) for _ in range(10)))
            assert set(tokens) == {"tok-1"} and provider.fetches == 1
            clock.now += 600 - 61
            assert await provider.token(credentials) == "tok-1"
            clock.now += 2  # within the last 60 s of its life: replaced
            assert await provider.token(credentials) == "tok-2"
            provider.invalidate(credentials, "tok-1")  # an old token: nothing happens
            assert await provider.token(credentials) == "tok-2"
            provider.invalidate(credentials, "tok-2")
            assert await provider.token(credentials) == "tok-3"
        finally:
            await provider.aclose()
    assert endpoint.forms[0] == {
        "grant_type": "client_credentials",
        "scope": "hooks",
        "audience": "rx",
    }
    assert endpoint.authorizations[0] == httpx.BasicAuth("csms", "pw")._auth_header


async def test_oauth2_post_method_and_refusals() -> None:
    endpoint = TokenEndpoint()
    async with token_endpoint(endpoint) as url:
        provider = OAuth2TokenProvider()
        try:
            post = ClientCredentials(
                token_url=url,
                client_id="csms",
                client_secret="pw",
                auth_method="client_secret_post",
            )
            assert await provider.token(post) == "tok-1"
            assert endpoint.forms[0]["client_secret"] == "pw"
            assert endpoint.authorizations[0] is None
            endpoint.status = 401
            other = ClientCredentials(token_url=url, client_id="x", client_secret="y")
            with pytest.raises(TokenFetchFailed, match="401"):
                await provider.token(other)
        finally:
            await provider.aclose()


async def test_deliveries_carry_the_bearer_token_and_a_401_refreshes_it_once() -> None:
    endpoint = TokenEndpoint()
    accepted: set[str] = set()

    async def guarded(request: Request, _body: bytes, _n: int) -> Response:
        bearer = request.headers.get("authorization", "")
        return Response(status_code=204 if bearer.removeprefix("Bearer ") in accepted else 401)

    events, store = MemoryEventLog(), MemoryWebhookStore()
    async with token_endpoint(endpoint) as token_url, receiver(guarded) as (url, seen):
        auth = ClientCredentials(token_url=token_url, client_id="csms", client_secret="pw")
        sub = subscription("a" * 16, url=url, auth=auth)
        await store.create(sub)
        async with WebhookRunner(events, store, config(workers=1)) as runner:
            accepted.add("tok-1")
            first = await events.append(event_of(EventKind.STATION_BOOTED, utc_now(), "X", {}))
            second = await events.append(event_of(EventKind.STATION_BOOTED, utc_now(), "X", {}))
            await seen.until(lambda: len(seen.events) == 2)
            assert endpoint.issued == ["tok-1"]  # one fetch for both deliveries
            accepted.clear()
            accepted.add("tok-2")  # the receiver revoked tok-1 early
            third = await events.append(event_of(EventKind.STATION_BOOTED, utc_now(), "X", {}))
            await seen.until(lambda: third.id in seen.events)
            assert runner.tokens.fetches == 2
    assert endpoint.issued == ["tok-1", "tok-2"]
    assert list(seen.events) == [first.id, second.id, third.id]
    bearers = [headers["authorization"] for headers, _ in seen.requests]
    assert bearers == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    delivered = await store.delivery(f"{third.id}.{sub.id}")
    assert delivered is not None and delivered.attempts == 1  # the retry was in the same try


class ClaimsThatSwallowCancellation(MemoryWebhookStore):
    """A store whose client, cancelled mid-read, reports the connection as lost (as Redis
    clients can), so the claim loop sees StoreUnavailable instead of CancelledError."""

    async def claim(self, now: float, lease: float, limit: int) -> list[Claimed]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise StoreUnavailable("connection closed by server") from None
        return []


class EventsThatSwallowCancellation(MemoryEventLog):
    async def wait(
        self,
        after: str | None,
        timeout: float,  # noqa: ASYNC109
        *,
        limit: int = 100,
        kinds: frozenset[str] | None = None,
        station_id: str | None = None,
    ) -> EventPage:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise StoreUnavailable("connection closed by server") from None
        raise AssertionError("unreachable")


async def test_the_runner_stops_even_when_a_store_turns_its_cancellation_into_an_error() -> None:
    events, store = EventsThatSwallowCancellation(), ClaimsThatSwallowCancellation()
    runner = WebhookRunner(events, store, config())
    await runner.__aenter__()
    await asyncio.sleep(0.05)  # both loops wait in their store
    async with asyncio.timeout(timeout(10)):
        await runner.__aexit__(None, None, None)
    assert all(task.done() for task in runner._tasks)
