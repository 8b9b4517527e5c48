"""Shared fixtures: private Mosquitto and Redis servers for integration tests.

``mqtt_url`` / ``redis_url`` start one private server each per test session (see
:mod:`tests.servers`); ``mosquitto`` / ``redis_process`` give the process handle for fault
tests that stop and restart it. ``redis_client`` is a fresh, flushed connection per test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from tests.servers import ServerProcess, mosquitto_server, redis_server


@pytest.fixture(scope="session")
def _mosquitto() -> Iterator[tuple[str, ServerProcess | None]]:
    with mosquitto_server() as server:
        yield server


@pytest.fixture(scope="session")
def _redis() -> Iterator[tuple[str, ServerProcess | None]]:
    with redis_server() as server:
        yield server


@pytest.fixture
def mqtt_url(_mosquitto: tuple[str, ServerProcess | None]) -> str:
    """URL of the session's private MQTT v5 broker (restarted if a test stopped it)."""
    url, process = _mosquitto
    if process is not None and not process.running:
        process.start()
    return url


@pytest.fixture
def mosquitto(_mosquitto: tuple[str, ServerProcess | None]) -> ServerProcess:
    """The private broker process, for tests that stop and restart it."""
    process = _mosquitto[1]
    if process is None:
        pytest.fail("fault tests need the mosquitto binary (testcontainers cannot restart)")
    if not process.running:
        process.start()
    return process


@pytest.fixture
def redis_url(_redis: tuple[str, ServerProcess | None]) -> str:
    """URL of the session's private Redis (restarted if a test stopped it)."""
    url, process = _redis
    if process is not None and not process.running:
        process.start()
    return url


@pytest.fixture
def redis_process(_redis: tuple[str, ServerProcess | None]) -> ServerProcess:
    process = _redis[1]
    if process is None:
        pytest.fail("fault tests need the redis-server binary (testcontainers cannot restart)")
    if not process.running:
        process.start()
    return process


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A connection to the private Redis, flushed before the test."""
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()
