"""OIDC access tokens as bearer credentials: :class:`OidcVerifier` checks a JWT of the issuer.

A token is accepted when its signature verifies with the issuer's key named by its ``kid``
(for its ``alg``, one of the configured public-key algorithms: never ``none``, never HMAC),
``iss`` is the issuer, ``aud`` names the audience, and ``exp`` / ``nbf`` / ``iat`` hold within
the leeway. PyJWT does those checks; the key set (and the discovery document naming it) is
fetched here with httpx, because the fetch is where an API meets an outage or an attacker:

- the key set is cached for the response's ``Cache-Control: max-age`` (clamped to
  ``min_ttl``..``max_ttl``; ``default_ttl`` without one);
- a token with an unknown ``kid`` (the issuer rotated its keys) causes a refetch, but fetches
  are at least ``refetch_interval`` apart, so a flood of bad tokens cannot hammer the issuer;
- a failed fetch keeps the cached keys (an identity provider briefly down changes nothing);
- responses are bounded in size and time, never follow redirects, and URLs in a token's
  header (``jku``, ``x5u``) are never fetched.

The verifier only answers "who is this and what may they do" (:class:`OidcIdentity`); the
API's auth module turns that into a principal or the error answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import structlog

from csms.config import Settings, oidc_url_problem
from services.api_keys import Scope

__all__ = [
    "OidcConfig",
    "OidcIdentity",
    "OidcUnavailable",
    "OidcVerifier",
    "TokenRejected",
    "looks_like_jwt",
]

_log = structlog.get_logger("api.oidc")

MAX_TOKEN_BYTES = 8192
"""Longest bearer token decoded; a longer one is refused unread."""

_KEY_ALGORITHMS: dict[tuple[str, str | None], frozenset[str]] = {
    ("RSA", None): frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("OKP", "Ed448"): frozenset({"EdDSA"}),
}
"""Which algorithms a key of each type (and curve) verifies; other key types (``oct``: a
shared secret) are never used."""

_MAX_AGE = re.compile(r"(?:^|[\s,])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_SEGMENT = re.compile(r"[A-Za-z0-9_\-]*")


class TokenRejected(Exception):
    """The token is not valid; ``reason`` goes to the logs only, never to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OidcUnavailable(Exception):
    """No key set could be fetched yet, so no token can be checked."""


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """What the verifier needs from the settings (``api_oidc_*``), plus its cache bounds."""

    issuer: str
    audience: str
    jwks_url: str | None = None
    """None: ``jwks_uri`` of ``{issuer}/.well-known/openid-configuration``."""
    scope_claim: str = "scope"
    scope_map: Mapping[str, Scope] = field(
        default_factory=lambda: {
            "csms:read": Scope.READ,
            "csms:operate": Scope.OPERATE,
            "csms:admin": Scope.ADMIN,
        }
    )
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 60.0
    refetch_interval: float = 30.0
    default_ttl: float = 600.0
    min_ttl: float = 60.0
    max_ttl: float = 86_400.0
    fetch_timeout: float = 5.0
    """Seconds one fetch (connect, headers and the whole body) may take."""
    max_document_bytes: int = 256 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcConfig | None:
        """The configuration of ``settings``; None when ``api_oidc_issuer`` is unset."""
        if settings.api_oidc_issuer is None or settings.api_oidc_audience is None:
            return None
        return cls(
            issuer=settings.api_oidc_issuer,
            audience=settings.api_oidc_audience,
            jwks_url=settings.api_oidc_jwks_url,
            scope_claim=settings.api_oidc_scope_claim,
            scope_map={value: Scope(scope) for value, scope in settings.api_oidc_scope_map.items()},
            algorithms=tuple(settings.api_oidc_algorithms),
            leeway=settings.api_oidc_leeway,
            refetch_interval=settings.api_oidc_refetch_interval,
        )

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True, slots=True)
class OidcIdentity:
    """Who a valid token speaks for: its subject, a display name, and the scope it maps to
    (None when it holds none of the mapped values)."""

    subject: str
    name: str
    scope: Scope | None


class _FetchFailed(Exception):
    pass


def looks_like_jwt(token: str) -> bool:
    """True for a compact JWS: three base64url segments (header and payload non-empty)."""
    parts = token.split(".")
    return (
        len(parts) == 3
        and all(_SEGMENT.fullmatch(part) for part in parts)
        and bool(parts[0])
        and bool(parts[1])
    )


def cache_ttl(cache_control: str | None, config: OidcConfig) -> float:
    """Seconds to keep a key set served with ``cache_control``."""
    match = _MAX_AGE.search(cache_control or "")
    if match is None:
        return config.default_ttl
    return min(max(float(match[1]), config.min_ttl), config.max_ttl)


_Keys = dict[str, dict[str, jwt.PyJWK]]
"""kid -> algorithm -> key."""


def parse_key_set(document: Mapping[str, Any], algorithms: Sequence[str]) -> _Keys:
    """The usable signature keys of a JWKS document, by ``kid`` and algorithm.

    Keys without a ``kid``, not for signatures (``use`` other than ``sig``), of a type that
    verifies none of ``algorithms`` (shared secrets included), or that fail to load are
    left out; a repeated ``kid`` keeps its first key.
    """
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise _FetchFailed("the key set has no keys list")
    keys: _Keys = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid, kty = entry.get("kid"), entry.get("kty")
        if not isinstance(kid, str) or not kid or kid in keys:
            continue
        if entry.get("use", "sig") != "sig":
            continue
        curve = entry.get("crv") if kty != "RSA" else None
        usable = _KEY_ALGORITHMS.get((str(kty), curve), frozenset()) & set(algorithms)
        declared = entry.get("alg")
        if declared is not None:
            usable &= {declared}
        loaded: dict[str, jwt.PyJWK] = {}
        for algorithm in sorted(usable):
            try:
                loaded[algorithm] = jwt.PyJWK(entry, algorithm)
            except jwt.PyJWTError as exc:
                _log.warning("oidc key unusable", kid=kid, algorithm=algorithm, error=str(exc))
        if loaded:
            keys[kid] = loaded
    return keys


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """The claim ``name``, or, when there is no such claim, the nested one a dotted path
    names (``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def granted_scope(claims: Mapping[str, Any], config: OidcConfig) -> Scope | None:
    """The highest scope the token's scope claim maps to."""
    raw = _claim(claims, config.scope_claim)
    if isinstance(raw, str):
        values = raw.split()
    elif isinstance(raw, list):
        values = [item for item in raw if isinstance(item, str)]
    else:
        values = []
    scopes = [config.scope_map[value] for value in values if value in config.scope_map]
    return max(scopes, key=lambda scope: scope.rank) if scopes else None


def _text(value: Any, limit: int = 256) -> str | None:
    """A claim as printable text for logs and records, or None."""
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        return None
    return value


class OidcVerifier:
    """Checks OIDC access tokens of one issuer; one per API app, closed with :meth:`aclose`.

    ``clock`` (monotonic seconds) paces the key cache; tests hand in their own.
    """

    def __init__(
        self,
        config: OidcConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(config.fetch_timeout),
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )
        self._keys: _Keys | None = None
        self._expires_at = 0.0
        self._last_fetch: float | None = None
        self._jwks_url = config.jwks_url
        self._lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self._client.is_closed

    async def aclose(self) -> None:
        await self._client.aclose()

    async def verify(self, token: str) -> OidcIdentity:
        """The identity of a valid ``token``.

        Raises :class:`TokenRejected` for any invalid token and :class:`OidcUnavailable`
        when no key set has been fetched yet.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRejected("token too long")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"malformed token: {exc}") from None
        if not isinstance(unverified, dict):
            raise TokenRejected("claims are not an object")
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in self.config.algorithms:
            raise TokenRejected(f"algorithm {algorithm!r} not accepted")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise TokenRejected("no kid")
        # Only a token of our issuer may make us fetch keys.
        if unverified.get("iss") != self.config.issuer:
            raise TokenRejected("wrong issuer")
        key = await self._key(kid, algorithm)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway,
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"{type(exc).__name__}: {exc}") from None
        subject = _text(claims.get("sub"))
        if subject is None:
            raise TokenRejected("sub is not a short printable string")
        return OidcIdentity(
            subject, self._name(claims, subject), granted_scope(claims, self.config)
        )

    @staticmethod
    def _name(claims: Mapping[str, Any], subject: str) -> str:
        name, email = _text(claims.get("name")), _text(claims.get("email"))
        if name and email:
            return f"{name} <{email}>"
        return name or email or _text(claims.get("preferred_username")) or subject

    async def _key(self, kid: str, algorithm: str) -> jwt.PyJWK:
        """The key ``kid`` for ``algorithm``, refreshing the set when it is stale or the
        kid is unknown (each at most once per ``refetch_interval``)."""
        if self._keys is None or self._clock() >= self._expires_at:
            await self._refresh("expired" if self._keys is not None else "first use")
        if self._keys is None:
            raise OidcUnavailable("the issuer's key set could not be fetched")
        if kid not in self._keys:
            await self._refresh("unknown kid")
        found = self._keys.get(kid, {}).get(algorithm)
        if found is None:
            raise TokenRejected(
                "unknown kid" if kid not in self._keys else "algorithm does not fit the key"
            )
        return found

    async def _refresh(self, reason: str) -> None:
        async with self._lock:
            now = self._clock()
            if (
                self._last_fetch is not None
                and now - self._last_fetch < self.config.refetch_interval
            ):
                return  # fetched (or tried) a moment ago, maybe while this request waited
            self._last_fetch = now
            try:
                keys, ttl = await self._fetch_keys()
            except _FetchFailed as exc:
                _log.warning(
                    "oidc key set fetch failed",
                    reason=reason,
                    error=str(exc),
                    cached=self._keys is not None,
                )
                return
            self._keys, self._expires_at = keys, self._clock() + ttl
            _log.info("oidc key set fetched", reason=reason, kids=sorted(keys), ttl=ttl)

    async def _fetch_keys(self) -> tuple[_Keys, float]:
        discovered = self._jwks_url is None
        if self._jwks_url is None:
            self._jwks_url = await self._discover()
        try:
            document, cache_control = await self._get_json(self._jwks_url)
            keys = parse_key_set(document, self.config.algorithms)
        except _FetchFailed:
            if discovered:
                self._jwks_url = None  # discover again next time: it may have moved
            raise
        if not keys:
            raise _FetchFailed("the key set holds no usable signature key")
        return keys, cache_ttl(cache_control, self.config)

    async def _discover(self) -> str:
        document, _ = await self._get_json(self.config.discovery_url)
        if document.get("issuer") != self.config.issuer:
            raise _FetchFailed("the discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise _FetchFailed("the discovery document has no jwks_uri")
        problem = oidc_url_problem(jwks_uri)
        if problem:
            raise _FetchFailed(f"jwks_uri {problem}")
        return jwks_uri

    async def _get_json(self, url: str) -> tuple[dict[str, Any], str | None]:
        """The JSON object at ``url`` and its Cache-Control, within the size and time bounds."""
        limit = self.config.max_document_bytes
        try:
            async with asyncio.timeout(self.config.fetch_timeout):
                async with self._client.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise _FetchFailed(f"{url}: HTTP {response.status_code}")
                    declared = response.headers.get("Content-Length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise _FetchFailed(f"{url}: larger than {limit} bytes")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > limit:
                            raise _FetchFailed(f"{url}: larger than {limit} bytes")
                    cache_control = response.headers.get("Cache-Control")
        except TimeoutError:
            raise _FetchFailed(f"{url}: no answer within {self.config.fetch_timeout} s") from None
        except httpx.HTTPError as exc:
            raise _FetchFailed(f"{url}: {type(exc).__name__}: {exc}") from None
        try:
            document = json.loads(body)
        except ValueError:
            raise _FetchFailed(f"{url}: not JSON") from None
        if not isinstance(document, dict):
            raise _FetchFailed(f"{url}: not a JSON object")
        return document, cache_control
