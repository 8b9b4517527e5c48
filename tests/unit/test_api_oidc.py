"""OIDC access tokens on the operator API, against a real local identity provider.

The identity provider is a small HTTP app on a free port serving its discovery document and
key set (RSA and EC keys made with ``cryptography``) and counting the requests it gets;
tokens are signed with PyJWT. The API is the real app on uvicorn, driven with httpx. The key
cache runs on a clock the tests move by hand, so nothing depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pydantic
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI, Response
from fastapi.responses import StreamingResponse
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from structlog.testing import capture_logs

from api import ApiServer, create_app
from api.oidc import OidcConfig, OidcVerifier, cache_ttl
from csms.bus.memory import MemoryBroker
from csms.config import Settings
from csms.topics import Topics
from operations.calls import CallSender
from services.api_keys import Scope
from services.factory import open_services
from tests.timing import timeout

ADMIN = "bootstrap-admin-key-for-oidc-tests"
AUDIENCE = "csms-api"
READ_ROUTE = ("GET", "/v1/stations", None)
OPERATE_ROUTE = ("PUT", "/v1/tokens/RFID-OIDC", {"status": "Accepted"})
ADMIN_ROUTE = ("GET", "/v1/api-keys", None)


# --- keys and tokens -------------------------------------------------------------------------


@functools.cache
def _rsa_key(n: int) -> rsa.RSAPrivateKey:
    del n  # one key per number, made once per test session
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class SigningKey:
    """A private key of the identity provider, its kid and the algorithm it signs with."""

    kid: str
    private: Any
    alg: str

    @classmethod
    def rsa(cls, kid: str, n: int = 0) -> SigningKey:
        return cls(kid, _rsa_key(n), "RS256")

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        exported = (RSAAlgorithm if self.alg.startswith("RS") else ECAlgorithm).to_jwk(
            public, as_dict=True
        )
        return {**exported, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        key: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return key

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.alg, headers={"kid": kid or self.kid}
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], kid: str) -> str:
    """A token with ``alg: none`` (and an empty signature)."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def hmac_forged(claims: dict[str, Any], kid: str, secret: bytes) -> str:
    """A token signed HS256 with ``secret`` (the classic: the issuer's public key as secret)."""
    import hashlib
    import hmac

    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


# --- the identity provider -------------------------------------------------------------------


@dataclass
class IdentityProvider:
    """Serves ``/realm/.well-known/openid-configuration`` and ``/realm/jwks``."""

    keys: list[SigningKey]
    cache_control: str | None = None
    discovery_issuer: str | None = None
    """What the discovery document says the issuer is (default: the real one)."""
    jwks_body: bytes | None = None
    """Served instead of the key set when set."""
    chunked: bool = False
    """Stream the key set without a Content-Length."""
    requests: Counter[str] = field(default_factory=Counter)
    url: str = ""

    @property
    def issuer(self) -> str:
        return f"{self.url}/realm"

    def app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.get("/realm/.well-known/openid-configuration")
        async def discovery() -> dict[str, Any]:
            self.requests["discovery"] += 1
            issuer = self.discovery_issuer or self.issuer
            return {"issuer": issuer, "jwks_uri": f"{self.issuer}/jwks"}

        @app.get("/realm/jwks")
        async def jwks() -> Response:
            self.requests["jwks"] += 1
            body = self.jwks_body or json.dumps({"keys": [key.jwk() for key in self.keys]}).encode()
            headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
            if self.chunked:

                async def chunks() -> AsyncIterator[bytes]:
                    for start in range(0, len(body), 4096):
                        yield body[start : start + 4096]

                return StreamingResponse(chunks(), media_type="application/json", headers=headers)
            return Response(body, media_type="application/json", headers=headers)

        return app

    def claims(self, **changes: Any) -> dict[str, Any]:
        """Valid claims of a read-scoped token; ``changes`` replace (None removes) claims."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "user-7f3a",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "scope": "openid csms:read",
            "name": "Ada Operator",
            "email": "ada@example.com",
        }
        claims.update(changes)
        return {key: value for key, value in claims.items() if value is not None}

    def token(self, key: SigningKey | None = None, **changes: Any) -> str:
        return (key or self.keys[0]).sign(self.claims(**changes))


class ManualClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    client: httpx.AsyncClient
    idp: IdentityProvider
    clock: ManualClock
    verifier: OidcVerifier
    idp_server: ApiServer

    async def call(self, route: tuple[str, str, Any], token: str) -> httpx.Response:
        method, path, body = route
        return await self.client.request(
            method, path, json=body, headers={"Authorization": f"Bearer {token}"}
        )

    async def stop_idp(self) -> None:
        await self.idp_server.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def oidc_api(
    keys: list[SigningKey] | None = None, *, inject_clock: bool = True, **overrides: Any
) -> AsyncIterator[Harness]:
    """The API with OIDC against a fresh identity provider.

    With ``inject_clock`` the verifier runs on a :class:`ManualClock`; without it,
    ``create_app`` builds it from the settings alone (the production path).
    """
    idp = IdentityProvider(keys or [SigningKey.rsa("rsa-1"), SigningKey.ec("ec-1")])
    async with contextlib.AsyncExitStack() as stack:
        idp_server = await stack.enter_async_context(ApiServer(idp.app(), "127.0.0.1", 0))
        idp.url = idp_server.url
        values: dict[str, Any] = {
            "api_admin_key": ADMIN,
            "api_oidc_issuer": idp.issuer,
            "api_oidc_audience": AUDIENCE,
        }
        values.update(overrides)
        settings = Settings(**values)
        config = OidcConfig.from_settings(settings)
        assert config is not None
        clock = ManualClock()
        verifier = OidcVerifier(config, clock=clock) if inject_clock else None
        services = await stack.enter_async_context(open_services(settings))
        bus = await stack.enter_async_context(MemoryBroker().client())
        sender = await stack.enter_async_context(CallSender(bus, Topics(), origin="api"))
        app = create_app(settings, services, sender, bus=bus, oidc=verifier)
        verifier = app.state.context.oidc
        assert verifier is not None
        stack.push_async_callback(verifier.aclose)
        server = await stack.enter_async_context(ApiServer(app, "127.0.0.1", 0))
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=server.url, timeout=timeout(10))
        )
        yield Harness(client, idp, clock, verifier, idp_server)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with oidc_api() as made:
        yield made


def assert_unauthorized(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.json() == {
        "code": "unauthorized",
        "message": "invalid or expired access token",
        "details": {"field": "Authorization"},
    }
    assert answer.headers["WWW-Authenticate"] == "Bearer"


# --- scopes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "allowed"),
    [
        ("csms:read", {"read"}),
        ("openid csms:operate", {"read", "operate"}),
        ("csms:admin", {"read", "operate", "admin"}),
        ("csms:read csms:admin csms:operate", {"read", "operate", "admin"}),
    ],
)
async def test_each_scope_opens_its_routes_and_no_more(
    harness: Harness, claim: str, allowed: set[str]
) -> None:
    for key in harness.idp.keys:  # an RSA and an EC key
        token = harness.idp.token(key, scope=claim)
        routes = {"read": READ_ROUTE, "operate": OPERATE_ROUTE, "admin": ADMIN_ROUTE}
        for scope, route in routes.items():
            answer = await harness.call(route, token)
            if scope in allowed:
                assert answer.status_code == 200, (key.alg, scope, answer.text)
            else:
                assert answer.status_code == 403, (key.alg, scope, answer.text)
                assert answer.json()["code"] == "forbidden"
    assert harness.idp.requests == Counter({"discovery": 1, "jwks": 1})


async def test_a_token_without_a_mapped_scope_is_forbidden(harness: Harness) -> None:
    for claims in ({"scope": "openid profile email"}, {"scope": None}, {"scope": 42}):
        answer = await harness.call(READ_ROUTE, harness.idp.token(**claims))
        assert answer.status_code == 403, answer.text
        assert answer.json() == {
            "code": "forbidden",
            "message": "the access token grants no scope of this API",
            "details": {"claim": "scope"},
        }


async def test_roles_lists_and_nested_claims_with_a_custom_map() -> None:
    async with oidc_api(
        api_oidc_scope_claim="realm_access.roles",
        api_oidc_scope_map={"csms-viewer": "read", "csms-admins": "admin"},
    ) as harness:
        viewer = harness.idp.token(realm_access={"roles": ["offline_access", "csms-viewer"]})
        assert (await harness.call(READ_ROUTE, viewer)).status_code == 200
        assert (await harness.call(OPERATE_ROUTE, viewer)).status_code == 403
        admin = harness.idp.token(realm_access={"roles": ["csms-admins"]}, scope="csms:read")
        assert (await harness.call(ADMIN_ROUTE, admin)).status_code == 200
        # The default values mean nothing under a custom map.
        plain = harness.idp.token(scope="csms:admin")
        assert (await harness.call(READ_ROUTE, plain)).status_code == 403
    async with oidc_api(api_oidc_scope_claim="roles") as harness:
        token = harness.idp.token(roles=["csms:operate"], scope=None)
        assert (await harness.call(OPERATE_ROUTE, token)).status_code == 200


async def test_the_subject_and_name_are_who_acted(harness: Harness) -> None:
    token = harness.idp.token(scope="csms:admin", sub="c0ffee-42")
    with capture_logs() as logs:
        answer = await harness.call(
            ("POST", "/v1/api-keys", {"name": "made-by-sso", "scope": "read"}), token
        )
    assert answer.status_code == 201, answer.text
    created = [line for line in logs if line["event"] == "api key created"]
    assert created and created[0]["by"] == "c0ffee-42"
    verifier = harness.verifier
    identity = await verifier.verify(harness.idp.token(sub="u-1"))
    assert (identity.subject, identity.name, identity.scope) == (
        "u-1",
        "Ada Operator <ada@example.com>",
        Scope.READ,
    )
    identity = await verifier.verify(
        harness.idp.token(sub="u-2", name=None, email=None, preferred_username="ada")
    )
    assert identity.name == "ada"


async def test_api_keys_still_work_beside_tokens(harness: Harness) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    created = await harness.client.post(
        "/v1/api-keys", json={"name": "tool", "scope": "read"}, headers=admin
    )
    key = created.json()["key"]
    assert (await harness.call(READ_ROUTE, key)).status_code == 200
    answer = await harness.client.get("/v1/stations", headers={"X-API-Key": key})
    assert answer.status_code == 200
    # A token is only taken from the Authorization header.
    token = harness.idp.token()
    answer = await harness.client.get("/v1/stations", headers={"X-API-Key": token})
    assert answer.status_code == 401
    assert answer.json()["message"] == "invalid or revoked API key"
    # A bearer shaped like an API key is checked as one, never as a token.
    fake_key = "csms_0123456789abcdef_" + "x" * 43
    answer = await harness.call(READ_ROUTE, fake_key)
    assert answer.json()["message"] == "invalid or revoked API key"


async def test_tokens_are_refused_when_oidc_is_off() -> None:
    async with oidc_api() as harness:
        token = harness.idp.token()
    settings = Settings(api_admin_key=pydantic.SecretStr(ADMIN))
    async with contextlib.AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(settings))
        bus = await stack.enter_async_context(MemoryBroker().client())
        sender = await stack.enter_async_context(CallSender(bus, Topics(), origin="api"))
        app = create_app(settings, services, sender, bus=bus)
        assert app.state.context.oidc is None
        server = await stack.enter_async_context(ApiServer(app, "127.0.0.1", 0))
        async with httpx.AsyncClient(base_url=server.url) as client:
            answer = await client.get("/v1/stations", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    assert answer.json()["message"] == "invalid or revoked API key"


# --- invalid tokens --------------------------------------------------------------------------


async def test_invalid_tokens_get_the_same_401(harness: Harness) -> None:
    idp = harness.idp
    rsa_key = idp.keys[0]
    now = int(time.time())
    stranger = SigningKey.rsa("rsa-1", n=99)  # same kid, another private key
    tokens = {
        "expired": idp.token(exp=now - 3600, iat=now - 7200, nbf=now - 7200),
        "not yet valid": idp.token(nbf=now + 3600),
        "issued in the future": idp.token(iat=now + 3600),
        "wrong issuer": idp.token(iss="https://evil.example/realm"),
        "wrong audience": idp.token(aud="another-api"),
        "audience list without ours": idp.token(aud=["a", "b"]),
        "no exp": idp.token(exp=None),
        "no sub": idp.token(sub=None),
        "no aud": idp.token(aud=None),
        "bad signature": stranger.sign(idp.claims()),
        "tampered claims": _tamper(idp.token(), scope="csms:admin"),
        "alg none": unsigned(idp.claims(scope="csms:admin"), kid="rsa-1"),
        "HS256 with the public key": hmac_forged(idp.claims(), "rsa-1", rsa_key.public_pem()),
        "unknown kid": rsa_key.sign(idp.claims(), kid="who-knows"),
        "EC kid with an RSA signature": rsa_key.sign(idp.claims(), kid="ec-1"),
        "oversized": idp.token(padding="x" * 9000),
        "garbage with dots": "abc.def.ghi",
    }
    for reason, token in tokens.items():
        answer = await harness.call(READ_ROUTE, token)
        assert answer.status_code == 401, (reason, answer.text)
        assert_unauthorized(answer)
    # The audience may be one of several.
    answer = await harness.call(READ_ROUTE, idp.token(aud=["other", AUDIENCE]))
    assert answer.status_code == 200


def _tamper(token: str, **changes: Any) -> str:
    header, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


async def test_small_clock_skew_is_tolerated(harness: Harness) -> None:
    now = int(time.time())
    token = harness.idp.token(exp=now - 30, iat=now - 600, nbf=now + 30)
    assert (await harness.call(READ_ROUTE, token)).status_code == 200


async def test_the_reason_goes_to_the_log_only(harness: Harness) -> None:
    token = harness.idp.token(aud="another-api")
    with capture_logs() as logs:
        answer = await harness.call(READ_ROUTE, token)
    assert_unauthorized(answer)
    refused = [line for line in logs if line["event"] == "access token refused"]
    assert refused and "InvalidAudienceError" in refused[0]["reason"]


# --- the key set: rotation, outages, rate limit ----------------------------------------------


async def test_a_rotated_key_is_fetched_once(harness: Harness) -> None:
    idp = harness.idp
    old = idp.token()
    assert (await harness.call(READ_ROUTE, old)).status_code == 200
    assert idp.requests["jwks"] == 1
    new_key = SigningKey.rsa("rsa-2", n=2)
    idp.keys = [new_key]
    harness.clock.advance(harness.verifier.config.refetch_interval)
    fresh = idp.token(new_key)
    for _ in range(3):
        assert (await harness.call(READ_ROUTE, fresh)).status_code == 200
    assert idp.requests["jwks"] == 2
    # The retired key is gone with the refetch.
    assert_unauthorized(await harness.call(READ_ROUTE, old))
    assert idp.requests["jwks"] == 2


async def test_unknown_kids_refetch_at_most_once_per_interval(harness: Harness) -> None:
    idp = harness.idp
    key = idp.keys[0]
    assert (await harness.call(READ_ROUTE, idp.token())).status_code == 200
    assert idp.requests["jwks"] == 1
    # Right after a fetch, unknown kids fetch nothing.
    unknown = [key.sign(idp.claims(), kid=f"bogus-{n}") for n in range(30)]
    answers = await asyncio.gather(*(harness.call(READ_ROUTE, token) for token in unknown))
    assert {answer.status_code for answer in answers} == {401}
    assert idp.requests["jwks"] == 1
    # Once the interval has passed, a flood of them makes exactly one fetch.
    harness.clock.advance(harness.verifier.config.refetch_interval)
    answers = await asyncio.gather(*(harness.call(READ_ROUTE, token) for token in unknown))
    assert {answer.status_code for answer in answers} == {401}
    assert idp.requests["jwks"] == 2
    harness.clock.advance(harness.verifier.config.refetch_interval / 2)
    answers = await asyncio.gather(*(harness.call(READ_ROUTE, token) for token in unknown))
    assert idp.requests["jwks"] == 2
    # Tokens of another issuer never make the API fetch anything.
    harness.clock.advance(harness.verifier.config.refetch_interval)
    for n in range(5):
        token = key.sign(idp.claims(iss="https://evil.example"), kid=f"evil-{n}")
        assert_unauthorized(await harness.call(READ_ROUTE, token))
    assert idp.requests["jwks"] == 2
    assert (await harness.call(READ_ROUTE, idp.token())).status_code == 200


async def test_the_cached_keys_serve_while_the_idp_is_down(harness: Harness) -> None:
    token = harness.idp.token(scope="csms:operate")
    assert (await harness.call(OPERATE_ROUTE, token)).status_code == 200
    await harness.stop_idp()
    harness.clock.advance(harness.verifier.config.default_ttl + 1)  # the cache is stale
    with capture_logs() as logs:
        assert (await harness.call(OPERATE_ROUTE, token)).status_code == 200
        assert (
            await harness.call(READ_ROUTE, harness.idp.token(harness.idp.keys[1]))
        ).status_code == 200
    failed = [line for line in logs if line["event"] == "oidc key set fetch failed"]
    assert len(failed) == 1 and failed[0]["cached"] is True  # one attempt per interval
    # An unknown kid is still refused (after at most one more attempt).
    harness.clock.advance(harness.verifier.config.refetch_interval)
    assert_unauthorized(
        await harness.call(READ_ROUTE, harness.idp.keys[0].sign(harness.idp.claims(), kid="new"))
    )


async def test_no_keys_yet_and_the_idp_down_is_503(harness: Harness) -> None:
    await harness.stop_idp()
    answer = await harness.call(READ_ROUTE, harness.idp.token())
    assert answer.status_code == 503
    assert answer.json()["code"] == "identity_provider_unavailable"
    assert answer.headers["Retry-After"] == "5"


async def test_max_age_sets_how_long_keys_are_kept(harness: Harness) -> None:
    idp = harness.idp
    idp.cache_control = "public, max-age=120"
    token = idp.token()
    assert (await harness.call(READ_ROUTE, token)).status_code == 200
    harness.clock.advance(119)
    assert (await harness.call(READ_ROUTE, token)).status_code == 200
    assert idp.requests["jwks"] == 1
    harness.clock.advance(2)
    assert (await harness.call(READ_ROUTE, token)).status_code == 200
    assert idp.requests["jwks"] == 2
    # Without max-age: the default of ten minutes.
    idp.cache_control = None
    harness.clock.advance(121)
    assert (await harness.call(READ_ROUTE, token)).status_code == 200
    assert idp.requests["jwks"] == 3
    harness.clock.advance(599)
    assert (await harness.call(READ_ROUTE, token)).status_code == 200
    assert idp.requests["jwks"] == 3


def test_max_age_is_clamped() -> None:
    config = OidcConfig(issuer="https://idp.example", audience="a")
    assert cache_ttl(None, config) == 600
    assert cache_ttl("no-cache", config) == 600
    assert cache_ttl("max-age=300", config) == 300
    assert cache_ttl("private, max-age=0", config) == 60
    assert cache_ttl("max-age=99999999", config) == 86_400


async def test_a_key_set_without_usable_keys_or_too_large_is_not_taken() -> None:
    async with oidc_api() as harness:
        idp = harness.idp
        # A shared secret in the key set never verifies anything.
        idp.jwks_body = json.dumps(
            {"keys": [{"kty": "oct", "kid": "rsa-1", "k": _b64(b"secret"), "alg": "HS256"}]}
        ).encode()
        answer = await harness.call(READ_ROUTE, idp.token())
        assert answer.status_code == 503
        idp.jwks_body = b'{"keys": [], "pad": "' + b"x" * (300 * 1024) + b'"}'
        for chunked in (False, True):  # announced, or found while reading
            idp.chunked = chunked
            harness.clock.advance(harness.verifier.config.refetch_interval)
            with capture_logs() as logs:
                assert (await harness.call(READ_ROUTE, idp.token())).status_code == 503
            assert any("larger than" in line.get("error", "") for line in logs)
        idp.jwks_body = None
        harness.clock.advance(harness.verifier.config.refetch_interval)
        assert (await harness.call(READ_ROUTE, idp.token())).status_code == 200


async def test_discovery_must_name_the_same_issuer() -> None:
    async with oidc_api() as harness:
        harness.idp.discovery_issuer = "https://evil.example/realm"
        assert (await harness.call(READ_ROUTE, harness.idp.token())).status_code == 503
        assert harness.idp.requests == Counter({"discovery": 1})
        harness.idp.discovery_issuer = None
        harness.clock.advance(harness.verifier.config.refetch_interval)
        assert (await harness.call(READ_ROUTE, harness.idp.token())).status_code == 200
        assert harness.idp.requests == Counter({"discovery": 2, "jwks": 1})


async def test_a_configured_jwks_url_skips_discovery() -> None:
    idp = IdentityProvider([SigningKey.rsa("rsa-1")])
    async with ApiServer(idp.app(), "127.0.0.1", 0) as idp_server:
        idp.url = idp_server.url
        settings = Settings(
            api_oidc_issuer=idp.issuer,
            api_oidc_audience=AUDIENCE,
            api_oidc_jwks_url=f"{idp.issuer}/jwks",
        )
        config = OidcConfig.from_settings(settings)
        assert config is not None
        verifier = OidcVerifier(config)
        try:
            identity = await verifier.verify(idp.token())
        finally:
            await verifier.aclose()
    assert identity.scope is Scope.READ
    assert idp.requests == Counter({"jwks": 1})
    assert verifier.closed


async def test_the_verifier_made_from_settings_discovers_and_is_closed_at_shutdown() -> None:
    async with oidc_api(inject_clock=False) as harness:
        assert (await harness.call(READ_ROUTE, harness.idp.token())).status_code == 200
        assert harness.idp.requests == Counter({"discovery": 1, "jwks": 1})
    # The app's lifespan closes the verifier it made.
    settings = Settings(api_oidc_issuer="https://idp.example", api_oidc_audience=AUDIENCE)
    async with contextlib.AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(settings))
        bus = await stack.enter_async_context(MemoryBroker().client())
        sender = await stack.enter_async_context(CallSender(bus, Topics(), origin="api"))
        app = create_app(settings, services, sender, bus=bus)
        verifier = app.state.context.oidc
        assert isinstance(verifier, OidcVerifier) and not verifier.closed
        async with app.router.lifespan_context(app):
            assert not verifier.closed
        assert verifier.closed


async def test_openapi_documents_the_bearer_scheme(harness: Harness) -> None:
    document = (await harness.client.get("/v1/openapi.json")).json()
    bearer = document["components"]["securitySchemes"]["bearer"]
    assert bearer["scheme"] == "bearer"
    assert "API key or OIDC access token" in bearer["description"]


# --- settings --------------------------------------------------------------------------------


def test_oidc_settings_are_validated() -> None:
    defaults = Settings()
    assert defaults.api_oidc_issuer is None and OidcConfig.from_settings(defaults) is None
    assert defaults.api_oidc_algorithms == ["RS256", "ES256"]
    assert defaults.api_oidc_scope_map == {
        "csms:read": "read",
        "csms:operate": "operate",
        "csms:admin": "admin",
    }
    refused: list[dict[str, Any]] = [
        {"api_oidc_issuer": "https://idp.example"},  # no audience
        {"api_oidc_audience": "x"},  # no issuer
        {"api_oidc_issuer": "http://idp.example", "api_oidc_audience": "x"},  # plain http
        {"api_oidc_issuer": "ftp://idp.example", "api_oidc_audience": "x"},
        {"api_oidc_algorithms": ["none"]},
        {"api_oidc_algorithms": ["HS256"]},
        {"api_oidc_algorithms": []},
        {"api_oidc_scope_map": {"csms:root": "root"}},
        {"api_oidc_leeway": -1},
    ]
    for values in refused:
        with pytest.raises(pydantic.ValidationError):
            Settings(**values)
    settings = Settings(
        api_oidc_issuer="http://localhost:8080/realms/csms",
        api_oidc_audience="csms",
        api_oidc_algorithms=["ES256", "PS256"],
    )
    config = OidcConfig.from_settings(settings)
    assert config is not None
    assert config.algorithms == ("ES256", "PS256")
    assert (
        config.discovery_url == "http://localhost:8080/realms/csms/.well-known/openid-configuration"
    )
    assert config.scope_map["csms:operate"] is Scope.OPERATE


def test_oidc_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSMS_API_OIDC_ISSUER", "https://login.example.com/tenant")
    monkeypatch.setenv("CSMS_API_OIDC_AUDIENCE", "api://csms")
    monkeypatch.setenv("CSMS_API_OIDC_SCOPE_CLAIM", "roles")
    monkeypatch.setenv("CSMS_API_OIDC_SCOPE_MAP", '{"CSMS.Admin": "admin"}')
    settings = Settings()
    assert settings.api_oidc_scope_claim == "roles"
    assert settings.api_oidc_scope_map == {"CSMS.Admin": "admin"}


async def test_a_key_declaring_its_algorithm_verifies_no_other() -> None:
    async with oidc_api(api_oidc_algorithms=["RS256", "PS256"]) as harness:
        key = harness.idp.keys[0]  # published with "alg": "RS256"
        pss = jwt.encode(
            harness.idp.claims(), key.private, algorithm="PS256", headers={"kid": key.kid}
        )
        assert_unauthorized(await harness.call(READ_ROUTE, pss))
        harness.idp.keys = [SigningKey(key.kid, key.private, "RS256")]
        assert (await harness.call(READ_ROUTE, harness.idp.token())).status_code == 200
