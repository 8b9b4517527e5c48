"""The gateway: station WebSockets in, bus out, OCPP-J framing and correlation in between.

- :mod:`gateway.pipe`: the per-connection correlation rules as a sans-I/O state machine.
- :mod:`gateway.connection`: the I/O around one pipe (socket writes, publishes, timer).
- :mod:`gateway.server`: :class:`Gateway`, the WebSocket server and bus consumer.
"""

from __future__ import annotations

from gateway.pipe import Action, Limits, Pipe, Publish, Report, SendToStation
from gateway.server import Gateway, HandshakeRefused, parse_station_path

__all__ = [
    "Action",
    "Gateway",
    "HandshakeRefused",
    "Limits",
    "Pipe",
    "Publish",
    "Report",
    "SendToStation",
    "parse_station_path",
]
