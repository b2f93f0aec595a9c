"""`cifarflow serve model`: wiring the manager to the gRPC and REST servers."""

from __future__ import annotations

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
from cifarflow.serving.model_server.config import ModelServerConfig
from cifarflow.serving.model_server.model import ManagerConfig, ModelManager
from cifarflow.serving.model_server.version_labels import VersionLabels
from cifarflow.serving.ports import PortUnavailable, add_grpc_port
from cifarflow.serving.store.model_store import check_model_name

log = logging.getLogger(__name__)


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
        address = f"{self.config.host}:{self.config.grpc_port}"
        try:
            self.grpc_port = add_grpc_port(self.grpc_server, address)
        except PortUnavailable:
            self.manager.stop()
            raise
        self.grpc_server.start()
        if self.config.rest_port >= 0:
            api = RestApi(self.manager, self.config.metrics_path)
            state = ServerState()
            api.app.add_middleware(
                RequestContext, state=state, max_body_bytes=limit, on_done=lambda answer: None
            )
            rest_address = HttpConfig(self.config.host, self.config.rest_port)
            try:
                self.rest = UvicornServer(api.app, rest_address, state).start()
            except PortUnavailable:
                self.grpc_server.stop(0).wait()
                self.manager.stop()
                raise
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
