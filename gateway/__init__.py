"""The gateway: station WebSockets in, bus out, OCPP-J framing and correlation in between.

- :mod:`gateway.pipe`: the per-connection correlation rules as a sans-I/O state machine.
- :mod:`gateway.connection`: the I/O around one pipe (socket writes, publishes, timer).
- :mod:`gateway.server`: :class:`Gateway`, the WebSocket server and bus consumer.
- :mod:`gateway.admission`: who may connect (security profiles 1-3), a pure decision.
- :mod:`gateway.listeners` / :mod:`gateway.tls`: the listening sockets, TLS contexts and
  certificate reload, TLS-offload headers from trusted proxies, first-try mode.
- :mod:`gateway.limits` / :mod:`gateway.guard`: limits against hostile input (message rate,
  connections per address and per process, handshake timeout), pure and websockets glue.
"""

from __future__ import annotations

from gateway.pipe import Action, Disconnect, Limits, Pipe, Publish, Report, SendToStation
from gateway.server import Gateway, HandshakeRefused, parse_station_path

__all__ = [
    "Action",
    "Disconnect",
    "Gateway",
    "HandshakeRefused",
    "Limits",
    "Pipe",
    "Publish",
    "Report",
    "SendToStation",
    "parse_station_path",
]
