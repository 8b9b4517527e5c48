"""Connection limits at socket and handshake level: the websockets side of `gateway.limits`.

A :class:`Guard` plugs into websockets' ``serve`` in two places:

- ``create_connection=guard.connection_class``: every accepted TCP connection is counted from
  accept to ``connection_lost`` (which asyncio calls exactly once for every accepted
  connection, whatever happens in between). Above ``max_connections`` a new connection is
  aborted at once, without reading its request: at that point the process is protecting its
  file descriptors, and reading and answering costs what is being protected. A connection
  that does not complete its upgrade within ``handshake_timeout`` is aborted by websockets
  (``open_timeout``); the guard logs it.
- ``guard.admit(ws, request)`` first thing in ``process_request``: the per-address limit.
  It is checked at the HTTP request rather than at accept so that a refused client gets an
  answer it can act on: **429 Too Many Requests** with ``Retry-After``. RFC 6585 §4 defines
  429 for a client that sent too much, and says a ``Retry-After`` may tell it when to retry;
  503 would tell every client that the server itself is overloaded, which is not the case.
  The count is released in ``connection_lost``, so it cannot leak: not on a refusal later in
  the handshake (bad path, failed authentication), not on a handshake timeout, not when the
  client vanishes before the upgrade completes.

Connections still in the handshake are not counted per address (their request, which might
name a forwarded client address later, has not arrived); they are bounded by
``handshake_timeout`` and ``max_connections``. On a TLS listener asyncio creates the
connection only once the TLS handshake is done, so the guard counts it from then on; the
TLS handshake itself is bounded by the same timeout (websockets passes ``open_timeout`` as
``ssl_handshake_timeout``). Every refusal is logged at warning level
through a :class:`~gateway.limits.LogThrottle`: one line per kind and source address per
``LOG_INTERVAL``, with the number of lines suppressed in between.
"""

from __future__ import annotations

import asyncio
import http
import time
from typing import Any, ClassVar
from urllib.parse import unquote

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request
from websockets.protocol import State

from csms.config import Settings
from gateway.handshake import Refusal
from gateway.limits import (
    LOG_INTERVAL,
    AddressLimiter,
    LogThrottle,
    address_key,
    format_peer,
    peer_host,
)

__all__ = ["RETRY_AFTER", "Guard", "GuardedConnection"]

RETRY_AFTER = 30
"""Seconds a client refused for too many connections from its address is asked to wait."""


class GuardedConnection(ServerConnection):
    """A websockets server connection that reports its accept and its end to a :class:`Guard`.

    :meth:`Guard.connection_class` makes a subclass bound to one guard.
    """

    guard: ClassVar[Guard | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accepted_at = time.monotonic()
        self.counted_as: str | None = None
        """The address key this connection is counted under in the per-address limiter."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.accepted_at = time.monotonic()  # after TLS: when websockets' open_timeout starts
        super().connection_made(transport)
        if self.guard is not None:
            self.guard._accepted(self)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            if self.guard is not None:
                self.guard._lost(self)
        finally:
            super().connection_lost(exc)


class Guard:
    """Open-connection bookkeeping of one gateway process (see the module docstring)."""

    def __init__(self, settings: Settings, log: structlog.typing.FilteringBoundLogger) -> None:
        self.max_connections = settings.max_connections
        self.handshake_timeout = settings.handshake_timeout
        self.addresses = AddressLimiter(settings.max_connections_per_address)
        """Open, upgraded-or-upgrading connections per source address."""
        self._log = log
        self._throttle = LogThrottle(LOG_INTERVAL, max_keys=4096)
        self._open = 0

        class BoundConnection(GuardedConnection):
            pass

        BoundConnection.guard = self
        self.connection_class: type[ServerConnection] = BoundConnection
        """Pass as ``create_connection`` to websockets' ``serve``."""

    @property
    def open_sockets(self) -> int:
        """TCP connections accepted and not yet closed (handshakes included)."""
        return self._open

    def admit(
        self, ws: ServerConnection, request: Request, *, address: str | None = None
    ) -> Refusal | None:
        """The per-address limit; call first thing in ``process_request``.

        ``address`` is the station's address when a trusted TLS-offloading proxy forwarded
        it; by default the TCP peer counts. Returns None to go on with the handshake, or the
        429 refusal to answer (:func:`gateway.handshake.respond`).
        """
        if not isinstance(ws, GuardedConnection) or ws.counted_as is not None:
            return None
        host = address or peer_host(ws.remote_address)
        if host is None:
            return None
        key = address_key(host)
        if self.addresses.acquire(key):
            ws.counted_as = key
            return None
        self._warn(
            "connection refused: too many connections from one address",
            key,
            station=_station_hint(request.path),
            remote=format_peer(ws.remote_address),
            address=key,
            limit=self.addresses.limit,
            status=int(http.HTTPStatus.TOO_MANY_REQUESTS),
        )
        return Refusal(
            http.HTTPStatus.TOO_MANY_REQUESTS,
            f"too many connections from {key} (at most {self.addresses.limit})",
            (("Retry-After", str(RETRY_AFTER)),),
        )

    # -- connection events (from GuardedConnection) ----------------------------------------

    def _accepted(self, ws: GuardedConnection) -> None:
        self._open += 1
        if self.max_connections is not None and self._open > self.max_connections:
            self._warn(
                "connection dropped: gateway at max_connections",
                None,
                remote=format_peer(ws.remote_address),
                limit=self.max_connections,
            )
            ws.transport.abort()

    def _lost(self, ws: GuardedConnection) -> None:
        self._open -= 1
        if ws.counted_as is not None:
            self.addresses.release(ws.counted_as)
            ws.counted_as = None
        if ws.protocol.state is not State.CONNECTING or ws.response is not None:
            return  # upgraded, or answered with an HTTP status
        elapsed = time.monotonic() - ws.accepted_at
        if elapsed < self.handshake_timeout * 0.99 or ws.protocol.handshake_exc is not None:
            return  # went away by itself, or sent something that is not an upgrade request
        host = peer_host(ws.remote_address)
        self._warn(
            "handshake timed out: connection closed",
            address_key(host) if host else None,
            remote=format_peer(ws.remote_address),
            station=_station_hint(ws.request.path) if ws.request is not None else None,
            request_received=ws.request is not None,
            handshake_timeout=self.handshake_timeout,
        )

    def _warn(self, event: str, source: str | None, **fields: Any) -> None:
        suppressed = self._throttle.allow((event, source), time.monotonic())
        if suppressed is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed
        self._log.warning(event, **fields)


def _station_hint(path: str) -> str:
    """The station id a request path names, for log lines only (not validated)."""
    return unquote(path.partition("?")[0].rpartition("/")[2], errors="replace")[:64]
