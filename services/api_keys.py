"""API keys of the operator HTTP API: format, hashing, scopes and the store interface.

A key reads ``csms_<key id>_<secret>``. The key id (16 hex digits) names the record; only the
SHA-256 of the secret is stored. Keys carry 256 bits of randomness, so a fast hash is right:
nobody can guess a secret from its hash, and checking a key costs microseconds, not the
tens of milliseconds a password hash would cost on every request.

Scopes are ordered, each includes the ones before it: ``read`` (listings, details) <
``operate`` (CSMS calls, token changes) < ``admin`` (API keys).

:class:`MemoryApiKeyStore` is the embedded default; :mod:`services.redis_api_keys` holds the
Redis one. Revoking keeps the record (with ``revoked_at``) so listings show what was revoked
and when; a revoked key never authenticates again.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from typing import Protocol, runtime_checkable

import msgspec

from services import rules
from services.models import Page

__all__ = [
    "KEY_PREFIX",
    "ApiKeyRecord",
    "ApiKeyStore",
    "IssuedKey",
    "MemoryApiKeyStore",
    "Scope",
    "authenticate",
    "hash_secret",
    "issue_key",
    "parse_key",
]

KEY_PREFIX = "csms"
API_KEY_CURSOR = "api-keys"
_KEY = re.compile(r"csms_(?P<id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_\-]{32,128})")


class Scope(enum.StrEnum):
    """What a key may do; each scope includes the ones listed before it."""

    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Scope) -> bool:
        """True when a key of this scope may do what ``needed`` guards."""
        return self.rank >= needed.rank


_RANKS = {Scope.READ: 0, Scope.OPERATE: 1, Scope.ADMIN: 2}


class ApiKeyRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One stored API key: never the secret, only its hash."""

    key_id: str
    name: str
    scope: Scope
    secret_hash: str
    """Hex SHA-256 of the secret part of the key."""
    created_at: str
    revoked_at: str | None = None


class IssuedKey(msgspec.Struct, kw_only=True, frozen=True):
    """A new key: the record to store and the full key, to show its owner once."""

    record: ApiKeyRecord
    key: str


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a key's secret (keys are random: no salt or slow hash needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_key(name: str, scope: Scope, at: str) -> IssuedKey:
    """A fresh random key named ``name`` with ``scope``, created at ``at`` (ISO 8601)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    record = ApiKeyRecord(
        key_id=key_id, name=name, scope=scope, secret_hash=hash_secret(secret), created_at=at
    )
    return IssuedKey(record=record, key=f"{KEY_PREFIX}_{key_id}_{secret}")


def parse_key(key: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed key, None for anything else."""
    match = _KEY.fullmatch(key)
    return (match["id"], match["secret"]) if match else None


def secret_matches(record: ApiKeyRecord, secret: str) -> bool:
    """Constant-time check of ``secret`` against the record's hash."""
    return hmac.compare_digest(record.secret_hash, hash_secret(secret))


@runtime_checkable
class ApiKeyStore(Protocol):
    """Where API key records live (shared by every API replica)."""

    async def put(self, record: ApiKeyRecord) -> None:
        """Create or replace a key record."""
        ...

    async def get(self, key_id: str) -> ApiKeyRecord | None: ...

    async def revoke(self, key_id: str, at: str) -> ApiKeyRecord | None:
        """Mark the key revoked at ``at`` (kept if already revoked); the record, or None
        when there is no such key."""
        ...

    async def list_keys(self, *, cursor: str | None = None, limit: int = 100) -> Page[ApiKeyRecord]:
        """Key records in key id order; ``ValueError`` for a bad cursor or limit."""
        ...


async def authenticate(store: ApiKeyStore, key: str) -> ApiKeyRecord | None:
    """The record of a valid, unrevoked ``key``; None for a malformed, unknown, wrong or
    revoked one (the caller cannot tell which, on purpose)."""
    parsed = parse_key(key)
    if parsed is None:
        return None
    key_id, secret = parsed
    record = await store.get(key_id)
    if record is None or not secret_matches(record, secret) or record.revoked_at is not None:
        return None
    return record


def key_query(cursor: str | None, limit: int) -> rules.IdQuery:
    """Validate the arguments of ``list_keys`` (``ValueError`` for a bad one)."""
    return rules.IdQuery(
        limit=rules.check_limit(limit),
        after=rules.decode_cursor(API_KEY_CURSOR, cursor) if cursor is not None else None,
    )


def page_of(records: list[ApiKeyRecord], limit: int) -> Page[ApiKeyRecord]:
    """A page of up to ``limit`` of ``records`` (one more than ``limit`` means more follow)."""
    return rules.page_of(records, limit, lambda record: record.key_id, API_KEY_CURSOR)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ApiKeyRecord)


def encode_record(record: ApiKeyRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(raw: bytes | str) -> ApiKeyRecord:
    return _decoder.decode(raw)


class MemoryApiKeyStore:
    """:class:`ApiKeyStore` in a dict (embedded default, tests). Records are copied in and
    out, as a real store would."""

    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}

    async def put(self, record: ApiKeyRecord) -> None:
        self._records[record.key_id] = encode_record(record)

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        raw = self._records.get(key_id)
        return decode_record(raw) if raw is not None else None

    async def revoke(self, key_id: str, at: str) -> ApiKeyRecord | None:
        record = await self.get(key_id)
        if record is None:
            return None
        if record.revoked_at is None:
            record.revoked_at = at
            await self.put(record)
        return record

    async def list_keys(self, *, cursor: str | None = None, limit: int = 100) -> Page[ApiKeyRecord]:
        query = key_query(cursor, limit)
        ids = sorted(key for key in self._records if query.admits(key))
        return page_of([decode_record(self._records[key]) for key in ids[: query.limit + 1]], limit)
