"""cifarflow's servers as real subprocesses, the way users start them, for system tests.

Each process writes its console to a log file the test can read (and grep
for secrets); ports are picked by the server (`0`) and read back from the
line it prints when it is up.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def cifarflow_command() -> list[str]:
    """The `cifarflow` console script of the environment running the tests."""
    script = Path(sys.executable).with_name("cifarflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cifarflow.cli.main"]


class ServiceProcess:
    """One `cifarflow ...` subprocess with its output in `log_path`.

    Args:
        args: the verb and its flags, e.g. `["serve", "model", ...]`.
        log_path: file that receives stdout and stderr.
        env: extra environment variables (added to this process's).
    """

    def __init__(
        self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.args = list(args)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                cifarflow_command() + self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float = 60.0) -> re.Match:
        """Waits until the output matches `pattern`; fails with the output if the process dies first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output())
            if match:
                return match
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(self.args[:2])} exited {self.process.returncode}:\n{self.output()[-3000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(
            f"{' '.join(self.args[:2])}: no {pattern!r} within {timeout_s} s:\n{self.output()[-3000:]}"
        )

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (what Kubernetes sends), then waits; kills only if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class ModelServerProcess(ServiceProcess):
    """`cifarflow serve model` on loopback; `grpc_port` / `rest_port` once started."""

    def __init__(
        self,
        store: str,
        model_name: str,
        log_path: Path,
        *extra: str,
        grpc_port: int = 0,
        rest_port: int = 0,
        env: dict[str, str] | None = None,
        timeout_s: float = 90.0,
    ) -> None:
        super().__init__(
            [
                "serve",
                "model",
                "--store",
                store,
                "--model-name",
                model_name,
                "--host",
                "127.0.0.1",
                "--grpc-port",
                str(grpc_port),
                "--rest-port",
                str(rest_port),
                *extra,
            ],
            log_path,
            env,
        )
        match = self.wait_for(
            r"model server: gRPC on [\d.]+:(\d+), REST on [\d.]+:(\d+|None)", timeout_s
        )
        self.grpc_port = int(match.group(1))
        self.rest_port = None if match.group(2) == "None" else int(match.group(2))

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


class GatewayProcess(ServiceProcess):
    """`cifarflow serve gateway` on loopback in front of `backend`; `url` and `grpc_address` once started."""

    def __init__(
        self,
        backend: str,
        log_path: Path,
        *extra: str,
        port: int = 0,
        grpc_port: int = 0,
        env: dict[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__(
            [
                "serve",
                "gateway",
                "--backend",
                backend,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
                *extra,
            ],
            log_path,
            env,
        )
        match = self.wait_for(
            r"gateway: HTTP on [\d.]+:(\d+), gRPC on [\d.]+:(\d+|None)", timeout_s
        )
        self.port = int(match.group(1))
        self.grpc_port = None if match.group(2) == "None" else int(match.group(2))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"
