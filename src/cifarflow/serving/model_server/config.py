"""The model server's settings, apart from the server so the CLI reads their defaults cheaply."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cifarflow.serving.model_server.tf_serving_config import TfServingOptions


@dataclasses.dataclass(frozen=True)
class ModelServerConfig:
    """What `cifarflow serve model` runs with.

    Attributes:
        store: local folder, or s3://bucket/prefix (synced into cache_dir),
            holding `<model_name>/<version>/`; under a TF Serving config, the
            model's base_path itself (holding `<version>/`).
        model_name: the one model this server serves.
        grpc_port / rest_port: 0 picks a free port; rest_port < 0 disables REST.
        label: serve the version this label names instead of the newest.
        max_queued_requests: requests waiting for a batch beyond this are refused.
        max_message_bytes: largest request (and response) on gRPC and REST.
        grpc_workers: concurrent gRPC calls; more lets batches fill up.
        intra_op_threads / inter_op_threads: TensorFlow's thread pools, like TF
            Serving's --tensorflow_intra_op_parallelism / _inter_op_parallelism
            (0: TensorFlow's choice, one per core). One thread per op is the
            default because its threads wait for each other on ops this small
            (figures: docs/serving.md, "Why the model server's defaults");
            requests in parallel (batch threads, or concurrent calls without
            batching) use the other cores. Process-wide: the first server in a
            process sets them.
        metrics_path: one more path for the Prometheus metrics (TF Serving's
            monitoring config), besides /monitoring/prometheus/metrics and /metrics.
        tf_serving: TF Serving's --model_config_file and the flags that go with
            it; None: serve `store` the cifarflow way (newest or --label).
        grpc_channel_arguments: extra gRPC server options (TF Serving's
            --grpc_channel_arguments), e.g. grpc.max_connection_age_ms, which
            makes round-robin clients re-resolve and find new pods.
    """

    store: str
    model_name: str
    host: str = "0.0.0.0"
    grpc_port: int = 8500
    rest_port: int = 8501
    label: str | None = None
    poll_interval_s: float = 5.0
    batching: bool = True
    max_batch_size: int = 32
    batch_timeout_s: float = 0.0
    num_batch_threads: int = 2
    max_queued_requests: int = 1024
    max_message_bytes: int = 16 * 1024 * 1024
    grpc_workers: int = 64
    intra_op_threads: int = 1
    inter_op_threads: int = 0
    cache_dir: Path | None = None
    warm_up: bool = True
    metrics_path: str | None = None
    tf_serving: TfServingOptions | None = None
    grpc_channel_arguments: tuple[tuple[str, int | str], ...] = ()
