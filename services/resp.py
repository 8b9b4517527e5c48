"""A thin asyncio Redis client for the stores' hot path: RESP2 over one pipelined connection.

Why not redis-py here: a station message costs two scripts, and redis-py's layers (the
connection pool, retries, the encoder, the RESP3 parser) cost more CPU than the manager's
own work. This client does only what the hot path needs:

- one :class:`asyncio.Protocol` per connection, every request pipelined on it (a FIFO of
  futures, any number in flight), and the commands queued in one loop iteration written
  with one ``transport.write``;
- a RESP2 reply parser in plain Python (bulk strings, integers, simple strings, arrays,
  nil; an error reply is a :class:`RespError` carrying Redis's text);
- :meth:`RespClient.evalsha` with the EVAL fallback on NOSCRIPT (EVAL also caches the
  script, so a flushed or restarted Redis costs one extra send, once);
- the URL forms the settings accept (``redis://[user:password@]host[:port][/db]``,
  ``rediss://`` for TLS 1.2+ with the server verified, ``unix://path?db=N``), AUTH and
  SELECT on connect, a connect timeout;
- failure handling the stores rely on: when the connection drops, or Redis does not answer
  within ``timeout`` while commands wait, every pending command fails at once with
  :class:`RespConnectionError` (an ``OSError``, which the stores turn into
  ``StoreUnavailable``); the next command reconnects, with a growing pause between failed
  connects so a Redis that is down is not hammered.

Blocking commands (``XREAD BLOCK``, ``BLPOP``) must not be sent on it: they would hold up
every command behind them. Those stay on redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "Arg",
    "Endpoint",
    "RespClient",
    "RespConnectionError",
    "RespError",
    "RespProtocolError",
    "RespTimeoutError",
    "Script",
    "pack",
    "parse_url",
]

Arg = bytes | str | int | float
"""A command argument: bytes as they are, text as UTF-8, numbers as their decimal text."""

DEFAULT_TIMEOUT = 2.0
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 1.0
"""Pause after a failed connect (doubling up to the cap) during which commands fail at once."""


class RespError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-NOSCRIPT ...``); ``text`` is Redis's."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class RespConnectionError(ConnectionError):
    """No answer from Redis: the connection failed, dropped or could not be made."""


class RespTimeoutError(RespConnectionError):
    """Redis stopped answering for ``timeout`` seconds while commands waited."""


class RespProtocolError(RespConnectionError):
    """Redis sent something that is not RESP2: the connection is dropped."""


# --- encoding --------------------------------------------------------------------------------


def _arg(value: Arg) -> bytes:
    kind = type(value)
    if kind is bytes:
        return value  # type: ignore[return-value]
    if kind is str:
        return value.encode()  # type: ignore[union-attr]
    if kind is int:
        return b"%d" % value  # type: ignore[str-format]
    if kind is float:
        return repr(value).encode()
    if isinstance(value, bool):
        raise TypeError("booleans are not Redis arguments")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float):
        return str(value).encode()
    raise TypeError(f"not a Redis argument: {value!r}")


_LENGTHS = [b"$%d" % size for size in range(4096)]
"""Bulk-string headers of the common lengths, made once."""


def pack(args: Iterable[Arg]) -> bytes:
    """One command in RESP2 (an array of bulk strings): ``*N``, then ``$len`` and the bytes
    of each argument, every part ended by CRLF, in one join."""
    parts: list[bytes] = [b""]
    lengths = _LENGTHS
    for value in args:
        kind = type(value)
        if kind is str:
            data = value.encode()  # type: ignore[union-attr]
        elif kind is int:
            data = b"%d" % value  # type: ignore[str-format]
        elif kind is bytes:
            data = value
        else:
            data = _arg(value)
        size = len(data)
        parts.append(lengths[size] if size < 4096 else b"$%d" % size)
        parts.append(data)
    parts[0] = b"*%d" % (len(parts) // 2)
    parts.append(b"")
    return b"\r\n".join(parts)


# --- parsing ---------------------------------------------------------------------------------


class _Incomplete(Exception):
    """The buffer ends inside a reply; ``need`` is the buffer length it needs at least."""

    def __init__(self, need: int) -> None:
        self.need = need


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """The reply starting at ``pos`` and the position after it (raises _Incomplete)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete(len(buf) + 1)
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        start = end + 2
        stop = start + size
        if len(buf) < stop + 2:
            raise _Incomplete(stop + 2)
        return buf[start:stop], stop + 2
    if kind == 58:  # : integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 42:  # * array
        count = int(buf[pos + 1 : end])
        if count < 0:
            return None, end + 2
        items = []
        pos = end + 2
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 43:  # + simple string
        return buf[pos + 1 : end], end + 2
    if kind == 45:  # - error
        return RespError(buf[pos + 1 : end].decode(errors="replace")), end + 2
    raise RespProtocolError(f"not a RESP2 reply: {buf[pos : pos + 16]!r}")


class Parser:
    """Replies out of a byte stream fed in arbitrary pieces.

    A reply that arrives in one piece is parsed from that piece without a copy; pieces of a
    long reply are kept aside until the length it announced is there, so a large bulk
    string costs one join, not one re-parse per piece.
    """

    __slots__ = ("_buf", "_chunks", "_have", "_need")

    def __init__(self) -> None:
        self._buf = b""
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0

    def feed(self, data: bytes) -> list[Any]:
        """The replies ``data`` completes, in order (an error reply as a RespError)."""
        if self._need:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            buf = b"".join(self._chunks)
            self._chunks.clear()
            self._need = 0
        elif self._buf:
            buf = self._buf + data
        else:
            buf = data
        replies = []
        pos = 0
        size = len(buf)
        try:
            while pos < size:
                reply, pos = _parse(buf, pos)
                replies.append(reply)
        except _Incomplete as short:
            rest = buf[pos:]
            need = short.need - pos
            if need > len(rest) + 4096:  # a long reply: wait for all of it before parsing
                self._buf = b""
                self._chunks.append(rest)
                self._have = len(rest)
                self._need = need
            else:
                self._buf = rest
            return replies
        self._buf = b""
        return replies


# --- connections -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect and how to log in, from a Redis URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    """A unix socket (``unix://``) instead of host and port."""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def describe(self) -> str:
        """For error messages (never the password)."""
        if self.path:
            return f"Redis at unix:{self.path}"
        return f"Redis at {self.host}:{self.port}/{self.db}"


def parse_url(url: str) -> Endpoint:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://...`` or ``unix://path``,
    with ``?db=N`` accepted too, as redis-py reads them (user and password percent-decoded)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("a Redis URL starts with redis://, rediss:// or unix://")
    query = parse_qs(parts.query)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    db = 0
    if query.get("db"):
        db = int(query["db"][0])
    if parts.scheme == "unix":
        return Endpoint(path=unquote(parts.path), db=db, username=username, password=password)
    path = parts.path.lstrip("/")
    if path:
        db = int(path)
    return Endpoint(
        host=parts.hostname or "localhost",
        port=parts.port or 6379,
        db=db,
        username=username,
        password=password,
        tls=parts.scheme == "rediss",
    )


def tls_context(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """TLS 1.2+, the server's certificate verified against ``ca_file`` (default: the system's
    CAs) and its host name checked; a client certificate when ``cert_file`` is given."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


class _Many:
    """A pipeline's place in the FIFO: collects its replies, then resolves one future."""

    __slots__ = ("future", "left", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] = []


class _Connection(asyncio.Protocol):
    """One connection: writes coalesced per loop iteration, replies matched in FIFO order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, name: str) -> None:
        self._loop = loop
        self._timeout = timeout
        self._name = name
        self._transport: asyncio.Transport | None = None
        self._parser = Parser()
        self._pending: collections.deque[asyncio.Future[Any] | _Many] = collections.deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._progress = 0.0
        """loop time of the last reply (or of the first command after a quiet spell)."""
        self._watchdog: asyncio.TimerHandle | None = None
        self.trace: Callable[[list[bytes]], None] | None = None
        self.error: RespConnectionError | None = None
        """Set once the connection is unusable."""
        self.made: asyncio.Future[None] = loop.create_future()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self.made.done():
            self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._progress = self._loop.time()
        try:
            replies = self._parser.feed(data)
        except (RespProtocolError, ValueError, IndexError) as exc:
            self._fail(RespProtocolError(f"{self._name}: unreadable reply ({exc})"))
            return
        pending = self._pending
        for reply in replies:
            if not pending:
                self._fail(RespProtocolError(f"{self._name}: a reply nobody asked for"))
                return
            head = pending[0]
            if type(head) is _Many:
                head.replies.append(reply)
                head.left -= 1
                if head.left:
                    continue
                pending.popleft()
                if not head.future.done():
                    head.future.set_result(head.replies)
                continue
            pending.popleft()
            if head.done():  # type: ignore[union-attr]
                continue  # its caller gave up (cancelled): the reply is dropped, in order
            if type(reply) is RespError:
                head.set_exception(reply)  # type: ignore[union-attr]
            else:
                head.set_result(reply)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._fail(RespConnectionError(f"{self._name}: connection lost{reason}"))

    # sending

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; its reply (or error) resolves the future."""
        if self.error is not None:
            raise self.error
        future = self._loop.create_future()
        self._queue(future, command)
        return future

    def send_many(self, commands: list[bytes]) -> asyncio.Future[list[Any]]:
        """Queue packed commands; the future gets all their replies (errors as RespError)."""
        if self.error is not None:
            raise self.error
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        if not commands:
            future.set_result([])
            return future
        self._queue(_Many(future, len(commands)), b"".join(commands))
        return future

    def _queue(self, waiter: asyncio.Future[Any] | _Many, command: bytes) -> None:
        if not self._pending:
            self._progress = self._loop.time()
            if self._watchdog is None:
                self._watchdog = self._loop.call_later(self._timeout, self._watch)
        self._pending.append(waiter)
        self._out.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out or self._transport is None or self.error is not None:
            return
        out, self._out = self._out, []
        if self.trace is not None:
            self.trace(out)
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _watch(self) -> None:
        """Fail everything when Redis has not answered for ``timeout`` while commands wait."""
        self._watchdog = None
        if not self._pending or self.error is not None:
            return
        quiet = self._loop.time() - self._progress
        if quiet >= self._timeout:
            self._fail(RespTimeoutError(f"{self._name}: no answer within {self._timeout} s"))
            return
        self._watchdog = self._loop.call_later(self._timeout - quiet, self._watch)

    # ending

    def _fail(self, error: RespConnectionError) -> None:
        """Mark the connection unusable, fail every pending command, drop the socket."""
        if self.error is None:
            self.error = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if not self.made.done():
            self.made.set_exception(error)
            self.made.exception()  # retrieved: a connect that failed raises its own error
        pending, self._pending = self._pending, collections.deque()
        self._out = []
        for waiter in pending:
            future = waiter.future if type(waiter) is _Many else waiter
            if not future.done():  # type: ignore[union-attr]
                future.set_exception(error)  # type: ignore[union-attr]
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._fail(RespConnectionError(f"{self._name}: client closed"))


class Script:
    """A Lua script and its SHA-1, for :meth:`RespClient.evalsha`."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str | bytes) -> None:
        self.source = source.encode() if isinstance(source, str) else source
        self.sha = hashlib.sha1(self.source).hexdigest().encode()


class RespClient:
    """A Redis client on one pipelined connection, made on first use and remade after a
    failure (see the module docstring). Safe for any number of concurrent tasks of one
    event loop; commands from all of them share the connection.

    ``trace`` (tests, benchmarks) is called with the packed commands of each socket write
    (the connection's handshake aside), so round trips can be counted.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        trace: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        if endpoint.tls and ssl_context is None:
            ssl_context = tls_context()
        self.endpoint = endpoint
        self.timeout = timeout
        self.trace = trace
        self._ssl = ssl_context if endpoint.tls else None
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._last_failure: RespConnectionError | None = None
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        trace: Callable[[list[bytes]], None] | None = None,
    ) -> RespClient:
        endpoint = parse_url(url)
        context = tls_context(ca_file, cert_file, key_file) if endpoint.tls else None
        return cls(endpoint, timeout=timeout, ssl_context=context, trace=trace)

    def describe(self) -> str:
        return self.endpoint.describe()

    # -- commands ---------------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        """One command; its reply (bytes, int, list, None), RespError for an error reply."""
        connection = self._connection
        if connection is None or connection.error is not None:
            connection = await self._connect()
        return await connection.send(pack(args))

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several commands in one write; their replies in order, an error reply as a
        RespError in its place (the others still ran: this is not MULTI)."""
        connection = self._connection
        if connection is None or connection.error is not None:
            connection = await self._connect()
        return await connection.send_many([pack(command) for command in commands])

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run ``script`` by its SHA-1; sent in full (EVAL, which caches it) on NOSCRIPT."""
        try:
            return await self.execute(b"EVALSHA", script.sha, len(keys), *keys, *args)
        except RespError as exc:
            if not exc.text.startswith("NOSCRIPT"):
                raise
        return await self.execute(b"EVAL", script.source, len(keys), *keys, *args)

    # -- the connection ---------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        if self._closed:
            raise RespConnectionError(f"{self.describe()}: client closed")
        if self._connecting is None or self._connecting.done():
            loop = asyncio.get_running_loop()
            if loop.time() < self._retry_at and self._last_failure is not None:
                raise RespConnectionError(
                    f"{self.describe()} unavailable ({self._last_failure}); next try in "
                    f"{self._retry_at - loop.time():.2f} s"
                )
            self._connecting = loop.create_task(self._open(loop), name="resp-connect")
        return await asyncio.shield(self._connecting)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        endpoint = self.endpoint
        name = self.describe()
        connection = _Connection(loop, self.timeout, name)
        try:
            async with asyncio.timeout(self.timeout):
                if endpoint.path:
                    await loop.create_unix_connection(lambda: connection, endpoint.path)
                else:
                    await loop.create_connection(
                        lambda: connection,
                        endpoint.host,
                        endpoint.port,
                        ssl=self._ssl,
                        server_hostname=endpoint.host if self._ssl else None,
                    )
                await connection.made
                handshake: list[list[Arg]] = []
                if endpoint.password is not None:
                    login: list[Arg] = [b"AUTH"]
                    if endpoint.username:
                        login.append(endpoint.username)
                    handshake.append([*login, endpoint.password])
                if endpoint.db:
                    handshake.append([b"SELECT", endpoint.db])
                if handshake:
                    for reply in await connection.send_many([pack(c) for c in handshake]):
                        if isinstance(reply, RespError):
                            raise RespConnectionError(f"{name} refused the login: {reply.text}")
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            connection.close()
            failure = (
                exc
                if isinstance(exc, RespConnectionError)
                else RespConnectionError(f"{name} not reachable: {exc or 'connect timed out'}")
            )
            self._backoff = min(BACKOFF_CAP, self._backoff * 2 or BACKOFF_FIRST)
            self._retry_at = loop.time() + self._backoff
            self._last_failure = failure
            raise failure from exc
        connection.trace = self.trace
        self._backoff = 0.0
        self._last_failure = None
        self._connection = connection
        return connection

    async def aclose(self) -> None:
        """Drop the connection; pending commands fail, later ones raise."""
        self._closed = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.done():
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
