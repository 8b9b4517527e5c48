"""csms.eager.start: work that never waits runs at once, work that waits gets a real task."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from csms import eager

_seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


async def test_work_that_never_waits_runs_at_once_and_needs_no_task() -> None:
    ran: list[str] = []

    async def quick() -> None:
        ran.append("ran")

    assert eager.start(quick()) is None
    assert ran == ["ran"]  # before this coroutine gave the loop a single turn


async def test_work_that_waits_continues_in_a_task_from_where_it_stopped() -> None:
    release = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def slow() -> None:
        steps.append("before")
        steps.append(await release)

    task = eager.start(slow())
    assert task is not None
    assert steps == ["before"]
    release.set_result("after")
    await task
    assert steps == ["before", "after"]


async def test_the_caller_stays_the_current_task() -> None:
    caller = asyncio.current_task()
    inside: list[object] = []

    async def look() -> None:
        inside.append(asyncio.current_task())

    assert eager.start(look()) is None
    assert asyncio.current_task() is caller
    assert inside and inside[0] is not caller


async def test_a_timeout_entered_before_the_first_wait_cancels_the_work_not_the_caller() -> None:
    never = asyncio.get_running_loop().create_future()
    outcome: list[str] = []

    async def bounded() -> None:
        try:
            async with asyncio.timeout(0.01):
                await never
        except TimeoutError:
            outcome.append("timed out")

    task = eager.start(bounded())
    assert task is not None
    await task
    assert outcome == ["timed out"]
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0


async def test_cancelling_the_task_reaches_the_coroutine() -> None:
    never = asyncio.get_running_loop().create_future()
    cleaned: list[str] = []

    async def waits() -> None:
        try:
            await never
        finally:
            cleaned.append("cleaned")

    task = eager.start(waits())
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["cleaned"]
    assert never.cancelled()


async def test_an_error_before_the_first_wait_is_raised_to_the_caller() -> None:
    async def broken() -> None:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        eager.start(broken())


async def test_context_changes_stay_with_the_work() -> None:
    release = asyncio.get_running_loop().create_future()

    async def sets() -> None:
        _seen.set("work")
        await release
        assert _seen.get() == "work"

    task = eager.start(sets())
    assert _seen.get() == "unset"
    assert task is not None
    release.set_result(None)
    await task
    assert _seen.get() == "unset"


async def test_started_from_a_loop_callback() -> None:
    loop = asyncio.get_running_loop()
    release = loop.create_future()
    started: list[asyncio.Task[None] | None] = []

    async def slow() -> None:
        await release

    called = asyncio.Event()

    def callback() -> None:
        started.append(eager.start(slow()))
        called.set()

    loop.call_soon(callback)
    await called.wait()
    task = started[0]
    assert task is not None
    release.set_result(None)
    await task
    assert task.done() and not task.cancelled()
