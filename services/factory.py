"""Build the :class:`~services.Services` a process runs with, from its settings.

``redis_url`` set: Redis stores (one client, fail-fast timeouts, checked with a PING at
start so a wrong URL is reported at once rather than on the first station message). What a
station message costs (the Call's scripts, the registry reads, the message log's flush, the
event appends) goes through a second, thin client (:mod:`services.resp`: one pipelined
connection, much less CPU per command than redis-py); everything else stays on redis-py.
Unset: in-memory stores, the embedded default. Configured tokens and stations are applied
on top, and ``token_store`` / ``tariff_service`` plug-ins replace the built-in ones.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import AuthenticationError, RedisError

from csms.config import Settings, StationSettings
from services import Services
from services.action_rules import CachedActionRules, MemoryActionRuleStore
from services.call_records import MemoryCallRecordStore
from services.certificates import open_signer
from services.data_transfer import open_registry
from services.events import MemoryEventLog
from services.interfaces import StationRegistry, StoreUnavailable, TariffService, TokenStore
from services.loader import instantiate
from services.memory import (
    MemoryIdempotencyStore,
    MemoryStationRegistry,
    MemoryTokenStore,
    MemoryTransactionStore,
)
from services.message_log import MemoryMessageLog, MessageLog, NullMessageLog
from services.models import (
    AuthorizationStatus,
    RegistrationStatus,
    StationCredentials,
    StationRecord,
    TokenRecord,
)
from services.pnc import open_pnc
from services.redis_action_rules import RedisActionRuleStore
from services.redis_api_keys import RedisApiKeyStore
from services.redis_call_records import RedisCallRecordStore
from services.redis_events import RedisEventLog
from services.redis_message_log import RedisMessageLog
from services.redis_station_reports import RedisStationReportStore
from services.redis_station_state import RedisStationStateStore
from services.redis_store import (
    RedisIdempotencyStore,
    RedisStationRegistry,
    RedisTokenStore,
    RedisTransactionStore,
)
from services.redis_webhooks import RedisWebhookStore
from services.resp import RespClient
from services.tariff import ConfiguredTariff
from services.webhooks import MemoryWebhookStore

log = structlog.get_logger(__name__)

REDIS_TIMEOUT = 2.0
"""Seconds to connect to / hear from Redis before an operation fails with StoreUnavailable."""
DEFAULT_POOL_SIZE = 100
POOL_HEADROOM = 64
"""Connections beyond ``manager_concurrency`` (admission lookups, housekeeping)."""


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


def redis_client(
    url: str,
    timeout: float = REDIS_TIMEOUT,
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    max_connections: int = DEFAULT_POOL_SIZE,
) -> aioredis.Redis:
    """A Redis client that fails fast: socket timeouts and a single quick retry (enough to
    replace a pooled connection that died with a Redis restart, no more).

    Credentials come from the URL (``redis://user:pass@host``, or ``redis://:pass@host`` for
    ``requirepass``). A ``rediss://`` URL is TLS 1.2+ with the server certificate verified
    against ``ca_file`` (default: the system's CAs) and its host name checked; ``cert_file``
    / ``key_file`` present a client certificate (Redis ``tls-auth-clients``).

    The pool holds up to ``max_connections`` and, when all are busy, a caller waits up to
    ``timeout`` for one instead of failing at once ("Too many connections"): a burst (a
    reconnect storm, a stalled Redis) then slows down instead of turning into errors.
    """
    tls: dict[str, Any] = {}
    if urlsplit(url).scheme == "rediss":
        tls = {
            "ssl_ca_certs": ca_file,
            "ssl_certfile": cert_file,
            "ssl_keyfile": key_file,
            "ssl_cert_reqs": "required",
            "ssl_min_version": ssl.TLSVersion.TLSv1_2,
        }
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        decode_responses=False,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=1),
        health_check_interval=30,
        **tls,
    )
    return aioredis.Redis(connection_pool=pool)


def settings_resp_client(settings: Settings) -> RespClient:
    """The thin hot-path client (:mod:`services.resp`) for ``settings.redis_url``, with the
    same TLS files and timeout as :func:`settings_redis_client`; it connects on first use."""
    if not settings.redis_url:
        raise ValueError("redis_url is not set")
    return RespClient.from_url(
        settings.redis_url,
        timeout=REDIS_TIMEOUT,
        ca_file=settings.redis_ca_file,
        cert_file=settings.redis_cert_file,
        key_file=settings.redis_key_file,
    )


def settings_redis_client(settings: Settings) -> aioredis.Redis:
    """The client for ``settings.redis_url`` with its TLS files."""
    if not settings.redis_url:
        raise ValueError("redis_url is not set")
    return redis_client(
        settings.redis_url,
        ca_file=settings.redis_ca_file,
        cert_file=settings.redis_cert_file,
        key_file=settings.redis_key_file,
        max_connections=pool_size(settings),
    )


def pool_size(settings: Settings) -> int:
    """Redis connections one process may open: one per message a manager handles at once
    (``manager_concurrency``) plus room for the gateway's admission lookups and background
    work, so the pool is never what refuses a station."""
    return settings.manager_concurrency + POOL_HEADROOM


async def ping(client: aioredis.Redis, url: str) -> None:
    """Check Redis answers; StoreUnavailable naming the (redacted) URL when it does not."""
    try:
        await client.ping()
    except AuthenticationError as exc:
        raise StoreUnavailable(
            f"Redis at {redact_url(url)} refused the credentials ({exc}): put the user name "
            "and password in redis_url, redis://user:password@host:6379/0"
        ) from exc
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
                token_type=token.token_type,
            )
        )
    return default


async def _tariff(settings: Settings) -> TariffService:
    if settings.tariff_service:
        return cast(
            TariffService, await instantiate(settings.tariff_service, TariffService, settings)
        )
    return ConfiguredTariff(settings.tariff)


def configured_credentials(
    station: StationSettings, stored: StationRecord | None
) -> StationCredentials | None:
    """The credentials a ``[[stations]]`` entry sets, None when it sets none.

    The configured ``password_hash`` is an initial password: it is left out when the
    registry already holds a hash, which may come from a rotation the station accepted.
    """
    fields: dict[str, Any] = {}
    if station.security_profile is not None:
        fields["security_profile"] = station.security_profile
    if station.certificate_identity is not None:
        fields["certificate_identity"] = station.certificate_identity
    if station.allowed_versions is not None:
        fields["allowed_versions"] = tuple(station.allowed_versions)
    if station.password_hash is not None:
        if stored is None or stored.password_hash is None:
            fields["password_hash"] = station.password_hash
        elif stored.password_hash != station.password_hash:
            log.info(
                "configured password_hash not applied: the registry holds another one "
                "(set by 'csms station add' or a rotation); 'csms station add --password' "
                "replaces it",
                station=station.station_id,
            )
    return StationCredentials(**fields) if fields else None


async def _provision(stations: StationRegistry, settings: Settings) -> None:
    for station in settings.stations:
        credentials = configured_credentials(station, await stations.get(station.station_id))
        if credentials is not None:
            await stations.set_credentials(station.station_id, credentials)
        await stations.provision(station.station_id, RegistrationStatus(station.registration))


def _message_log(
    settings: Settings, client: aioredis.Redis | None, fast: RespClient | None = None
) -> MessageLog:
    """The message log the settings ask for: off, in memory, or on Redis (batched)."""
    if not settings.message_log:
        return NullMessageLog()
    if client is None:
        return MemoryMessageLog(
            max_per_station=settings.message_log_max_per_station,
            max_age=settings.message_log_max_age,
        )
    return RedisMessageLog(
        client,
        settings.redis_key_prefix,
        max_per_station=settings.message_log_max_per_station,
        max_age=settings.message_log_max_age,
        flush_interval=settings.message_log_flush_interval,
        fast=fast,
    )


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
            call_records=MemoryCallRecordStore(ttl=settings.call_record_ttl),
            message_log=_message_log(settings, None),
            action_rules=CachedActionRules(
                MemoryActionRuleStore(), settings.action_rules_cache_seconds
            ),
            webhooks=MemoryWebhookStore(max_history=settings.webhook_history),
            events=MemoryEventLog(max_events=settings.event_retention),
            pnc=await open_pnc(settings),
            data_transfer=await open_registry(settings),
            certificate_signer=await open_signer(settings),
        )
        return

    client = settings_redis_client(settings)
    fast = settings_resp_client(settings)
    message_log = _message_log(settings, client, fast)
    events = RedisEventLog(
        client,
        settings.redis_key_prefix,
        max_events=settings.event_retention,
        fast=fast,
        # A Call's events go in its APPLY, unless their MQTT copy needs the id at once.
        in_calls=not settings.events_to_mqtt,
    )
    try:
        await ping(client, settings.redis_url)
        prefix = settings.redis_key_prefix
        redis_stations = RedisStationRegistry(client, prefix, fast=fast)
        await _provision(redis_stations, settings)
        default_tokens = RedisTokenStore(client, prefix, accept_unknown=accept_unknown, fast=fast)
        yield Services(
            stations=redis_stations,
            tokens=await _token_store(settings, default_tokens),
            transactions=RedisTransactionStore(client, prefix, fast=fast),
            tariff=await _tariff(settings),
            idempotency=RedisIdempotencyStore(client, prefix, fast=fast),
            api_keys=RedisApiKeyStore(client, prefix),
            station_state=RedisStationStateStore(client, prefix),
            station_reports=RedisStationReportStore(client, prefix),
            call_records=RedisCallRecordStore(client, prefix, ttl=settings.call_record_ttl),
            message_log=message_log,
            action_rules=CachedActionRules(
                RedisActionRuleStore(client, prefix, fast=fast), settings.action_rules_cache_seconds
            ),
            webhooks=RedisWebhookStore(client, prefix, max_history=settings.webhook_history),
            events=events,
            pnc=await open_pnc(settings),
            data_transfer=await open_registry(settings),
            certificate_signer=await open_signer(settings),
        )
    finally:
        await message_log.aclose()  # writes what is buffered
        await events.aclose()  # its poller, before the client it reads with
        await fast.aclose()
        await client.aclose()
