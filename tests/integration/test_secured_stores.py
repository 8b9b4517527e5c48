"""Credentials and TLS towards Redis and the MQTT broker, on private servers that demand them.

- Redis with ``requirepass``, with an ACL user, and with TLS (certificates from
  :mod:`tests.certs`, client certificate required), reached through
  :func:`services.factory.open_services` exactly as a manager reaches it;
- Mosquitto without anonymous access (``password_file``, as in ``deploy/mosquitto.conf``);
- the registry's credential writes racing live-state writes from another Redis client;
- ``[[stations]]`` credentials applied at start-up without undoing a rotation.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from csms.bus.mqtt import MqttBus
from csms.config import Settings, StationSettings
from csms.credentials import hash_password, verify_password
from csms.versions import OcppVersion
from services import StoreUnavailable, factory
from services.factory import open_services
from services.models import RegistrationStatus, StationCredentials
from services.redis_store import RedisStationRegistry
from tests.certs import make_pki
from tests.servers import mosquitto_with_password, redis_with

pytestmark = pytest.mark.integration

SECRET = "s3cret-redis-pass"


# --- Redis credentials -------------------------------------------------------------------------


async def _round_trip(settings: Settings) -> None:
    async with open_services(settings) as services:
        await services.stations.provision("CS-AUTH", RegistrationStatus.ACCEPTED)
        record = await services.stations.get("CS-AUTH")
        assert record is not None and record.known


async def test_redis_with_requirepass() -> None:
    with redis_with("--requirepass", SECRET) as (port, _):
        await _round_trip(Settings(redis_url=f"redis://:{SECRET}@127.0.0.1:{port}/0"))
        for url in (f"redis://127.0.0.1:{port}/0", f"redis://:wrong@127.0.0.1:{port}/0"):
            with pytest.raises(StoreUnavailable, match="refused the credentials") as refused:
                await _round_trip(Settings(redis_url=url))
            assert "wrong" not in str(refused.value)  # the password is never echoed


async def test_redis_with_an_acl_user() -> None:
    acl = ("--user", "csms", "on", f">{SECRET}", "~*", "&*", "+@all", "--user", "default", "off")
    with redis_with(*acl) as (port, _):
        await _round_trip(Settings(redis_url=f"redis://csms:{SECRET}@127.0.0.1:{port}/0"))
        with pytest.raises(StoreUnavailable, match="refused the credentials"):
            await _round_trip(Settings(redis_url=f"redis://csms:nope@127.0.0.1:{port}/0"))


async def test_redis_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    client = pki.client("csms-manager")
    tls_args = (
        "--tls-cert-file",
        str(pki.server.cert),
        "--tls-key-file",
        str(pki.server.key),
        "--tls-ca-cert-file",
        str(pki.ca.cert),
        "--tls-auth-clients",
        "yes",
    )
    with redis_with(*tls_args, tls=True) as (port, _):
        url = f"rediss://localhost:{port}/0"
        await _round_trip(
            Settings(
                redis_url=url,
                redis_ca_file=str(pki.ca.cert),
                redis_cert_file=str(client.cert),
                redis_key_file=str(client.key),
            )
        )
        # No client certificate: the server refuses it. Under TLS 1.3 the client learns that
        # after its side of the handshake, as an alert or as a reset, depending on timing.
        refused = r"(?i)certificate required|connection reset|closed by server"
        with pytest.raises(StoreUnavailable, match=refused):
            await _round_trip(Settings(redis_url=url, redis_ca_file=str(pki.ca.cert)))
        # A server certificate from a CA we do not trust: the client refuses it.
        with pytest.raises(StoreUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await _round_trip(
                Settings(
                    redis_url=url,
                    redis_ca_file=str(pki.foreign_ca.cert),
                    redis_cert_file=str(client.cert),
                    redis_key_file=str(client.key),
                )
            )


# --- MQTT credentials --------------------------------------------------------------------------


async def test_mqtt_bus_needs_the_brokers_credentials() -> None:
    with mosquitto_with_password("csms", "broker-pass-1") as (url, _):
        authenticated = url.replace("mqtt://", "mqtt://csms:broker-pass-1@")
        async with MqttBus(authenticated) as bus:
            assert await bus.wait_connected(5)
            await bus.subscribe("auth-test/#")
            await bus.publish("auth-test/1", b"hello")
            message = await asyncio.wait_for(anext(aiter(bus.messages())), 5)
            assert message.payload == b"hello"

        with capture_logs() as logs:
            async with MqttBus(url, max_backoff=0.2) as anonymous:
                assert not await anonymous.wait_connected(1.5)
        refused = [entry for entry in logs if entry["event"] == "broker refused the credentials"]
        assert refused, logs
        assert refused[0]["user"] is None
        assert "mqtt://user:password@host" in refused[0]["hint"]

        with capture_logs() as logs:
            async with MqttBus(
                url.replace("mqtt://", "mqtt://csms:wrong@"), max_backoff=0.2
            ) as bad:
                assert not await bad.wait_connected(1.5)
        refused = [entry for entry in logs if entry["event"] == "broker refused the credentials"]
        assert refused and refused[0]["user"] == "csms"
        assert all("wrong" not in str(entry) for entry in logs)


# --- registry credentials against live writes --------------------------------------------------


@pytest.fixture
async def two_registries(
    redis_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[tuple[RedisStationRegistry, RedisStationRegistry]]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    other = factory.redis_client(redis_url)  # a second pool: another manager, as Redis sees it
    try:
        yield RedisStationRegistry(redis_client, prefix), RedisStationRegistry(other, prefix)
    finally:
        await other.aclose()


async def test_password_rotation_races_connection_events_without_loss(
    two_registries: tuple[RedisStationRegistry, RedisStationRegistry],
) -> None:
    a, b = two_registries
    hashes = [hash_password(f"password-number-{i:02d}") for i in range(3)]
    await a.set_credentials("CS1", StationCredentials(security_profile=1, password_hash=hashes[0]))
    for round_ in range(10):
        connection = f"c{round_}"
        await asyncio.gather(
            b.mark_connected("CS1", "ocpp1.6", "gw", connection, f"2026-01-15T12:00:{round_:02d}Z"),
            a.set_password_hash("CS1", hashes[1 + round_ % 2]),
            b.set_credentials("CS1", StationCredentials(allowed_versions=("ocpp1.6",))),
        )
        record = await a.get("CS1")
        assert record is not None
        assert (record.online, record.connection) == (True, connection)
        assert record.password_hash == hashes[1 + round_ % 2]
        assert record.allowed_versions == ["ocpp1.6"]
        assert record.security_profile == 1


async def test_configured_credentials_never_undo_a_rotation(redis_url: str) -> None:
    station_id = f"CFG-{uuid.uuid4().hex[:6]}"
    configured = hash_password("configured-password-1")
    settings = Settings(
        redis_url=redis_url,
        stations=[
            StationSettings(
                station_id=station_id,
                security_profile=2,
                password_hash=configured,
                allowed_versions=[OcppVersion.OCPP201],
            )
        ],
    )
    async with open_services(settings) as services:
        record = await services.stations.get(station_id)
        assert record is not None
        assert record.password_hash == configured
        assert (record.security_profile, record.allowed_versions) == (2, ["ocpp2.0.1"])
        assert record.registration is RegistrationStatus.ACCEPTED
        # The station accepts a rotation; a later restart must keep the rotated hash.
        assert await services.stations.set_password_hash(
            station_id, hash_password("rotated-password-12")
        )
    with capture_logs() as logs:
        async with open_services(settings) as services:
            record = await services.stations.get(station_id)
    assert record is not None
    assert verify_password("rotated-password-12", record.password_hash or "")
    assert any(entry["event"].startswith("configured password_hash not applied") for entry in logs)
