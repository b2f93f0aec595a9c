"""`cifarflow serve model`: wiring the manager to the gRPC and REST servers."""

from __future__ import annotations

import dataclasses
import logging
import signal
import tempfile
import threading
from concurrent import futures
from pathlib import Path

import grpc

from cifarflow.s3 import S3Settings
from cifarflow.serving.asgi import HttpConfig, RequestContext, ServerState, UvicornServer
from cifarflow.serving.model_server.batching import BatchingConfig
from cifarflow.serving.model_server.model import ManagerConfig, ModelManager
from cifarflow.serving.model_server.tf_serving_config import TfServingOptions
from cifarflow.serving.model_server.version_labels import VersionLabels
from cifarflow.serving.store.model_store import check_model_name

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelServerConfig:
    """Attributes:
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


class ModelServer:
    """A running model server: `start()`, the bound ports, `stop()`."""

    def __init__(self, config: ModelServerConfig, s3_settings: S3Settings | None = None) -> None:
        check_model_name(config.model_name)
        self.config = config
        self._tmp: tempfile.TemporaryDirectory | None = None
        tf_serving = config.tf_serving
        if tf_serving is not None:
            base_path, refresh = Path(config.store), None
        else:
            root, refresh = self._local_root(s3_settings)
            base_path = root / config.model_name
        batching = (
            BatchingConfig(
                config.max_batch_size,
                config.batch_timeout_s,
                config.num_batch_threads,
                config.max_queued_requests,
            )
            if config.batching
            else None
        )
        self.batch_sizes: list[int] = []  # recent batch sizes, for tests and the benchmark
        self.labels = (
            VersionLabels(config.model_name, tf_serving.allow_version_labels_for_unavailable_models)
            if tf_serving
            else None
        )
        self.manager = ModelManager(
            base_path,
            config.model_name,
            ManagerConfig(
                label=config.label,
                poll_interval_s=config.poll_interval_s,
                batching=batching,
                warm_up=config.warm_up,
                policy=tf_serving.model.policy if tf_serving else None,
            ),
            refresh=refresh,
            on_batch=self._record_batch,
            labels=self.labels,
        )
        self.reloader = None
        if tf_serving is not None and self.labels is not None:
            from cifarflow.serving.model_server.config_reloader import ConfigReloader

            self.reloader = ConfigReloader(tf_serving, self.manager, self.labels)
        self.grpc_server: grpc.Server | None = None
        self.rest: UvicornServer | None = None
        self.grpc_port = 0

    def _record_batch(self, rows: int) -> None:
        self.batch_sizes.append(rows)
        if len(self.batch_sizes) > 10000:
            del self.batch_sizes[:5000]

    def _local_root(self, s3_settings: S3Settings | None):
        if not self.config.store.startswith("s3://"):
            return Path(self.config.store), None
        from cifarflow.serving.store import open_store
        from cifarflow.serving.sync import SyncConfig, sync_once

        cache = self.config.cache_dir
        if cache is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cifarflow-model-cache-")
            cache = Path(self._tmp.name)
        source = open_store(self.config.store, s3_settings)
        sync_config = SyncConfig(models=(self.config.model_name,), keep=2)
        return cache, lambda: sync_once(source, cache, sync_config)

    def start(self) -> ModelServer:
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        from cifarflow.serving.model_server.grpc_servicer import (
            ModelStatusServicer,
            PredictionServicer,
        )
        from cifarflow.serving.model_server.rest import RestApi

        if self.reloader:
            self.reloader.apply_first()  # TF Serving assigns labels before it loads anything
        set_tensorflow_threads(self.config.intra_op_threads, self.config.inter_op_threads)
        self.manager.start()
        limit = self.config.max_message_bytes
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.config.grpc_workers, thread_name_prefix="grpc"
            ),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                *self.config.grpc_channel_arguments,
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.manager), self.grpc_server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelStatusServicer(self.manager), self.grpc_server
        )
        self.grpc_port = self.grpc_server.add_insecure_port(
            f"{self.config.host}:{self.config.grpc_port}"
        )
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {self.config.host}:{self.config.grpc_port}")
        self.grpc_server.start()
        if self.config.rest_port >= 0:
            api = RestApi(self.manager, self.config.metrics_path)
            state = ServerState()
            api.app.add_middleware(
                RequestContext, state=state, max_body_bytes=limit, on_done=lambda answer: None
            )
            self.rest = UvicornServer(
                api.app, HttpConfig(self.config.host, self.config.rest_port), state
            ).start()
        if self.reloader:
            self.reloader.start()
        log.info(
            "serving %s from %s: gRPC %d, REST %s",
            self.config.model_name,
            self.config.store,
            self.grpc_port,
            self.rest.port if self.rest else "off",
        )
        return self

    @property
    def rest_port(self) -> int | None:
        return self.rest.port if self.rest else None

    def stop(self, grace_s: float = 5.0) -> None:
        if self.reloader:
            self.reloader.stop()
        if self.rest:
            self.rest.stop(grace_s)
        if self.grpc_server:
            self.grpc_server.stop(grace_s).wait()
        self.manager.stop()
        if self._tmp:
            self._tmp.cleanup()


def set_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """Sizes TensorFlow's thread pools; they are fixed once TensorFlow has run anything."""
    import tensorflow as tf

    threading_config = tf.config.threading
    if (
        threading_config.get_intra_op_parallelism_threads(),
        threading_config.get_inter_op_parallelism_threads(),
    ) == (intra_op, inter_op):
        return
    try:
        threading_config.set_intra_op_parallelism_threads(intra_op)
        threading_config.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # TensorFlow already ran in this process (tests, a second server)
        log.warning(
            "TensorFlow is already initialised: keeping its thread pools (intra-op %d, inter-op %d)",
            threading_config.get_intra_op_parallelism_threads(),
            threading_config.get_inter_op_parallelism_threads(),
        )


def run_model_server(config: ModelServerConfig, s3_settings: S3Settings | None = None) -> int:
    """Serves until SIGTERM/SIGINT, then drains in-flight requests."""
    server = ModelServer(config, s3_settings).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(
        f"model server: gRPC on {config.host}:{server.grpc_port}, REST on {config.host}:{server.rest_port}",
        flush=True,
    )
    stop.wait()
    server.stop()
    return 0
