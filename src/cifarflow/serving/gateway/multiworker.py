"""`cifarflow serve gateway --workers N`: N gateway processes under uvicorn's own supervisor.

One Python process runs its request handling under one GIL, so a gateway
uses about one core; N worker processes use N. uvicorn's `Multiprocess`
supervisor starts them (fresh interpreters, not forks: grpcio does not
survive fork() once started), restarts one that dies, and on SIGTERM stops
each, which drains as a single gateway does, then exits. What is ours:

- the ports: HTTP is one socket bound here and accepted on by every worker
  (one accept queue: a worker that dies or drains leaves waiting connections
  to the others). grpcio cannot serve on a socket it did not bind, so each
  worker binds the gRPC port itself with SO_REUSEPORT; a bound, not
  listening, SO_REUSEPORT socket held here reserves it across restarts and
  turns port 0 into a number first.
- `WorkerApp`, the ASGI app a worker runs: its lifespan builds the gateway
  (backend channel, gRPC service) in the worker and stops it on shutdown.
  The configuration, token included, reaches the worker pickled with it on
  uvicorn's spawn pipe, never on a command line.
- metrics: PROMETHEUS_MULTIPROC_DIR is set before the workers start, so every
  worker's `/metrics` sums all of them (metrics.py); the files of a worker
  that died are retired so its in-flight gauge does not linger.
- garbage collection: each worker freezes its start-up objects (gc_freeze.py).
- start-up: the supervisor waits until every worker serves, then prints one
  line naming their pids; a worker that cannot start fails the start with
  one line and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import socket
import tempfile
from typing import Any

from uvicorn.supervisors.multiprocess import Multiprocess

from cifarflow.errors import CifarflowError
from cifarflow.serving.asgi import HttpConfig, uvicorn_config
from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.gc_freeze import freeze_startup_objects
from cifarflow.serving.gateway.metrics import MULTIPROC_ENV
from cifarflow.serving.ports import PortUnavailable, bind, reserve_grpc_port

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0


class WorkersFailed(CifarflowError):
    """A worker did not start (its ports were bound: that failure is PortUnavailable)."""

    exit_code = 5


class WorkerApp:
    """The ASGI app of one worker: a gateway built on lifespan startup, stopped on shutdown.

    Args:
        config: the gateway's configuration, with the ports the supervisor holds.
        log_level: the worker's logging level (a spawned process starts without ours).
    """

    def __init__(self, config: GatewayConfig, log_level: str = "INFO") -> None:
        self.config = config
        self.log_level = log_level
        self.gateway: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.gateway.app(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        await receive()  # lifespan.startup
        try:
            gateway = await asyncio.to_thread(self._build)
            self.gateway = await gateway.start_async()  # gRPC on this worker's loop
            freeze_startup_objects()
        except Exception as exc:
            log.error("gateway worker %d cannot start: %s", os.getpid(), exc)
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown: uvicorn has drained HTTP by now
        await self.gateway.stop_async()
        await send({"type": "lifespan.shutdown.complete"})

    def _build(self) -> Any:
        logging.basicConfig(level=self.log_level.upper(), format="%(message)s")
        _die_with_parent()
        from cifarflow.serving.protos import use_protos_only

        use_protos_only()  # as the parent: TF Serving's messages without TensorFlow
        from cifarflow.serving.gateway.server import Gateway

        return Gateway(self.config, worker=True)


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when its supervisor dies, so no orphan keeps the ports."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class GatewaySupervisor(Multiprocess):
    """uvicorn's Multiprocess, which also reports the start-up and retires dead workers' metrics."""

    def __init__(self, config: Any, sockets: list[socket.socket], metrics_dir: str) -> None:
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir
        self.failure: str | None = None
        self.on_started = lambda pids: None

    def init_processes(self) -> None:
        super().init_processes()
        for index, process in enumerate(self.processes):
            if not process.wait_until_ready(START_TIMEOUT_S, self.should_exit):
                process.process.join(1)
                code = process.exitcode
                self.failure = (
                    f"gateway worker {index + 1} of {self.processes_num} did not start: "
                    + (f"exited with code {code}" if code is not None else "no answer in time")
                )
                self.should_exit.set()
                return
        self.on_started([process.pid for process in self.processes])

    def keep_subprocess_alive(self) -> None:
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        from prometheus_client import multiprocess

        for pid in before - {process.pid for process in self.processes}:
            multiprocess.mark_process_dead(pid, self.metrics_dir)  # its live gauges go

    def pids(self) -> list[int | None]:
        return [process.pid for process in self.processes]


def run_workers(config: GatewayConfig, workers: int, log_level: str = "INFO") -> int:
    """Serves with `workers` processes until SIGTERM/SIGINT, then drains them all.

    Raises:
        PortUnavailable: the HTTP or gRPC port cannot be bound.
        WorkersFailed: a worker does not start.
    """
    try:
        http_socket = bind(config.host, config.port)
    except PortUnavailable as exc:
        raise PortUnavailable(f"gateway workers {exc}") from None
    try:
        grpc_socket = (
            reserve_grpc_port(config.host, config.grpc_port) if config.grpc_port >= 0 else None
        )
    except PortUnavailable as exc:
        http_socket.close()
        raise PortUnavailable(f"gateway workers {exc}") from None
    worker_config = dataclasses.replace(
        config,
        port=http_socket.getsockname()[1],
        grpc_port=grpc_socket.getsockname()[1] if grpc_socket else -1,
    )
    own_metrics_dir = not os.environ.get(MULTIPROC_ENV)
    metrics_dir = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="cifarflow-metrics-")
    for name in os.listdir(metrics_dir):  # counters start from zero with the gateway
        if name.endswith(".db"):
            os.remove(os.path.join(metrics_dir, name))
    os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by the spawned workers
    uv_config = uvicorn_config(
        WorkerApp(worker_config, log_level),
        HttpConfig(idle_timeout_s=config.idle_timeout_s, header_timeout_s=config.header_timeout_s),
        workers=workers,
        lifespan="on",
        timeout_graceful_shutdown=max(1, int(config.shutdown_grace_s + 0.999)),
    )
    supervisor = GatewaySupervisor(uv_config, [http_socket], metrics_dir)
    grpc_text = f"{config.host}:{worker_config.grpc_port}" if grpc_socket else "off"
    supervisor.on_started = lambda pids: print(
        f"gateway: HTTP on {config.host}:{worker_config.port}, gRPC on {grpc_text}, "
        f"backend {config.backend}, {workers} workers (pids {' '.join(map(str, pids))})",
        flush=True,
    )
    try:
        supervisor.run()
    finally:
        http_socket.close()
        if grpc_socket:
            grpc_socket.close()
        if own_metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if supervisor.failure:
        raise WorkersFailed(supervisor.failure)
    return 0
