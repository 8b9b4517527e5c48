"""Probes and metrics of the processes without a web framework (``csms gateway``,
``csms manager``): a tiny HTTP responder (:class:`ProbeServer`: ``/health``, ``/ready``,
``/metrics``) and metrics cheap enough to update for every message (:class:`MetricSet` and
its cells). Kernel code: the gateway and the manager both build on it."""

from csms.probes.cells import (
    LATENCY_BUCKETS,
    Cell,
    CounterFamily,
    HistogramCell,
    HistogramFamily,
    MetricSet,
)
from csms.probes.server import CHECK_TIMEOUT, MAX_REQUEST_HEAD, Check, ProbeServer

__all__ = [
    "CHECK_TIMEOUT",
    "LATENCY_BUCKETS",
    "MAX_REQUEST_HEAD",
    "Cell",
    "Check",
    "CounterFamily",
    "HistogramCell",
    "HistogramFamily",
    "MetricSet",
    "ProbeServer",
]
