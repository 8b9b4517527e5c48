"""Password verification off the event loop, on a small pool with a bound on waiting checks.

A Basic-auth check costs one scrypt (tens of milliseconds of CPU, by design). Run on the
event loop it would stall every connected station; run on asyncio's default executor, a
password-guessing flood would occupy the threads everything else shares and queue without
limit. So the gateway gives the checks their own threads and refuses new logins (HTTP 503,
``Retry-After``) while ``max_waiting`` checks are already queued or running: a flood then
costs a bounded amount of CPU and memory, and stations retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["PasswordChecks", "PasswordChecksBusy"]

_T = TypeVar("_T")


class PasswordChecksBusy(Exception):
    """Too many password checks are waiting; refuse this login and let the station retry."""


class PasswordChecks:
    """A dedicated thread pool for password checks, with a cap on checks in progress."""

    def __init__(self, threads: int, max_waiting: int) -> None:
        if threads < 1 or max_waiting < 1:
            raise ValueError("threads and max_waiting must be at least 1")
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="password")
        self._in_progress = 0

    @property
    def in_progress(self) -> int:
        """Checks queued or running now."""
        return self._in_progress

    async def run(self, check: Callable[[], _T]) -> _T:
        """Run ``check`` on the pool; :class:`PasswordChecksBusy` when the pool is full."""
        if self._in_progress >= self.max_waiting:
            raise PasswordChecksBusy(f"{self._in_progress} password checks in progress")
        self._in_progress += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, check)
        finally:
            self._in_progress -= 1

    def close(self) -> None:
        """Stop the threads; checks not started yet are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)
