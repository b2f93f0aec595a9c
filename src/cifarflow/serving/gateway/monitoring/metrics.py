"""The monitors' Prometheus series, on the gateway's registry.

Each gateway worker keeps windows of its own (the shared accept queue gives
every worker a random share of the same traffic), so with several workers
the gauges use multiprocess mode `livemax`: a scrape sees the most drifted
live worker's value, and a worker that died stops counting. A mean over
workers would hide one worker's drift behind the others' windows, and `all`
would make every alert and panel aggregate per pid.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class MonitorMetrics:
    """drift_psi{feature}, drift_window_images, ood_rate, ood_answers_total{verdict}."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.drift = Gauge(
            "cifarflow_gateway_drift_psi",
            "Population stability index of the sliding window against the served version's "
            "training reference, by feature (0 until the window is full).",
            ["feature"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.window_images = Gauge(
            "cifarflow_gateway_drift_window_images",
            "Images in the drift window (it compares only when full).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.ood_rate = Gauge(
            "cifarflow_gateway_ood_rate",
            "Share of the window's answers flagged out-of-distribution (about 5 % on "
            "training-like images by construction of the threshold).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.ood_answers = Counter(
            "cifarflow_gateway_ood_answers_total",
            "Answers by out-of-distribution verdict: in, out, or unknown (no reference).",
            ["verdict"],
            registry=registry,
        )
