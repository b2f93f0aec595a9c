"""`cifarflow serve gateway`: REST + gRPC + web page in front of a model server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import grpc

from cifarflow.ood_scores import ENERGY
from cifarflow.serving.asgi import Answered, HttpConfig, RequestContext, ServerState, UvicornServer
from cifarflow.serving.gateway.auth import BearerAuth
from cifarflow.serving.gateway.backend import Backend
from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.gc_freeze import freeze_startup_objects
from cifarflow.serving.gateway.metrics import GatewayMetrics
from cifarflow.serving.gateway.service import Classifier
from cifarflow.serving.ports import add_grpc_port

access_log = logging.getLogger("cifarflow.gateway.access")
log = logging.getLogger(__name__)


class Gateway:
    """A running gateway: `start()`, `port`/`grpc_port`, `stop()` (graceful).

    As one of several workers (`worker=True`, multiworker.py), uvicorn's
    supervisor serves its `app` on the shared HTTP socket; it binds its gRPC
    port with SO_REUSEPORT and names itself in an `X-Gateway-Worker: <pid>`
    header on every answer.
    """

    def __init__(self, config: GatewayConfig, worker: bool = False) -> None:
        self.config = config
        self.worker_id = str(os.getpid()) if worker else None
        self.metrics = GatewayMetrics()
        self.backend = Backend(
            config.backend,
            config.model_name,
            config.backend_timeout_s,
            max_message_bytes=max(64 * 1024 * 1024, 2 * config.max_image_bytes),
            on_call=self.metrics.batch_images.observe,
            want_logits=config.monitors.enabled and config.monitors.ood_score == ENERGY,
        )
        self.classifier = Classifier(config, self.backend, self.metrics)
        self.auth = BearerAuth(config.token)
        self._draining = threading.Event()
        from cifarflow.serving.gateway.rest import GatewayApi

        self.api = GatewayApi(self.classifier, self.auth, self._draining.is_set)
        self.http_state = ServerState()
        self.api.app.add_middleware(
            RequestContext,
            state=self.http_state,
            max_body_bytes=config.max_body_bytes,
            on_done=self._log_request,
        )
        # One of several workers: uvicorn's supervisor runs `app`, this runs only gRPC.
        self.app = self.api.app
        self.http = (
            None
            if worker
            else UvicornServer(
                self.api.app,
                HttpConfig(
                    config.host,
                    config.port,
                    max_body_bytes=config.max_body_bytes,
                    idle_timeout_s=config.idle_timeout_s,
                    header_timeout_s=config.header_timeout_s,
                ),
                self.http_state,
            )
        )
        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_port: int | None = None

    @property
    def port(self) -> int | None:
        return self.http.port if self.http else self.config.port

    def _log_request(self, answer: Answered) -> None:
        endpoint = self.api.endpoint_name(answer.path)
        # The cause comes from the error itself, as on gRPC, so both count a failure alike.
        cause = answer.cause or ("other" if answer.status >= 400 else None)
        self.metrics.observe("http", endpoint, str(answer.status), answer.seconds, cause)
        if self.worker_id:  # this hook sees every answer, errors included, before it is sent
            answer.headers.append((b"x-gateway-worker", self.worker_id.encode()))
        if not access_log.isEnabledFor(logging.INFO):
            return
        # One JSON line per request: greppable by request id, no bodies, no tokens.
        access_log.info(
            json.dumps(
                {
                    "event": "request",
                    "protocol": "http",
                    "request_id": answer.request_id,
                    "method": answer.method,
                    "path": endpoint,
                    "status": answer.status,
                    "ms": round(answer.seconds * 1000, 2),
                    "client": answer.client,
                }
            )
        )

    def start(self) -> Gateway:
        """Serves HTTP on a thread of its own, and gRPC on the same event loop."""
        assert self.http is not None, "a worker's gateway starts with start_async()"
        self.http.start()
        try:
            self.http.call(self.start_async(), timeout_s=30)
        except BaseException:
            self.http.stop(0)  # a gRPC port it cannot have leaves nothing serving
            raise
        return self

    async def start_async(self) -> Gateway:
        """Starts the gRPC service on the running event loop (a worker's: uvicorn's own)."""
        if self.config.grpc_port >= 0:
            from cifarflow.serving.gateway.grpc_service import ClassifierServicer
            from cifarflow.serving.gateway.proto import classifier_pb2_grpc

            limit = self.config.max_body_bytes
            self.grpc_server = grpc.aio.server(
                options=[
                    ("grpc.max_receive_message_length", limit),
                    # Alone, a port already in use must fail the start; workers share theirs.
                    ("grpc.so_reuseport", 1 if self.worker_id else 0),
                ],
            )
            classifier_pb2_grpc.add_ClassifierServicer_to_server(
                ClassifierServicer(self.classifier, self.auth, self._draining.is_set),
                self.grpc_server,
            )
            self.grpc_port = add_grpc_port(
                self.grpc_server, f"{self.config.host}:{self.config.grpc_port}"
            )
            await self.grpc_server.start()
        log.info(
            json.dumps(
                {
                    "event": "started",
                    "pid": os.getpid(),
                    "http_port": self.port,
                    "grpc_port": self.grpc_port,
                    "backend": self.config.backend,
                    "auth": self.auth.enabled,
                    "url_fetching": self.classifier.url_policy.enabled,
                }
            )
        )
        return self

    def stop(self, grace_s: float | None = None) -> bool:
        """Refuses new work (readyz turns 503 first), finishes in-flight requests, closes.

        Returns:
            True when every in-flight request finished within the grace period.
        """
        assert self.http is not None, "a worker's gateway stops with stop_async()"
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        self.http_state.draining = True
        finished = self.http.call(
            self.stop_async(grace, http_idle=self.http_state.wait_idle), grace + 10
        )
        self.http.stop(0)  # nothing is in flight any more (or the grace is spent)
        log.info(json.dumps({"event": "stopped", "drained": finished}))
        return finished

    async def stop_async(
        self, grace_s: float | None = None, http_idle: Callable[[float], bool] | None = None
    ) -> bool:
        """Stops gRPC and waits for HTTP, on the gateway's loop.

        gRPC stops taking calls and finishes its own (up to the grace), HTTP
        requests in flight finish (`http_idle`, waited for off the loop), then
        the backend channel and the URL fetcher's client close.

        Returns:
            True when the HTTP requests in flight finished within the grace.
        """
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        self._draining.set()
        stopping = (
            asyncio.ensure_future(self.grpc_server.stop(grace))
            if self.grpc_server is not None
            else None
        )
        finished = True
        if http_idle is not None:
            finished = await asyncio.to_thread(http_idle, grace)
        if stopping is not None:
            await stopping
        await self.backend.close()
        await self.classifier.close()
        return finished


def wait_for_stop_signal(on_ready: Callable[[], object] = lambda: None) -> None:
    """Installs SIGTERM/SIGINT handlers, calls `on_ready()`, and returns once one of them came.

    The main thread sleeps in short steps rather than in Event.wait(): the
    kernel may deliver the signal to any thread (gRPC's own threads too), and
    Python runs the handler only when the main thread next runs bytecode, so
    a main thread blocked on a lock would never see it. The handler sets a
    plain flag: Event.set() in a handler can deadlock on the lock the
    interrupted Event.wait() holds.
    """
    received: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: received.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _: received.append(signum))
    on_ready()
    while not received:
        time.sleep(0.2)


def run_gateway(config: GatewayConfig) -> int:
    """Serves until SIGTERM/SIGINT, then drains (Kubernetes sends SIGTERM before killing a pod)."""
    gateway = Gateway(config).start()
    freeze_startup_objects()
    wait_for_stop_signal(
        lambda: print(
            f"gateway: HTTP on {config.host}:{gateway.port}, gRPC on {config.host}:"
            f"{gateway.grpc_port}, backend {config.backend}",
            flush=True,
        )
    )
    gateway.stop()
    return 0
