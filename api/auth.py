"""Authentication and scopes: every route but health depends on :func:`require`.

A key is accepted as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. It is either a
stored key (:mod:`services.api_keys`: only its hash is stored, revoked keys fail) or the
bootstrap admin key of the settings (``api_admin_key``). Missing, malformed, unknown, wrong
and revoked keys all get the same 401; a valid key without the route's scope gets 403.

With OIDC configured (``api_oidc_issuer``), ``Authorization: Bearer <JWT>`` carries an access
token of that issuer instead (:mod:`api.oidc`): a bearer shaped like an API key
(``csms_<id>_<secret>``) is always checked as one, any other compact JWT as a token. An
invalid token gets the same 401 (why goes to the log only); a valid one whose scope claim
maps to no API scope gets 403. The caller's ``sub`` becomes the principal's ``key_id``, so
logs and call records name who did it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.context import Context
from api.errors import ApiError
from api.oidc import OidcUnavailable, OidcVerifier, TokenRejected, looks_like_jwt
from services.api_keys import Scope, authenticate, parse_key

__all__ = ["Principal", "require"]

_log = structlog.get_logger("api.auth")

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="API key or OIDC access token: Authorization: Bearer csms_<id>_<secret>, "
    "or a JWT of the configured OIDC issuer (api_oidc_issuer)",
)
_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="apiKey", description="an API key"
)

BOOTSTRAP_KEY_ID = "bootstrap"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a stored key's id and name, the bootstrap admin key, or an OIDC
    token's subject (``sub``) and name."""

    key_id: str
    name: str
    scope: Scope


def _unauthorized(message: str) -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        message,
        {"field": "Authorization"},
        headers={"WWW-Authenticate": "Bearer"},
    )


def _same(a: str, b: str) -> bool:
    """Constant-time equality of two keys (compared as digests: lengths do not leak)."""
    return hmac.compare_digest(
        hashlib.sha256(a.encode()).digest(), hashlib.sha256(b.encode()).digest()
    )


async def _principal(
    ctx: Context,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> Principal:
    key = bearer.credentials if bearer is not None else header
    if not key:
        raise _unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    if ctx.admin_key is not None and _same(key, ctx.admin_key):
        return Principal(BOOTSTRAP_KEY_ID, "bootstrap admin key", Scope.ADMIN)
    # Only the Authorization header carries tokens; a key-shaped bearer is always a key.
    oidc = ctx.oidc
    if oidc is not None and bearer is not None and parse_key(key) is None and looks_like_jwt(key):
        return await _token_principal(oidc, key)
    record = await authenticate(ctx.services.api_keys, key)
    if record is None:
        _log.info("api key refused")
        raise _unauthorized("invalid or revoked API key")
    return Principal(record.key_id, record.name, record.scope)


async def _token_principal(verifier: OidcVerifier, token: str) -> Principal:
    try:
        identity = await verifier.verify(token)
    except TokenRejected as exc:
        _log.info("access token refused", reason=exc.reason)
        raise _unauthorized("invalid or expired access token") from None
    except OidcUnavailable:
        raise ApiError(
            503,
            "identity_provider_unavailable",
            "the identity provider's keys could not be fetched; try again shortly",
            {},
            headers={"Retry-After": "5"},
        ) from None
    if identity.scope is None:
        _log.info("access token without an api scope", sub=identity.subject)
        raise ApiError(
            403,
            "forbidden",
            "the access token grants no scope of this API",
            {"claim": verifier.config.scope_claim},
        )
    return Principal(identity.subject, identity.name, identity.scope)


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting keys whose scope includes ``scope``."""

    async def check(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        if not principal.scope.allows(scope):
            raise ApiError(
                403,
                "forbidden",
                f"this key has scope {principal.scope.value}; the route needs {scope.value}",
                {"scope": principal.scope.value, "required": scope.value},
            )
        return principal

    return check


Reader = Annotated[Principal, Depends(require(Scope.READ))]
Operator = Annotated[Principal, Depends(require(Scope.OPERATE))]
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]
