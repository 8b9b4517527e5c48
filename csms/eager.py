"""Start a coroutine now, in the caller's turn, and give it a task only if it has to wait.

Most of the work a gateway or manager does per message never waits (an in-process bus, the
memory stores, a socket write that fits the buffer), yet a task per message costs a task
object, a loop callback and an extra loop iteration. :func:`start` runs the coroutine up to
its first suspension right away; it returns None when the coroutine finished without one, or
the task that runs the rest.

It is the eager task start of Python 3.12 (``asyncio.Task(..., eager_start=True)``), which it
uses there. On 3.11 it is emulated: the first step runs under a stand-in for the task that
does not exist yet, so code that captures :func:`asyncio.current_task` in that step (an
``asyncio.timeout``, a ``TaskGroup``) cancels the right task later, and each coroutine runs in
a context of its own, as a task would. The stand-in is no :class:`asyncio.Task`: code that
needs a real one before its first wait (anyio's cancel scopes, so httpx) must wait once first
(``await asyncio.sleep(0)``); on 3.12 nothing needs to. That is why only code of the
project's own starts this way (the gateway's lanes), never code that calls operators'
plug-ins (the manager's handlers).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["start"]

_Step = Coroutine[Any, Any, None]


def start(coro: _Step, *, name: str | None = None) -> asyncio.Task[None] | None:
    """Run ``coro`` until it first waits; None when it finished, else the task that runs the
    rest (keep a reference to it). An exception raised before the first wait is raised here;
    a cancellation before it counts as finished."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):  # pragma: no cover - the project's CI runs 3.11
        task: asyncio.Task[None] = asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg,unused-ignore]
        if not task.done():
            return task
        if not task.cancelled():
            task.result()
        return None
    return _start_311(loop, coro, name)


class _StandIn:
    """``current_task()`` during the first step: forwards cancellation to the task that runs
    the rest once there is one (until then nothing can ask for it: no loop turn passes)."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    def cancel(self, msg: Any = None) -> bool:
        return self.task.cancel(msg) if self.task is not None else False

    def uncancel(self) -> int:
        return self.task.uncancel() if self.task is not None else 0

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else 0

    def done(self) -> bool:
        return self.task.done() if self.task is not None else False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()


def _start_311(
    loop: asyncio.AbstractEventLoop, coro: _Step, name: str | None
) -> asyncio.Task[None] | None:
    # Private, but the very functions asyncio's own task step uses to set the current task.
    enter: Any = asyncio.tasks._enter_task
    leave: Any = asyncio.tasks._leave_task
    context = contextvars.copy_context()
    caller = asyncio.current_task(loop)
    stand_in = _StandIn()
    if caller is not None:
        leave(loop, caller)
    enter(loop, stand_in)
    try:
        yielded = context.run(coro.send, None)
    except StopIteration:
        return None
    except asyncio.CancelledError:
        return None
    finally:
        leave(loop, stand_in)
        if caller is not None:
            enter(loop, caller)
    task = loop.create_task(_Rest(coro, yielded), name=name, context=context)
    stand_in.task = task
    return task


class _Rest(Coroutine[Any, Any, None]):
    """What the task runs: ``coro`` from its first wait on. The task's first step gets the
    wait ``coro`` is in; every later step, and any cancellation (even one before the first
    step), goes straight to ``coro``."""

    __slots__ = ("_coro", "_started", "_yielded")

    def __init__(self, coro: _Step, yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            yielded, self._yielded = self._yielded, None
            return yielded
        return self._coro.send(value)

    def throw(self, exc: Any, *args: Any) -> Any:
        if not self._started:
            # Cancelled before its first step: as a task would, cancel what it waits for.
            self._started = True
            waiting, self._yielded = self._yielded, None
            if isinstance(waiting, asyncio.Future):
                waiting.cancel()
        return self._coro.throw(exc, *args)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, None]:
        raise TypeError("run by its task only")
