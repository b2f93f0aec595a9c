"""The model server's gRPC API on grpc.aio, on a thread and event loop of its own.

One event loop takes every call and answers metadata and status itself;
Predict runs on a pool of `grpc_workers` threads, as many at once as the
synchronous server ran, so batches fill up the same way. `start()` and
`stop()` are plain blocking calls, for the server's owner and for tests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from cifarflow.serving.model_server.config import ModelServerConfig
from cifarflow.serving.model_server.model import ModelManager

T = TypeVar("T")


class GrpcServer:
    """PredictionService and ModelService for `manager`, on grpc.aio.

    Args:
        manager: the versions being served.
        config: host, grpc_port (0 picks a free one), max_message_bytes,
            grpc_workers (Predicts running at once) and grpc_channel_arguments.
    """

    def __init__(self, manager: ModelManager, config: ModelServerConfig) -> None:
        self.manager = manager
        self.config = config
        self.port = 0
        self._executor = ThreadPoolExecutor(config.grpc_workers, thread_name_prefix="grpc")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None

    def start(self, timeout_s: float = 30.0) -> int:
        """Binds and starts serving; returns the bound port.

        Raises:
            OSError: the address cannot be bound (in use, or no such host).
        """
        import uvloop

        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="grpc-loop", daemon=True
        )
        self._thread.start()
        try:
            self.port = self._call(self._start(), timeout_s)
        except BaseException:
            self._close()
            raise
        return self.port

    async def _start(self) -> int:
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        from cifarflow.serving.model_server.grpc_servicer import (
            ModelStatusServicer,
            PredictionServicer,
        )

        limit = self.config.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Without it a second server on a port in use would bind too, and share it.
                ("grpc.so_reuseport", 0),
                *self.config.grpc_channel_arguments,
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.manager, self._executor), server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelStatusServicer(self.manager), server
        )
        address = f"{self.config.host}:{self.config.grpc_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio's way to say the bind failed
            raise OSError(f"cannot bind gRPC to {address}") from exc
        if port == 0:  # older grpcio said it so
            raise OSError(f"cannot bind gRPC to {address}")
        await server.start()
        self._server = server
        return port

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuses new calls, lets calls in flight finish for up to `grace_s`, then cancels them."""
        if self._loop is None:
            return
        if self._server is not None:
            self._call(self._server.stop(grace_s), grace_s + 10)
            self._server = None
        # A model call past the grace goes on in the background, as on grpcio's sync server.
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._close()

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def _close(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
