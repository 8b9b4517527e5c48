"""The gateway: station WebSockets in, bus out, OCPP-J framing and correlation in between.

- :mod:`gateway.server`: :class:`Gateway`, composition: listeners, handshake, presence, the
  bus consumer and each connection's lifetime.
- :mod:`gateway.handshake`: path, subprotocol and authentication of an upgrade request, and
  the one mapping from a refusal to its HTTP response.
- :mod:`gateway.presence`: connection events, duplicate-connection takeover, the presence
  lease and last will.
- :mod:`gateway.pipe`: the per-connection correlation rules as a sans-I/O state machine.
- :mod:`gateway.connection`: the I/O around one pipe (socket writes, publishes, timer).
- :mod:`gateway.admission`: who may connect (security profiles 1-3), a pure decision.
- :mod:`gateway.listeners` / :mod:`gateway.tls`: the listening sockets, TLS contexts and
  certificate reload, TLS-offload headers from trusted proxies, first-try mode.
- :mod:`gateway.limits` / :mod:`gateway.guard`: limits against hostile input (message rate,
  connections per address and per process, handshake timeout), pure and websockets glue.
"""

from __future__ import annotations

from gateway.handshake import HandshakeRefused, parse_station_path
from gateway.pipe import (
    Action,
    ConnectionState,
    Disconnect,
    Limits,
    Pipe,
    Publish,
    Report,
    SendToStation,
)
from gateway.presence import LEASE_FACTOR, presence_will
from gateway.server import Gateway, default_gateway_id

__all__ = [
    "LEASE_FACTOR",
    "Action",
    "ConnectionState",
    "Disconnect",
    "Gateway",
    "HandshakeRefused",
    "Limits",
    "Pipe",
    "Publish",
    "Report",
    "SendToStation",
    "default_gateway_id",
    "parse_station_path",
    "presence_will",
]
