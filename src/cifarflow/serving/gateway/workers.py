"""`cifarflow serve gateway --workers N`: N gateway processes behind one HTTP and one gRPC port.

One Python process runs its request handling under one GIL, so a gateway
uses about one core however many threads it has; N worker processes use N.

How the ports are shared (Linux):

- HTTP: the supervisor binds and listens once, and every worker accepts on
  that same inherited socket (one accept queue). A worker that dies or
  drains leaves the queue to the others, so connections waiting in it are
  served, not reset, and an idle worker takes the next connection, however
  busy the others are. SO_REUSEPORT would give each worker its own queue:
  the kernel hashes connections onto queues blindly, and closing a queue (a
  crash, a drain, a restart) resets the connections that were waiting in it.
  The shared socket is non-blocking, so a worker that loses the race for a
  connection returns to its loop instead of blocking in accept().
- gRPC: grpcio cannot serve on a socket it did not bind, so each worker binds
  the port itself with SO_REUSEPORT. The supervisor holds a bound (not
  listening) SO_REUSEPORT socket on it, which reserves the port across
  worker restarts and turns port 0 into a number before the workers start.
  A gRPC channel is one long-lived connection: it stays on the worker that
  accepted it (a new connection may land on another).

Workers are fresh interpreters (`python -m cifarflow.serving.gateway.workers`),
not forks: grpcio does not survive fork() once it has started, and a fresh
process inherits only the socket. The configuration, token included, goes to
a worker on its stdin (never on its command line, which `ps` shows); the
worker answers `ready` or `error <message>` on its stdout.

Each worker has its own metrics: `/metrics` reports the worker that accepted
the scrape (its pid is in the `X-Gateway-Worker` header of every answer).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time

from cifarflow.errors import CifarflowError
from cifarflow.serving.gateway.config import GatewayConfig

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
_QUICK_DEATH_S = (
    5.0  # a worker that dies this soon after starting is restarted after a growing pause
)
_MAX_RESTART_PAUSE_S = 30.0


class WorkersFailed(CifarflowError):
    """The gateway workers could not start."""


@dataclasses.dataclass
class _Slot:
    index: int
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_pause_s: float = 0.0
    restart_at: float = 0.0


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_http(host: str, port: int, backlog: int = 128) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)  # see the module docstring: workers race for each connection
    sock.set_inheritable(True)
    return sock


def reserve_grpc_port(host: str, port: int) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class Supervisor:
    """Starts `workers` gateway processes, restarts any that dies, drains them all on SIGTERM."""

    # The worker program; its flags are appended. A test may swap in one that fails.
    worker_command: tuple[str, ...] = (sys.executable, "-m", "cifarflow.serving.gateway.workers")

    def __init__(self, config: GatewayConfig, workers: int, log_level: str = "INFO") -> None:
        if workers < 2:
            raise ValueError(
                "a supervisor runs two workers or more; one runs in-process (run_gateway)"
            )
        self.config = config
        self.log_level = log_level
        self.slots = [_Slot(i) for i in range(workers)]
        # A plain flag, not a threading.Event: a signal handler must not take a lock
        # its own thread may hold (Event.set() inside Event.wait() deadlocks).
        self.stop_requested = False
        self.http_socket: socket.socket | None = None
        self.grpc_socket: socket.socket | None = None
        self.http_port = 0
        self.grpc_port: int | None = None

    # -- one worker -----------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        assert self.http_socket is not None
        fd = self.http_socket.fileno()
        process = subprocess.Popen(
            [*self.worker_command, "--http-fd", str(fd), "--index", str(slot.index)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(fd,),
        )
        config = dataclasses.replace(
            self.config,
            port=self.http_port,
            grpc_port=self.grpc_port if self.grpc_port is not None else -1,
        )
        payload = {"config": dataclasses.asdict(config), "log_level": self.log_level}
        try:
            process.stdin.write(json.dumps(payload).encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # it died at once: _await_ready reports it
        slot.process, slot.started_at = process, time.monotonic()

    def _await_ready(self, slot: _Slot, timeout_s: float) -> str | None:
        """None when the worker says it is serving, else why it is not."""
        process = slot.process
        assert process is not None and process.stdout is not None
        fd, buffer = process.stdout.fileno(), b""
        deadline = time.monotonic() + timeout_s
        try:
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return f"not ready within {timeout_s:g} s"
                if self.stop_requested:
                    return "stopping"
                readable, _, _ = select.select([fd], [], [], min(0.2, remaining))
                if readable:
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        return f"exited with code {process.wait()} before it was ready"
                    buffer += chunk
        finally:
            process.stdout.close()  # one line is all a worker says here
        line = buffer.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        return None if line.startswith("ready") else line.removeprefix("error ").strip() or line

    # -- the pool ---------------------------------------------------------------------

    def start(self) -> Supervisor:
        """Binds the ports and starts every worker; raises WorkersFailed (all stopped) if one cannot start."""
        host, port = self.config.host, self.config.port
        try:
            self.http_socket = bind_http(host, port)
            self.http_port = self.http_socket.getsockname()[1]
            if self.config.grpc_port >= 0:
                port = self.config.grpc_port
                self.grpc_socket = reserve_grpc_port(host, port)
                self.grpc_port = self.grpc_socket.getsockname()[1]
        except OSError as exc:
            self._close_sockets()
            raise WorkersFailed(
                f"gateway workers cannot bind {host}:{port}: {exc.strerror or exc}"
            ) from None
        for slot in self.slots:
            self._spawn(slot)
        for slot in self.slots:
            problem = self._await_ready(slot, START_TIMEOUT_S)
            if self.stop_requested:
                break  # SIGTERM while starting: supervise() drains at once
            if problem is not None:
                self._terminate_all(grace_s=5.0)
                self._close_sockets()
                raise WorkersFailed(
                    f"gateway worker {slot.index + 1} of {len(self.slots)} did not start: {problem}"
                )
        return self

    def pids(self) -> list[int]:
        return [
            slot.process.pid
            for slot in self.slots
            if slot.process is not None and slot.process.poll() is None
        ]

    def supervise(self) -> int:
        """Restarts workers that die until a stop is requested, then drains; 0 when every worker drained cleanly."""
        while not self.stop_requested:
            time.sleep(0.2)
            now = time.monotonic()
            for slot in self.slots:
                if slot.process is not None and slot.process.poll() is not None:
                    self._note_death(slot, now)
                if slot.process is None and now >= slot.restart_at and not self.stop_requested:
                    self._spawn(slot)
                    problem = self._await_ready(slot, START_TIMEOUT_S)
                    if problem is not None and not self.stop_requested:
                        log.warning(
                            json.dumps(
                                {
                                    "event": "worker_start_failed",
                                    "worker": slot.index,
                                    "reason": problem,
                                }
                            )
                        )
                        if slot.process.poll() is None:
                            slot.process.kill()
                            slot.process.wait()
                        self._note_death(slot, time.monotonic())
                    elif problem is None:
                        log.info(
                            json.dumps(
                                {
                                    "event": "worker_started",
                                    "worker": slot.index,
                                    "pid": slot.process.pid,
                                }
                            )
                        )
        return self.stop()

    def _note_death(self, slot: _Slot, now: float) -> None:
        process = slot.process
        assert process is not None
        quick = now - slot.started_at < _QUICK_DEATH_S
        # A worker that keeps dying at start (a bug, a bad backend setting) must not spin a core.
        slot.restart_pause_s = (
            min(_MAX_RESTART_PAUSE_S, max(0.5, 2 * slot.restart_pause_s)) if quick else 0.0
        )
        slot.restart_at = now + slot.restart_pause_s
        log.warning(
            json.dumps(
                {
                    "event": "worker_exited",
                    "worker": slot.index,
                    "pid": process.pid,
                    "code": process.returncode,
                    "restart_in_s": slot.restart_pause_s,
                }
            )
        )
        slot.process = None

    def stop(self) -> int:
        """Forwards SIGTERM to every worker and waits for their drain; 0 when all exited 0."""
        self.stop_requested = True
        # Once the workers are gone, new connections must be refused, not left in a queue nobody reads.
        self._close_http_socket()
        codes = self._terminate_all(grace_s=self.config.shutdown_grace_s + 5.0)
        self._close_sockets()
        log.info(json.dumps({"event": "workers_stopped", "codes": codes}))
        return 0 if all(code == 0 for code in codes) else 1

    def _terminate_all(self, grace_s: float) -> list[int]:
        running = [slot.process for slot in self.slots if slot.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        codes = []
        for process in running:
            try:
                codes.append(process.wait(max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        return codes

    def _close_http_socket(self) -> None:
        if self.http_socket is not None:
            self.http_socket.close()
            self.http_socket = None

    def _close_sockets(self) -> None:
        self._close_http_socket()
        if self.grpc_socket is not None:
            self.grpc_socket.close()
            self.grpc_socket = None


def run_workers(config: GatewayConfig, workers: int, log_level: str = "INFO") -> int:
    """Serves with `workers` processes until SIGTERM/SIGINT, then drains them all."""
    supervisor = Supervisor(config, workers, log_level)

    def request_stop(*_) -> None:
        supervisor.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    supervisor.start()
    grpc_text = (
        f"{config.host}:{supervisor.grpc_port}" if supervisor.grpc_port is not None else "off"
    )
    print(
        f"gateway: HTTP on {config.host}:{supervisor.http_port}, gRPC on {grpc_text}, backend {config.backend}, "
        f"{workers} workers (pids {' '.join(map(str, supervisor.pids()))})",
        flush=True,
    )
    return supervisor.supervise()


# -- the worker process ---------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when its supervisor dies, so no orphan keeps the ports."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="one gateway worker (started by the supervisor; not for direct use)"
    )
    parser.add_argument("--http-fd", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    _die_with_parent()
    ready = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # nothing else may write to the ready pipe: nobody reads it after the first line
    try:
        payload = json.loads(sys.stdin.read())
        raw = payload["config"]
        raw["allowed_url_hosts"] = tuple(raw.get("allowed_url_hosts") or ())
        config = GatewayConfig(**raw)
        logging.basicConfig(
            level=str(payload.get("log_level", "INFO")).upper(), format="%(message)s"
        )

        from cifarflow.serving.protos import use_protos_only

        use_protos_only()
        from cifarflow.serving.gateway.server import Gateway, wait_for_stop_signal

        http_socket = socket.socket(fileno=args.http_fd)
        http_socket.setblocking(False)
        gateway = Gateway(config, http_socket=http_socket, worker=True).start()
    except Exception as exc:  # reported by the supervisor in its one line
        ready.write(f"error {type(exc).__name__}: {exc}".replace("\n", " ") + "\n")
        ready.close()
        return 1
    wait_for_stop_signal(lambda: (ready.write(f"ready {os.getpid()}\n"), ready.close()))
    gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
