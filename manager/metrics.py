"""Prometheus metrics of one manager instance (served on ``/metrics`` by the probe server).

Counted as it happens, in plain cells (:mod:`csms.probes`):

- station Calls by version, action and outcome: ``answered`` (a CallResult), the CallError
  code sent (``NotImplemented``, ``InternalError``, ``SecurityError``, ...), ``duplicate``
  (answered from the idempotency store), ``dropped`` (a copy of a Call this instance is
  handling already); and the time the handler took, by version and action;
- answers to CSMS calls routed to result handlers, by version, action and kind;
- store errors by operation, answers the bus would not take, bus messages dropped by
  reason, connection events applied, gateways gone.

Read from live state when scraped: stations with work queued here (lanes), messages read and
not finished, connection events waiting for the store, whether the broker connection is up.

Label values come from fixed sets only: an action is one of its version's OCA schema table
(anything else counts as ``unknown``), an error code one of its version's codes. The cells of
one version and action are looked up once and kept (:class:`CallCells`), so a message costs
two dictionary lookups and a few integer increments, with no lock and no allocation.

:class:`ManagerStats` reads the totals from these metrics for code and tests that want plain
numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from csms.envelope import Kind
from csms.probes import Cell, Check, CounterFamily, HistogramCell, MetricSet
from csms.versions import spec
from services.message_log import DROP_REASONS as LOG_DROP_REASONS
from services.message_log import MessageLogCells

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from manager.worker import Manager

__all__ = [
    "DROP_REASONS",
    "READY_PROBE_STATION",
    "STORE_OPERATIONS",
    "UNKNOWN_ACTION",
    "CallCells",
    "ManagerMetrics",
    "ManagerStats",
]

UNKNOWN_ACTION = "unknown"
"""The action label of a Call whose action is not in its version's table."""
STORE_OPERATIONS = ("idempotency", "last_seen", "connection_event", "presence", "housekeeping")
"""What the manager was doing when a store failed (handler store errors are answered
``InternalError`` and counted among the messages)."""
READY_PROBE_STATION = "\x00ready"
"""The station id the store check reads: no station can have it (ids are printable)."""
DROP_REASONS = ("unknown_topic", "undecodable", "unknown_version", "failed")
"""Why a bus message was dropped without an answer."""


class CallCells:
    """The cells of one version and action: outcomes of its Calls and its handler's time."""

    __slots__ = (
        "_codes",
        "_errors",
        "_family",
        "_labels",
        "answered",
        "dropped",
        "duplicate",
        "latency",
    )

    def __init__(
        self,
        messages: CounterFamily,
        latency: HistogramCell,
        version: str,
        action: str,
        codes: frozenset[str],
    ) -> None:
        self._family = messages
        self._labels = (version, action)
        self._codes = codes
        self._errors: dict[str | None, Cell] = {}
        self.answered = messages.labels(version, action, "answered")
        self.duplicate = messages.labels(version, action, "duplicate")
        self.dropped = messages.labels(version, action, "dropped")
        self.latency = latency

    def error(self, code: str | None) -> Cell:
        """The cell of CallError ``code`` (``other`` for a code not of this version)."""
        cell = self._errors.get(code)
        if cell is None:
            if code not in self._codes:
                code = None  # one cell for every code outside the version's table
                cell = self._errors.get(None)
            if cell is None:
                cell = self._errors[code] = self._family.labels(*self._labels, code or "other")
        return cell


class ManagerMetrics:
    """The metrics of one :class:`~manager.worker.Manager`, with a registry of their own.

    ``actions`` maps each version the manager routes to its action table.
    """

    def __init__(self, manager: Manager, actions: Mapping[str, frozenset[str]]) -> None:
        self._manager = manager
        self._actions = dict(actions)
        self._codes = {
            version: frozenset(spec(version).error_codes.values()) for version in self._actions
        }
        metrics = self.set = MetricSet()
        self.messages = metrics.counter(
            "csms_manager_messages",
            "Station Calls, by OCPP version, action and outcome (answered, the CallError "
            "code sent, duplicate: answered from the idempotency store, dropped: a copy of a "
            "Call in progress here)",
            ["version", "action", "outcome"],
        )
        self.handler_seconds = metrics.histogram(
            "csms_manager_handler_seconds",
            "Time from a station Call passing its checks to its answer (schema checks, "
            "handler, stores), by OCPP version and action",
            ["version", "action"],
        )
        self.results = metrics.counter(
            "csms_manager_results",
            "Answers to CSMS calls routed to result handlers, by OCPP version, action and "
            "outcome (result, error, timeout, undelivered)",
            ["version", "action", "outcome"],
        )
        self.store_errors = metrics.counter(
            "csms_manager_store_errors",
            "Store operations that failed outside handlers, by operation ("
            + ", ".join(STORE_OPERATIONS)
            + ")",
            ["operation"],
        )
        self.publish_failures = metrics.counter(
            "csms_manager_publish_failures", "Answers to stations the bus would not take"
        ).labels()
        self.dropped = metrics.counter(
            "csms_manager_dropped",
            "Bus messages dropped without an answer, by reason (" + ", ".join(DROP_REASONS) + ")",
            ["reason"],
        )
        self.connection_events = metrics.counter(
            "csms_manager_connection_events",
            "Station connection events stored in the registry, by event (connected, disconnected)",
            ["event"],
        )
        self.event_retries = metrics.counter(
            "csms_manager_connection_event_retries",
            "Connection events stored on a retry, after the store had refused them",
        ).labels()
        self.gateways_gone = metrics.counter(
            "csms_manager_gateways_gone",
            "Gateways whose stations were marked offline, by how (gone: its will or its "
            "goodbye, expired: its lease ran out)",
            ["how"],
        )
        metrics.gauge(
            "csms_manager_lanes",
            "Stations with messages queued or in progress on this instance",
            lambda: manager.active_stations,
        )
        metrics.gauge(
            "csms_manager_pending_messages",
            "Messages read from the bus and not finished yet (queue depth)",
            lambda: manager.pending,
        )
        metrics.gauge(
            "csms_manager_connection_events_waiting",
            "Connection events the store refused, waiting to be stored again",
            lambda: manager.events_waiting,
        )
        metrics.gauge(
            "csms_manager_broker_connected",
            "1 while the MQTT connection is up, else 0",
            lambda: 1.0 if manager.bus.connected else 0.0,
        )
        self._calls: dict[str, dict[str, CallCells]] = {version: {} for version in self._actions}
        self._results: dict[str, dict[str, dict[Kind, Cell]]] = {
            version: {} for version in self._actions
        }
        self.drop = {reason: self.dropped.labels(reason) for reason in DROP_REASONS}
        log_dropped = metrics.counter(
            "csms_manager_message_log_dropped",
            "Message log entries lost before they were stored, by reason (buffer_full: more "
            "than the buffer holds between flushes, flush_failed: the store refused a flush)",
            ["reason"],
        )
        self.message_log = MessageLogCells(
            written=metrics.counter(
                "csms_manager_message_log_written", "Message log entries stored"
            ).labels(),
            dropped={reason: log_dropped.labels(reason) for reason in LOG_DROP_REASONS},
            flush_seconds=metrics.histogram(
                "csms_manager_message_log_flush_seconds",
                "Time of one batched write of the message log (one round trip)",
            ).labels(),
        )
        """The message log counts into these (its last manager's, with several in a process)."""
        manager.services.message_log.count_into(self.message_log)
        self.store_error = {op: self.store_errors.labels(op) for op in STORE_OPERATIONS}

    @property
    def registry(self) -> CollectorRegistry:
        return self.set.registry

    def exposition(self) -> bytes:
        """The Prometheus text of this manager (and its process)."""
        return self.set.exposition()

    def readiness(self) -> dict[str, Check]:
        """What ``/ready`` checks: the broker connection is up and read, and the stores
        answer (the probe server bounds each check's time)."""
        manager = self._manager

        async def bus() -> bool:
            return manager.bus.connected and manager.reading

        async def store() -> bool:
            await manager.services.stations.get(READY_PROBE_STATION)
            return True

        return {"bus": bus, "store": store}

    def _action(self, version: str, action: str | None) -> str:
        return action if action is not None and action in self._actions[version] else ""

    def calls(self, version: str, action: str | None) -> CallCells:
        """The cells of Calls of ``action`` in ``version`` (a version the manager routes)."""
        table = self._calls[version]
        cells = table.get(action or "")
        if cells is None:
            known = self._action(version, action)
            cells = table.get(known)
            if cells is None:
                label = known or UNKNOWN_ACTION
                latency = self.handler_seconds.labels(version, label)
                cells = CallCells(self.messages, latency, version, label, self._codes[version])
                table[known] = cells  # never keyed by an action outside the table
        return cells

    def result(self, version: str, action: str | None, kind: Kind) -> Cell:
        """The cell of an answer of ``kind`` to a CSMS call of ``action`` in ``version``."""
        table = self._results[version]
        cells = table.get(action or "")
        if cells is None:
            action = self._action(version, action)
            cells = table.setdefault(action, {})
        cell = cells.get(kind)
        if cell is None:
            label = self._action(version, action) or UNKNOWN_ACTION
            cell = cells[kind] = self.results.labels(version, label, kind.value)
        return cell

    def gateway_gone(self, how: str) -> None:
        self.gateways_gone.labels(how).inc()


class ManagerStats:
    """Totals of what one manager instance did, read from its metrics."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: ManagerMetrics) -> None:
        self._metrics = metrics

    @property
    def calls(self) -> int:
        """Station Calls received (answered, refused, replayed or dropped as duplicates)."""
        return int(self._metrics.messages.total())

    @property
    def results(self) -> int:
        """Answers to CSMS calls (results, errors, timeouts, undelivered) routed."""
        return int(self._metrics.results.total())

    @property
    def events(self) -> int:
        """Connection events applied to the station registry."""
        return int(self._metrics.connection_events.total())

    @property
    def event_retries(self) -> int:
        """Connection events stored on a retry after a store outage."""
        return int(self._metrics.event_retries.value)

    @property
    def gateways_expired(self) -> int:
        """Gateways whose lease ran out or that were reported gone (stations offline)."""
        return int(self._metrics.gateways_gone.total())

    @property
    def replayed(self) -> int:
        """Duplicate Calls answered from the idempotency store."""
        return int(self._metrics.messages.total(outcome="duplicate"))

    @property
    def duplicates_dropped(self) -> int:
        """Duplicate Calls dropped because this instance was handling the first copy."""
        return int(self._metrics.messages.total(outcome="dropped"))

    @property
    def internal_errors(self) -> int:
        """InternalError answers sent."""
        return int(self._metrics.messages.total(outcome="InternalError"))

    @property
    def publish_failures(self) -> int:
        """Answers the bus would not take."""
        return int(self._metrics.publish_failures.value)

    @property
    def dropped(self) -> int:
        """Bus messages that could not be decoded or routed."""
        return int(self._metrics.dropped.total())
