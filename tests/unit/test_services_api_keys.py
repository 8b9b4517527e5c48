"""API keys: format, hashing, scopes, and the store contract every implementation keeps.

The contract tests (``test_store_*``) run here against the in-memory store;
tests/integration/test_api_keys_redis.py collects them again with a Redis store.
"""

from __future__ import annotations

import hashlib

import pytest

from services import Services
from services.api_keys import (
    ApiKeyStore,
    MemoryApiKeyStore,
    Scope,
    authenticate,
    hash_secret,
    issue_key,
    parse_key,
)
from services.models import MAX_PAGE_SIZE

T1 = "2026-01-15T12:00:00Z"
T2 = "2026-01-15T12:05:00Z"


@pytest.fixture
def api_keys() -> ApiKeyStore:
    return MemoryApiKeyStore()


# --- format and scopes ---------------------------------------------------------------------


def test_issued_keys_are_random_and_store_only_a_hash() -> None:
    first, second = issue_key("ci", Scope.READ, T1), issue_key("ci", Scope.READ, T1)
    assert first.key != second.key and first.record.key_id != second.record.key_id
    parsed = parse_key(first.key)
    assert parsed is not None
    key_id, secret = parsed
    assert first.key == f"csms_{key_id}_{secret}" and key_id == first.record.key_id
    assert first.record.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(first.record)
    assert len(secret) >= 43  # 32 random bytes


@pytest.mark.parametrize(
    "key",
    ["", "csms", "csms__x", "csms_0123456789abcdef_short", "other_0123456789abcdef_" + "a" * 43],
)
def test_malformed_keys_do_not_parse(key: str) -> None:
    assert parse_key(key) is None


def test_scopes_are_ordered() -> None:
    assert Scope.ADMIN.allows(Scope.OPERATE) and Scope.ADMIN.allows(Scope.READ)
    assert Scope.OPERATE.allows(Scope.READ) and not Scope.OPERATE.allows(Scope.ADMIN)
    assert Scope.READ.allows(Scope.READ) and not Scope.READ.allows(Scope.OPERATE)


def test_services_default_to_a_memory_key_store() -> None:
    services = Services(None, None, None, None, None)  # type: ignore[arg-type]
    assert isinstance(services.api_keys, MemoryApiKeyStore)


# --- the store contract --------------------------------------------------------------------


async def test_store_keeps_and_authenticates_a_key(api_keys: ApiKeyStore) -> None:
    issued = issue_key("dashboard", Scope.OPERATE, T1)
    await api_keys.put(issued.record)
    stored = await api_keys.get(issued.record.key_id)
    assert stored == issued.record
    found = await authenticate(api_keys, issued.key)
    assert found is not None and found.scope is Scope.OPERATE and found.name == "dashboard"


async def test_store_refuses_wrong_unknown_and_malformed_keys(api_keys: ApiKeyStore) -> None:
    issued = issue_key("x", Scope.ADMIN, T1)
    await api_keys.put(issued.record)
    key_id = issued.record.key_id
    assert await authenticate(api_keys, f"csms_{key_id}_{'A' * 43}") is None
    assert await authenticate(api_keys, issue_key("y", Scope.ADMIN, T1).key) is None
    assert await authenticate(api_keys, "not a key") is None
    assert await api_keys.get("0" * 16) is None


async def test_store_revokes_once_and_keeps_the_record(api_keys: ApiKeyStore) -> None:
    issued = issue_key("old", Scope.READ, T1)
    await api_keys.put(issued.record)
    revoked = await api_keys.revoke(issued.record.key_id, T2)
    assert revoked is not None and revoked.revoked_at == T2
    again = await api_keys.revoke(issued.record.key_id, "2030-01-01T00:00:00Z")
    assert again is not None and again.revoked_at == T2  # the first revocation stays
    assert await authenticate(api_keys, issued.key) is None
    stored = await api_keys.get(issued.record.key_id)
    assert stored is not None and stored.revoked_at == T2
    assert await api_keys.revoke("f" * 16, T2) is None


async def test_store_lists_every_key_in_pages(api_keys: ApiKeyStore) -> None:
    issued = [issue_key(f"k{n}", Scope.READ, T1) for n in range(7)]
    for item in issued:
        await api_keys.put(item.record)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await api_keys.list_keys(cursor=cursor, limit=3)
        pages += 1
        seen.extend(record.key_id for record in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(item.record.key_id for item in issued)
    assert pages == 3
    assert all(record.secret_hash for record in (await api_keys.list_keys()).items)


async def test_store_refuses_bad_cursors_and_limits(api_keys: ApiKeyStore) -> None:
    with pytest.raises(ValueError):
        await api_keys.list_keys(cursor="garbage")
    with pytest.raises(ValueError):
        await api_keys.list_keys(limit=0)
    with pytest.raises(ValueError):
        await api_keys.list_keys(limit=MAX_PAGE_SIZE + 1)


async def test_store_put_replaces(api_keys: ApiKeyStore) -> None:
    issued = issue_key("first", Scope.READ, T1)
    await api_keys.put(issued.record)
    issued.record.name = "renamed"
    await api_keys.put(issued.record)
    stored = await api_keys.get(issued.record.key_id)
    assert stored is not None and stored.name == "renamed"
    assert len((await api_keys.list_keys()).items) == 1
    assert hash_secret("x") != hash_secret("y")
