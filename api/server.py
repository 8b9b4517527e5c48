"""Serve the API app with uvicorn inside the running asyncio loop.

:class:`ApiServer` binds the socket itself (so port 0 gives a free port whose number is
known at once), runs uvicorn's server as a task of the current loop, and leaves signal
handling to the process (``csms run`` and ``csms api`` stop on SIGINT/SIGTERM themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from types import TracebackType
from typing import Self

import structlog
import uvicorn
from fastapi import FastAPI

__all__ = ["ApiServer", "stopping"]

_log = structlog.get_logger("api")

SHUTDOWN_GRACE = 5.0
"""Seconds requests in progress may take to finish when the server stops."""


def stopping(app: FastAPI) -> asyncio.Event:
    """Set when the server serving ``app`` begins to stop. Responses that last (the live
    event stream) end on it: uvicorn would otherwise wait for them until its grace ran out."""
    event = getattr(app.state, "stopping", None)
    if not isinstance(event, asyncio.Event):
        event = app.state.stopping = asyncio.Event()
    return event


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handlers: the process owns those."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """``async with ApiServer(app, host, port) as server:`` serves until the block ends."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 9080) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the server is not running")
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """Base URL of the API (``http://host:port``)."""
        host = self._host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> Self:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._socket = sock
        stopping(self._app).clear()
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="on",  # the app closes what it opened (the OIDC key fetcher)
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE),
            server_header=False,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="api")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the API server stopped at start")
            await asyncio.sleep(0.01)
        _log.debug("api listening", url=self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stopping(self._app).set()
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, SHUTDOWN_GRACE + 5)
            except TimeoutError:
                _log.warning("api server did not stop in time")
            except SystemExit:
                pass
        if self._socket is not None:
            self._socket.close()
        self._task = self._server = None
