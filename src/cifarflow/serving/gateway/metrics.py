"""The gateway's Prometheus metrics, on a registry of its own (several gateways per test process).

With several worker processes (`--workers N`), PROMETHEUS_MULTIPROC_DIR is
set before any worker imports prometheus_client: every worker then writes
its values to files there and `/metrics`, whichever worker answers, sums
them all (prometheus_client's multiprocess mode), so a scrape sees the whole
gateway, not one worker.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class GatewayMetrics:
    """requests_total, request_seconds, backend_seconds, batch_images, errors_total, in_flight."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cifarflow_gateway_requests_total",
            "Requests handled, by endpoint and status code.",
            ["protocol", "endpoint", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cifarflow_gateway_request_seconds",
            "Request latency, end to end.",
            ["protocol", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.backend_latency = Histogram(
            "cifarflow_gateway_backend_seconds",
            "Latency of model backend calls.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_images = Histogram(
            "cifarflow_gateway_batch_images",
            "Images per call to the model backend (concurrent requests share calls).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.errors = Counter(
            "cifarflow_gateway_errors_total",
            "Failed requests, by cause.",
            ["cause"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "cifarflow_gateway_in_flight",
            "Requests being handled now.",
            registry=self.registry,
            multiprocess_mode="livesum",  # the live workers' sum (ignored in one process)
        )

    def observe(
        self, protocol: str, endpoint: str, code: str, seconds: float, cause: str | None = None
    ) -> None:
        self.requests.labels(protocol, endpoint, code).inc()
        self.latency.labels(protocol, endpoint).observe(seconds)
        if cause:
            self.errors.labels(cause).inc()

    def render(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
