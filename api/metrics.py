"""Prometheus metrics of one API process: requests by route and status, CSMS calls by
version, action and outcome, and their latencies.

Each app has a registry of its own (several apps in one process, as in tests, never share
counters). :mod:`api.monitoring` serves it.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ApiMetrics", "MetricsMiddleware"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ApiMetrics:
    """The counters and histograms of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "csms_api_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "csms_api_request_seconds",
            "Time to answer an HTTP request, by route template",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.calls = Counter(
            "csms_api_calls",
            "CSMS calls sent through the API, by OCPP version, action and outcome",
            ["version", "action", "outcome"],
            registry=self.registry,
        )
        self.call_seconds = Histogram(
            "csms_api_call_seconds",
            "Time from sending a CSMS call to its outcome, by outcome",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._included: list[CollectorRegistry] = []

    def include(self, registry: CollectorRegistry) -> None:
        """Serve ``registry`` too (the gateway's and manager's under ``csms run``)."""
        self._included.append(registry)

    def exposition(self) -> bytes:
        return b"".join(generate_latest(r) for r in (self.registry, *self._included))


class MetricsMiddleware:
    """ASGI middleware counting and timing every request under its route template (bounded
    label values; ``unmatched`` for paths no route took)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or "unmatched"
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(template).observe(time.perf_counter() - started)
