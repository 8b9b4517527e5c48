"""A tiny HTTP/1.1 responder for liveness, readiness and metrics of ``csms gateway`` and
``csms manager``, which have no web framework (the operator API has its own routes).

- ``GET /health``: 200 ``{"status": "ok"}`` while the event loop runs (a blocked loop
  answers nothing, which is what a liveness probe is for).
- ``GET /ready``: every readiness check, run concurrently, each bounded by
  ``check_timeout``; 200 when all pass, else 503; the body is
  ``{"status": "ready" | "not_ready", "checks": {name: bool}}``.
- ``GET /metrics``: the registry in the Prometheus text format.

Anything else gets a small JSON error ``{code, message, details}`` (400, 404, 405, 408,
431). One request per connection (``Connection: close``): probes and scrapers open a
connection per request anyway, and it leaves nothing to keep track of. The server reads at
most ``MAX_REQUEST_HEAD`` bytes, gives a client ``request_timeout`` seconds to send its
request and read the answer, serves at most ``max_connections`` at once (more are dropped unread)
and never lets a request's failure reach the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = [
    "CHECK_TIMEOUT",
    "MAX_REQUEST_HEAD",
    "Check",
    "ProbeServer",
]

_log = structlog.get_logger("csms.probes")

Check = Callable[[], Awaitable[bool]]
"""A readiness check: True when this part works; raising or timing out counts as False."""

CHECK_TIMEOUT = 2.0
"""Seconds a readiness check may take before it counts as failed."""
MAX_REQUEST_HEAD = 8192
"""Bytes of request line and headers read; a longer head is answered 431."""
REQUEST_TIMEOUT = 5.0
"""Seconds a client has to send its request head, and again to read the answer."""
MAX_CONNECTIONS = 32
"""Connections served at once; more are dropped at once, unread."""

_JSON = "application/json"
_ROUTES = ("/health", "/ready", "/metrics")
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class _Answer:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = _JSON,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


def _json(status: int, value: Mapping[str, Any], **headers: str) -> _Answer:
    body = json.dumps(value, separators=(",", ":")).encode() + b"\n"
    return _Answer(status, body, _JSON, tuple(headers.items()))


def _error(status: http.HTTPStatus, message: str, **headers: str) -> _Answer:
    code = status.phrase.lower().replace(" ", "_")
    return _json(int(status), {"code": code, "message": message, "details": {}}, **headers)


def parse_request_line(head: bytes) -> tuple[str, str] | None:
    """``(method, path)`` of an HTTP/1.x request head, None when it is not one."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if not method or not set(method) <= _TOKEN or version not in (b"HTTP/1.0", b"HTTP/1.1"):
        return None
    if not target.startswith(b"/") or not all(0x21 <= byte < 0x7F for byte in target):
        return None
    return method.decode("ascii"), target.split(b"?", 1)[0].decode("ascii")


class ProbeServer:
    """``async with ProbeServer(host, port, registry=..., checks=...) as probes:`` serves
    until the block is left. ``port`` 0 takes a free port (:attr:`port` says which)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        registry: CollectorRegistry,
        checks: Mapping[str, Check] | None = None,
        check_timeout: float = CHECK_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        role: str = "csms",
    ) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._checks = dict(checks or {})
        self._check_timeout = check_timeout
        self._request_timeout = request_timeout
        self._max_connections = max_connections
        self._log = _log.bind(role=role)
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        """Connections being served, so that leaving the ``async with`` can end them."""

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one picked for port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL of the probes, e.g. ``http://0.0.0.0:9101`` (append ``/ready``)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=MAX_REQUEST_HEAD
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Dropping the sockets ends their handlers (cancelling them would make asyncio's
        # stream callback log the cancellation as an error on Python 3.11).
        for writer in self._handlers.values():
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=self._request_timeout)

    # -- one connection ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            if len(self._handlers) > self._max_connections:
                # Protecting the process: dropped unread, as the gateway does at
                # max_connections (answering would cost what is being protected).
                writer.transport.abort()
                return
            head_only, answer = await self._answer(reader)
            if answer is not None:
                await self._send(writer, answer, head_only=head_only)
        except Exception as exc:  # a client's doing must never reach the process
            self._log.debug("probe request failed", error=str(exc) or type(exc).__name__)
        finally:
            self._handlers.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._request_timeout):
                    await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[bool, _Answer | None]:
        """``(HEAD request, answer)``; no answer for a client that left without a word."""
        try:
            async with asyncio.timeout(self._request_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            status = http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            return False, _error(status, f"request head over {MAX_REQUEST_HEAD} bytes")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return False, None
            return False, _error(http.HTTPStatus.BAD_REQUEST, "incomplete HTTP request")
        except TimeoutError:
            return False, _error(http.HTTPStatus.REQUEST_TIMEOUT, "request not sent in time")
        request = parse_request_line(head)
        if request is None:
            return False, _error(http.HTTPStatus.BAD_REQUEST, "not an HTTP/1.1 request")
        method, path = request
        if path not in _ROUTES:
            message = "no such probe; try " + ", ".join(_ROUTES)
            return False, _error(http.HTTPStatus.NOT_FOUND, message)
        if method not in ("GET", "HEAD"):
            status = http.HTTPStatus.METHOD_NOT_ALLOWED
            return False, _error(status, "use GET", Allow="GET, HEAD")
        return method == "HEAD", await self._route(path)

    async def _route(self, path: str) -> _Answer:
        if path == "/health":
            return _json(200, {"status": "ok"})
        if path == "/ready":
            return await self._ready()
        return _Answer(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)

    async def _ready(self) -> _Answer:
        names = list(self._checks)
        results = await asyncio.gather(*(self._run_check(name) for name in names))
        checks = dict(zip(names, results, strict=True))
        ok = all(results)
        body = {"status": "ready" if ok else "not_ready", "checks": checks}
        return _json(200 if ok else 503, body)

    async def _run_check(self, name: str) -> bool:
        try:
            async with asyncio.timeout(self._check_timeout):
                return bool(await self._checks[name]())
        except Exception as exc:  # whatever failed, this part is not ready
            self._log.warning(
                "readiness check failed", check=name, error=str(exc) or type(exc).__name__
            )
            return False

    async def _send(
        self, writer: asyncio.StreamWriter, answer: _Answer, *, head_only: bool
    ) -> None:
        status = http.HTTPStatus(answer.status)
        lines = [
            f"HTTP/1.1 {answer.status} {status.phrase}",
            f"Content-Type: {answer.content_type}",
            f"Content-Length: {len(answer.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{name}: {value}" for name, value in answer.headers),
        ]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        writer.write(data if head_only else data + answer.body)
        async with asyncio.timeout(self._request_timeout):
            await writer.drain()
