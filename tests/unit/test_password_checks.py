"""The password-check pool: results, the bound on waiting checks, recovery."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.password_checks import PasswordChecks, PasswordChecksBusy


async def test_runs_checks_off_the_loop_and_returns_their_result() -> None:
    checks = PasswordChecks(threads=1, max_waiting=4)
    try:
        loop_thread = threading.get_ident()
        assert await checks.run(threading.get_ident) != loop_thread
        assert await checks.run(lambda: 42) == 42
        assert checks.in_progress == 0
    finally:
        checks.close()


async def test_refuses_beyond_max_waiting_and_recovers() -> None:
    checks = PasswordChecks(threads=1, max_waiting=2)
    release = threading.Event()
    try:
        blocked = [asyncio.create_task(checks.run(release.wait)) for _ in range(2)]
        await asyncio.sleep(0)
        assert checks.in_progress == 2
        with pytest.raises(PasswordChecksBusy):
            await checks.run(lambda: True)
        release.set()
        assert await asyncio.gather(*blocked) == [True, True]
        assert await checks.run(lambda: "again") == "again"
    finally:
        release.set()
        checks.close()


async def test_exceptions_free_their_place() -> None:
    checks = PasswordChecks(threads=1, max_waiting=1)

    def broken() -> None:
        raise ValueError("bad hash")

    try:
        with pytest.raises(ValueError, match="bad hash"):
            await checks.run(broken)
        assert checks.in_progress == 0
        assert await checks.run(lambda: 1) == 1
    finally:
        checks.close()


def test_rejects_nonsense_sizes() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PasswordChecks(threads=0, max_waiting=1)
