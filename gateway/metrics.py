"""Prometheus metrics of one gateway instance (served on ``/metrics`` by the probe server).

Counted as it happens, in plain cells (:mod:`csms.probes`): connections opened (by OCPP
version) and closed (by :data:`CLOSE_REASONS`), handshakes refused (by :data:`REFUSALS`),
frames in and out and CSMS call outcomes (by version), publishes the bus refused. Read from
live state when scraped: stations connected by version, open sockets, CSMS calls in flight
and queued, whether the broker connection is up.

Every label value comes from a fixed set (versions of the table, the envelope kinds, the
names below), never from station text, so the number of series stays bounded whatever
stations send. Each connection updates the :class:`VersionCounters` of its version, shared
by every connection of that version: counting allocates nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from websockets.frames import CloseCode

from csms.bus import Bus
from csms.envelope import Kind
from csms.probes import Cell, Check, MetricSet
from csms.versions import supported
from gateway.pipe import ConnectionState

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gateway.connection import Connection
    from gateway.guard import Guard

__all__ = ["CLOSE_REASONS", "REFUSALS", "GatewayMetrics", "VersionCounters", "close_reason"]

CLOSE_REASONS = (
    "station",
    "replaced",
    "rate_limit",
    "ping_timeout",
    "frame_too_big",
    "error",
    "shutdown",
    "lost",
)
"""Why a station connection ended: the station closed it; a newer connection replaced it;
it stayed over the message rate (1008); it stopped answering pings; it sent a frame over the
hard limit (1009); the gateway closed it for another protocol fault; the gateway stopped;
the TCP connection went away without a closing handshake."""

REFUSALS: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    429: "too_many_connections",
    503: "unavailable",
}
"""Handshake refusal reason by HTTP status (see :mod:`gateway.handshake`); others: ``other``."""

_OUTCOMES = (Kind.RESULT, Kind.ERROR, Kind.TIMEOUT, Kind.UNDELIVERED)


class VersionCounters:
    """The cells the connections of one OCPP version update."""

    __slots__ = ("frames_in", "frames_out", "opened", "outcomes", "publish_failures")

    def __init__(self, metrics: GatewayMetrics, version: str) -> None:
        self.opened: Cell = metrics.connections_opened.labels(version)
        self.frames_in: Cell = metrics.frames_in.labels(version)
        self.frames_out: Cell = metrics.frames_out.labels(version)
        self.outcomes: dict[Kind, Cell] = {
            kind: metrics.csms_calls.labels(version, kind.value) for kind in _OUTCOMES
        }
        """Outcomes of CSMS calls, by envelope kind (no entry for ``call``)."""
        self.publish_failures: dict[Kind, Cell] = {
            kind: metrics.publish_failures.labels(version, kind.value) for kind in Kind
        }


def close_reason(conn: Connection, *, stopping: bool) -> str:
    """One of :data:`CLOSE_REASONS` for a connection whose socket has closed; call it before
    :meth:`~gateway.connection.Connection.finish` (which ends the pipe's state)."""
    if conn.retire_reason is not None:
        return "replaced"
    if conn.state is ConnectionState.DISCONNECTING:
        return "rate_limit"
    protocol = conn.ws.protocol
    sent = protocol.close_sent
    if sent is not None and not protocol.close_rcvd_then_sent:  # this side closed first
        if sent.code == CloseCode.INTERNAL_ERROR and sent.reason == "keepalive ping timeout":
            return "ping_timeout"
        if sent.code == CloseCode.MESSAGE_TOO_BIG:
            return "frame_too_big"
        if stopping or sent.code == CloseCode.GOING_AWAY:
            return "shutdown"
        return "error"
    if protocol.close_rcvd is not None:
        return "station"
    return "shutdown" if stopping else "lost"


class GatewayMetrics:
    """The metrics of one :class:`~gateway.server.Gateway`, with a registry of their own."""

    def __init__(self, *, stations: Mapping[str, Connection], bus: Bus, guard: Guard) -> None:
        self._stations = stations
        self._bus = bus
        self._guard = guard
        metrics = self.set = MetricSet()
        self.connections_opened = metrics.counter(
            "csms_gateway_connections_opened",
            "Station connections upgraded to OCPP-J, by OCPP version",
            ["version"],
        )
        self.connections_closed = metrics.counter(
            "csms_gateway_connections_closed",
            "Station connections ended, by reason (" + ", ".join(CLOSE_REASONS) + ")",
            ["reason"],
        )
        self.handshakes_refused = metrics.counter(
            "csms_gateway_handshakes_refused",
            "WebSocket upgrades refused with an HTTP status, by reason",
            ["reason"],
        )
        self.frames_in = metrics.counter(
            "csms_gateway_frames_received",
            "WebSocket messages read from stations, by OCPP version",
            ["version"],
        )
        self.frames_out = metrics.counter(
            "csms_gateway_frames_sent",
            "WebSocket messages written to stations, by OCPP version",
            ["version"],
        )
        self.csms_calls = metrics.counter(
            "csms_gateway_csms_calls",
            "Outcomes of CSMS calls to stations, by OCPP version and outcome "
            "(result, error, timeout, undelivered)",
            ["version", "outcome"],
        )
        self.publish_failures = metrics.counter(
            "csms_gateway_publish_failures",
            "Envelopes the bus would not take (broker down, publish timed out, nobody "
            "subscribed), by OCPP version and envelope kind",
            ["version", "kind"],
        )
        metrics.gauges(
            "csms_gateway_connected_stations",
            "Stations connected to this gateway, by OCPP version",
            ["version"],
            self._connected_stations,
        )
        metrics.gauge(
            "csms_gateway_open_sockets",
            "TCP connections open, handshakes included",
            lambda: guard.open_sockets,
        )
        metrics.gauge(
            "csms_gateway_csms_calls_in_flight",
            "CSMS calls written to a station and awaiting its answer",
            lambda: sum(1 for conn in stations.values() if conn.pipe.in_flight is not None),
        )
        metrics.gauge(
            "csms_gateway_csms_calls_queued",
            "CSMS calls waiting behind the one in flight on their station's connection",
            lambda: sum(conn.pipe.queued for conn in stations.values()),
        )
        metrics.gauge(
            "csms_gateway_broker_connected",
            "1 while the MQTT connection is up, else 0",
            lambda: 1.0 if bus.connected else 0.0,
        )
        self._versions = {str(version): VersionCounters(self, version) for version in supported()}
        self._refusals = {
            status: self.handshakes_refused.labels(r) for status, r in REFUSALS.items()
        }
        self._refused_other = self.handshakes_refused.labels("other")

    @property
    def registry(self) -> CollectorRegistry:
        return self.set.registry

    def exposition(self) -> bytes:
        """The Prometheus text of this gateway (and its process)."""
        return self.set.exposition()

    def readiness(self) -> dict[str, Check]:
        """What ``/ready`` checks: the broker connection (stations' Calls need it)."""

        async def bus() -> bool:
            return self._bus.connected

        return {"bus": bus}

    def counters(self, version: str) -> VersionCounters:
        """The cells of ``version``'s connections (a version of the table)."""
        return self._versions[version]

    def refused(self, status: int) -> None:
        """A handshake was answered with HTTP ``status``."""
        self._refusals.get(status, self._refused_other).inc()

    def _connected_stations(self) -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {(version,): 0 for version in self._versions}
        for conn in self._stations.values():
            key = (conn.version,)
            counts[key] = counts.get(key, 0) + 1
        return counts
