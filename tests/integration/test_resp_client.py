"""services.resp against real, private redis-servers: pipelining, scripts, login, and what
happens to commands in flight when Redis dies, stalls or comes back."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.resp import (
    RespClient,
    RespConnectionError,
    RespError,
    RespTimeoutError,
    Script,
)
from tests.certs import make_pki
from tests.servers import ServerProcess, redis_with

pytestmark = pytest.mark.integration

GUARD = 30.0
"""Seconds a test waits at most for something that should happen at once (a hang guard)."""


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RespClient]:
    resp = RespClient.from_url(redis_url)
    await resp.execute(b"FLUSHDB")
    try:
        yield resp
    finally:
        await resp.aclose()


async def until_answered(client: RespClient) -> bytes:
    """PING until the client has reconnected (failed connects pause it a moment)."""
    for _ in range(200):
        try:
            answer: bytes = await client.execute(b"PING")
            return answer
        except RespConnectionError:
            await asyncio.sleep(0.05)
    raise AssertionError("the client never reconnected")


async def test_many_concurrent_commands_share_one_write_and_keep_their_order(
    redis_url: str,
) -> None:
    writes: list[list[bytes]] = []
    client = RespClient.from_url(redis_url, trace=writes.append)
    try:
        await client.execute(b"DEL", b"resp:counter")
        writes.clear()
        answers = await asyncio.gather(
            *(client.execute(b"RPUSH", b"resp:counter", str(i)) for i in range(500))
        )
        stored = await client.execute(b"LRANGE", b"resp:counter", 0, -1)
    finally:
        await client.aclose()
    assert sorted(answers) == list(range(1, 501))
    # One write carried every command queued in that loop iteration, in order.
    assert len(writes[0]) == 500
    assert stored == [str(i).encode() for i in range(500)]


async def test_a_pipeline_gets_every_reply_errors_in_place(client: RespClient) -> None:
    replies = await client.pipeline(
        [(b"SET", b"resp:a", b"1"), (b"LPUSH", b"resp:a", b"x"), (b"GET", b"resp:a")]
    )
    assert replies[0] == b"OK" and replies[2] == b"1"
    assert isinstance(replies[1], RespError) and replies[1].text.startswith("WRONGTYPE")
    with pytest.raises(RespError, match="WRONGTYPE"):
        await client.execute(b"LPUSH", b"resp:a", b"x")
    assert await client.execute(b"GET", b"resp:a") == b"1"  # still in step after an error


async def test_a_cancelled_command_does_not_shift_the_replies(client: RespClient) -> None:
    await client.execute(b"SET", b"resp:b", b"2")
    first = asyncio.ensure_future(client.execute(b"GET", b"resp:missing"))
    second = asyncio.ensure_future(client.execute(b"GET", b"resp:b"))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == b"2"
    assert await client.execute(b"ECHO", b"next") == b"next"


async def test_scripts_reload_after_script_flush(client: RespClient) -> None:
    script = Script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
    assert await client.evalsha(script, [b"resp:n"], [b"x"]) == [b"resp:n", b"x", 1]
    assert await client.execute(b"SCRIPT", b"EXISTS", script.sha) == [1]
    await client.execute(b"SCRIPT", b"FLUSH")
    assert await client.evalsha(script, [b"resp:n"], [b"y"]) == [b"resp:n", b"y", 2]
    assert await client.execute(b"SCRIPT", b"EXISTS", script.sha) == [1]  # EVAL cached it
    with pytest.raises(RespError, match="boom"):
        await client.evalsha(Script("return redis.error_reply('boom')"), [], [])


async def test_a_large_value_round_trips(client: RespClient) -> None:
    body = os.urandom(3 * 1024 * 1024)
    assert await client.execute(b"SET", b"resp:big", body) == b"OK"
    assert await client.execute(b"GET", b"resp:big") == body


async def test_password_and_database_from_the_url() -> None:
    with redis_with("--requirepass", "s3cret") as (port, _):
        client = RespClient.from_url(f"redis://:s3cret@127.0.0.1:{port}/3")
        other = aioredis.from_url(f"redis://:s3cret@127.0.0.1:{port}/3")
        try:
            await client.execute(b"SET", b"resp:db", b"three")
            assert await other.get(b"resp:db") == b"three"  # SELECT 3 applied
        finally:
            await client.aclose()
            await other.aclose()
        anonymous = RespClient.from_url(f"redis://127.0.0.1:{port}/0")
        refused = RespClient.from_url(f"redis://:wrong@127.0.0.1:{port}/0")
        try:
            with pytest.raises(RespError, match="NOAUTH"):
                await anonymous.execute(b"GET", b"resp:db")
            with pytest.raises(RespConnectionError, match="refused the login") as failure:
                await refused.execute(b"GET", b"resp:db")
        finally:
            await anonymous.aclose()
            await refused.aclose()
        assert "wrong" not in str(failure.value)


async def test_an_acl_user_logs_in() -> None:
    acl = ("--user", "csms", "on", ">pw", "~*", "&*", "+@all", "--user", "default", "off")
    with redis_with(*acl) as (port, _):
        client = RespClient.from_url(f"redis://csms:pw@127.0.0.1:{port}/0")
        try:
            assert await client.execute(b"ACL", b"WHOAMI") == b"csms"
        finally:
            await client.aclose()


def _pid(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.pid


async def test_a_killed_redis_fails_pending_commands_and_is_reconnected_to() -> None:
    with redis_with() as (port, server):
        client = RespClient.from_url(f"redis://127.0.0.1:{port}/0", timeout=GUARD)
        try:
            assert await client.execute(b"PING") == b"PONG"
            os.kill(_pid(server), signal.SIGSTOP)  # the commands below wait in flight
            pending = [asyncio.ensure_future(client.execute(b"INCR", b"resp:k")) for _ in range(5)]
            await asyncio.sleep(0.1)
            assert not any(future.done() for future in pending)
            os.kill(_pid(server), signal.SIGKILL)
            server.process.wait()  # type: ignore[union-attr]
            server.process = None
            done, _ = await asyncio.wait(pending, timeout=GUARD)
            assert len(done) == 5  # all failed at once, long before the client's timeout
            for future in pending:
                assert isinstance(future.exception(), RespConnectionError)
            with pytest.raises(RespConnectionError):
                await client.execute(b"PING")  # down: fails, does not wait
            server.start()
            assert await until_answered(client) == b"PONG"
        finally:
            await client.aclose()


async def test_a_stalled_redis_fails_pending_commands_after_the_timeout() -> None:
    with redis_with() as (port, server):
        client = RespClient.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        try:
            assert await client.execute(b"PING") == b"PONG"
            os.kill(_pid(server), signal.SIGSTOP)
            try:
                with pytest.raises(RespTimeoutError):
                    await asyncio.wait_for(client.execute(b"INCR", b"resp:s"), GUARD)
            finally:
                os.kill(_pid(server), signal.SIGCONT)
            # The stalled command may still have been applied: the next one sees Redis again.
            assert await until_answered(client) == b"PONG"
            assert await client.execute(b"GET", b"resp:s") == b"1"
        finally:
            await client.aclose()


async def test_commands_fail_fast_while_redis_is_down() -> None:
    with redis_with() as (port, server):
        url = f"redis://127.0.0.1:{port}/0"
        server.stop()
        client = RespClient.from_url(url)
        try:
            for _ in range(3):
                with pytest.raises(RespConnectionError, match=r"127\.0\.0\.1"):
                    await client.execute(b"PING")
            server.start()
            assert await until_answered(client) == b"PONG"
        finally:
            await client.aclose()
        with pytest.raises(RespConnectionError, match="closed"):
            await client.execute(b"PING")


async def test_rediss_verifies_the_server_and_presents_a_client_certificate(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    identity = pki.client("csms-manager")
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
        trusted = RespClient.from_url(
            url,
            ca_file=str(pki.ca.cert),
            cert_file=str(identity.cert),
            key_file=str(identity.key),
        )
        untrusted = RespClient.from_url(
            url,
            ca_file=str(pki.foreign_ca.cert),
            cert_file=str(identity.cert),
            key_file=str(identity.key),
        )
        try:
            assert await trusted.execute(b"PING") == b"PONG"
            with pytest.raises(RespConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.execute(b"PING")
        finally:
            await trusted.aclose()
            await untrusted.aclose()
