"""The model server's Prometheus metrics: how version loads went and what is served.

Served on the REST port at `/monitoring/prometheus/metrics` (the path
TensorFlow Serving's monitoring config uses) and at `/metrics`. Values are
read from the ModelManager at scrape time, so there is no second copy of the
state to keep in step. Besides cifarflow's own names, the load attempts are
also exported under TensorFlow Serving's `:tensorflow:cc:saved_model:load_attempt_count`
(labels `model_path`, `status` = success|fail), so alerts written for
TensorFlow Serving work against this server too.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cifarflow.serving.model_server.model import STATE_END, ModelManager

TF_LOAD_ATTEMPTS = ":tensorflow:cc:saved_model:load_attempt_count"


class _ManagerCollector:
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        model = self.manager.model_name
        statuses, attempts, default = self.manager.snapshot()
        loads = CounterMetricFamily(
            "cifarflow_model_server_load_attempts",
            "Attempts to load a version, by outcome.",
            labels=["model", "version", "status"],
        )
        # TensorFlow Serving's exposition has no _total suffix: an untyped family keeps the name as is.
        tf_loads = Metric(
            TF_LOAD_ATTEMPTS,
            "The number of times a SavedModel load was attempted (TF Serving's name).",
            "unknown",
        )
        for (version, ok), count in sorted(attempts.items()):
            outcome = "success" if ok else "fail"
            loads.add_metric([model, str(version), outcome], count)
            tf_loads.add_sample(
                TF_LOAD_ATTEMPTS,
                {"model_path": str(self.manager.version_path(version)), "status": outcome},
                count,
            )
        failed = GaugeMetricFamily(
            "cifarflow_model_server_version_load_failed",
            "1 while a version's last load attempt failed (the reason is in GetModelStatus).",
            labels=["model", "version"],
        )
        state = GaugeMetricFamily(
            "cifarflow_model_server_version_state",
            "TensorFlow Serving's ModelVersionStatus.State: 20 LOADING, 30 AVAILABLE, 50 END.",
            labels=["model", "version"],
        )
        for status in statuses:
            failed.add_metric(
                [model, str(status.version)],
                1.0 if status.state == STATE_END and status.error else 0.0,
            )
            state.add_metric([model, str(status.version)], status.state)
        serving = GaugeMetricFamily(
            "cifarflow_model_server_serving_version",
            "The version answering requests that name none (0 while none is loaded).",
            labels=["model"],
        )
        serving.add_metric([model], default or 0)
        yield from (loads, tf_loads, failed, state, serving)


class ModelServerMetrics:
    """A registry of its own (several servers can run in one test process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, manager: ModelManager) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_ManagerCollector(manager))

    def render(self) -> bytes:
        return generate_latest(self.registry)
