"""OAuth2 client credentials for the HTTP requests the CSMS makes (webhooks, and any other
outbound call that names a token endpoint).

:class:`OAuth2TokenProvider` fetches an access token with the ``client_credentials`` grant
(RFC 6749 §4.4), keeps it until ``expires_in`` - :data:`REFRESH_MARGIN` seconds and then
fetches a new one, so a request never leaves with a token about to expire. Concurrent
requests with the same credentials wait for one fetch instead of each starting their own.
A receiver that answers 401 may have revoked the token early: the caller drops it with
:meth:`OAuth2TokenProvider.invalidate` (only while it is still the cached one, so a burst of
401s costs one new fetch) and retries once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx
import msgspec
import structlog

__all__ = [
    "REFRESH_MARGIN",
    "ClientCredentials",
    "OAuth2TokenProvider",
    "TokenFetchFailed",
]

_log = structlog.get_logger("services.outbound_auth")

REFRESH_MARGIN = 60.0
"""Seconds before its expiry a cached token is replaced."""
DEFAULT_LIFETIME = 300.0
"""Seconds a token without ``expires_in`` is kept."""
FETCH_TIMEOUT = 10.0


class ClientCredentials(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where and as whom to fetch a token. Frozen, so it keys the cache as it is."""

    token_url: str
    client_id: str
    client_secret: str
    scope: str | None = None
    """Space-separated scopes to ask for."""
    audience: str | None = None
    """The ``audience`` parameter some providers (Auth0, Okta) need."""
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    """How the client authenticates to the token endpoint: HTTP Basic (RFC 6749's default)
    or the id and secret in the form body."""


class TokenFetchFailed(Exception):
    """The token endpoint could not be reached or refused the credentials."""


@dataclass(slots=True)
class _Cached:
    token: str
    refresh_at: float


class OAuth2TokenProvider:
    """Access tokens per :class:`ClientCredentials`, cached and refreshed ahead of expiry.

    ``client`` is the HTTP client the fetches use (one is made, and closed by
    :meth:`aclose`, when none is given); ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        refresh_margin: float = REFRESH_MARGIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False)
        self._margin = refresh_margin
        self._clock = clock
        self._cache: dict[ClientCredentials, _Cached] = {}
        self._locks: dict[ClientCredentials, asyncio.Lock] = {}
        self.fetches = 0
        """Token requests made so far (for tests and logs)."""

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def token(self, credentials: ClientCredentials) -> str:
        """A valid access token for ``credentials``; raises :class:`TokenFetchFailed`."""
        cached = self._fresh(credentials)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(credentials, asyncio.Lock())
        async with lock:
            cached = self._fresh(credentials)  # fetched while this request waited
            if cached is not None:
                return cached
            token, lifetime = await self._fetch(credentials)
            margin = self._margin if lifetime > 2 * self._margin else lifetime / 2
            self._cache[credentials] = _Cached(token, self._clock() + lifetime - margin)
            return token

    def invalidate(self, credentials: ClientCredentials, token: str) -> None:
        """Forget ``token`` (the receiver refused it) if it is still the cached one."""
        cached = self._cache.get(credentials)
        if cached is not None and cached.token == token:
            del self._cache[credentials]

    def _fresh(self, credentials: ClientCredentials) -> str | None:
        cached = self._cache.get(credentials)
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.token
        return None

    async def _fetch(self, credentials: ClientCredentials) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if credentials.scope:
            form["scope"] = credentials.scope
        if credentials.audience:
            form["audience"] = credentials.audience
        auth: httpx.BasicAuth | None = None
        if credentials.auth_method == "client_secret_post":
            form["client_id"] = credentials.client_id
            form["client_secret"] = credentials.client_secret
        else:
            auth = httpx.BasicAuth(credentials.client_id, credentials.client_secret)
        self.fetches += 1
        try:
            response = await self._client.post(
                credentials.token_url,
                data=form,
                auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
                timeout=FETCH_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            raise TokenFetchFailed(
                f"token endpoint {credentials.token_url} unreachable: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code != 200:
            raise TokenFetchFailed(
                f"token endpoint {credentials.token_url} answered HTTP {response.status_code}"
            )
        try:
            body = response.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in", DEFAULT_LIFETIME))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TokenFetchFailed(
                f"token endpoint {credentials.token_url} answered without an access_token"
            ) from None
        if not isinstance(token, str) or not token:
            raise TokenFetchFailed(f"token endpoint {credentials.token_url}: empty access_token")
        _log.debug("access token fetched", token_url=credentials.token_url, expires_in=lifetime)
        return token, max(lifetime, 0.0)
