"""Build the :class:`~services.Services` a process runs with, from its settings.

``redis_url`` set: Redis stores (one client, fail-fast timeouts, checked with a PING at
start so a wrong URL is reported at once rather than on the first station message).
Unset: in-memory stores, the embedded default. Configured tokens and stations are applied
on top, and ``token_store`` / ``tariff_service`` plug-ins replace the built-in ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from csms.config import Settings
from services import Services
from services.interfaces import StoreUnavailable, TariffService, TokenStore
from services.loader import instantiate
from services.memory import (
    MemoryIdempotencyStore,
    MemoryStationRegistry,
    MemoryTokenStore,
    MemoryTransactionStore,
)
from services.models import AuthorizationStatus, RegistrationStatus, TokenRecord
from services.redis_store import (
    RedisIdempotencyStore,
    RedisStationRegistry,
    RedisTokenStore,
    RedisTransactionStore,
)
from services.tariff import ConfiguredTariff

log = structlog.get_logger(__name__)

REDIS_TIMEOUT = 2.0
"""Seconds to connect to / hear from Redis before an operation fails with StoreUnavailable."""


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redis_client(url: str, timeout: float = REDIS_TIMEOUT) -> aioredis.Redis:
    """A Redis client that fails fast: socket timeouts and a single quick retry (enough to
    replace a pooled connection that died with a Redis restart, no more)."""
    return aioredis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=1),
        health_check_interval=30,
    )


async def ping(client: aioredis.Redis, url: str) -> None:
    """Check Redis answers; StoreUnavailable naming the (redacted) URL when it does not."""
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"Redis at {redact_url(url)} is not reachable: {exc}") from exc


async def _token_store(settings: Settings, default: TokenStore) -> TokenStore:
    if settings.token_store:
        store = cast(TokenStore, await instantiate(settings.token_store, TokenStore, settings))
        if settings.tokens:
            log.warning(
                "configured tokens are not loaded into a plug-in token store",
                token_store=settings.token_store,
                tokens=len(settings.tokens),
            )
        return store
    for token in settings.tokens:
        await default.put(
            TokenRecord(
                id_token=token.id_token,
                status=AuthorizationStatus(token.status),
                expiry=token.expiry,
                group_id=token.group_id,
            )
        )
    return default


async def _tariff(settings: Settings) -> TariffService:
    if settings.tariff_service:
        return cast(
            TariffService, await instantiate(settings.tariff_service, TariffService, settings)
        )
    return ConfiguredTariff(settings.tariff)


async def _provision(
    stations: MemoryStationRegistry | RedisStationRegistry, settings: Settings
) -> None:
    for station in settings.stations:
        await stations.provision(station.station_id, RegistrationStatus(station.registration))


@contextlib.asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """The services for ``settings``, open for the duration of the ``async with``.

    Raises StoreUnavailable when Redis is configured but does not answer, and the loader's
    ValueError / ImportError / TypeError for a broken plug-in.
    """
    accept_unknown = settings.unknown_tokens == "accept"
    if not settings.redis_url:
        memory_stations = MemoryStationRegistry()
        await _provision(memory_stations, settings)
        yield Services(
            stations=memory_stations,
            tokens=await _token_store(settings, MemoryTokenStore(accept_unknown=accept_unknown)),
            transactions=MemoryTransactionStore(),
            tariff=await _tariff(settings),
            idempotency=MemoryIdempotencyStore(),
        )
        return

    client = redis_client(settings.redis_url)
    try:
        await ping(client, settings.redis_url)
        redis_stations = RedisStationRegistry(client)
        await _provision(redis_stations, settings)
        default_tokens = RedisTokenStore(client, accept_unknown=accept_unknown)
        yield Services(
            stations=redis_stations,
            tokens=await _token_store(settings, default_tokens),
            transactions=RedisTransactionStore(client),
            tariff=await _tariff(settings),
            idempotency=RedisIdempotencyStore(client),
        )
    finally:
        await client.aclose()
