"""The serving stack as real processes for the hostile-input tests.

S3 (SeaweedFS) -> `cifarflow publish` -> `cifarflow serve model --store s3://...`
-> `cifarflow serve gateway` with a bearer token. Every process runs at
DEBUG log level with its console in a file under `Stack.logs`, so the
secrets test can grep everything the stack printed.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from pathlib import Path

import pytest
import requests

from cifarflow.serving.gateway.auth import BearerAuth
from cifarflow.serving.gateway.backend import Backend
from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.metrics import GatewayMetrics
from cifarflow.serving.gateway.rest import GatewayApi
from cifarflow.serving.gateway.service import Classifier
from tests.support.processes import ServiceProcess

MODEL = "cifar"
DEBUG = ["--log-level", "DEBUG"]


@dataclasses.dataclass
class Stack:
    token: str
    s3_env: dict[str, str]
    store: str  # s3://bucket/prefix
    model: ServiceProcess
    gateway: ServiceProcess
    model_grpc: str
    model_rest: str
    gateway_grpc: str
    url: str
    logs: Path
    export: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def run(
        self, name: str, args: list[str], env: dict[str, str], timeout_s: float = 120
    ) -> tuple[int, str]:
        """A one-shot CLI command, its console logged beside the servers'; (exit code, output)."""
        process = ServiceProcess(args, self.logs / f"{name}.log", env)
        return process.process.wait(timeout_s), process.output()


def wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/readyz never answered 200")


@pytest.fixture(scope="session")
def stack(tmp_path_factory, s3_server) -> Stack:
    from tests.serving.model_factory import export_test_model

    logs = tmp_path_factory.mktemp("stack-logs")
    export = export_test_model(tmp_path_factory.mktemp("security-export") / "model")
    bucket = f"sec-{secrets.token_hex(6)}"
    s3_server.settings.client().make_bucket(bucket)
    store = f"s3://{bucket}/models"
    s3_env = s3_server.env()
    publish = ServiceProcess(
        ["publish", "--model", str(export), "--store", store, "--model-name", MODEL],
        logs / "publish.log",
        s3_env,
    )
    assert publish.process.wait(120) == 0, publish.output()
    # At DEBUG (a flag of `serve`, before the part), the most a log can say.
    model = ServiceProcess(
        [
            "serve",
            *DEBUG,
            "model",
            "--store",
            store,
            "--model-name",
            MODEL,
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--rest-port",
            "0",
            "--poll-interval",
            "3600",
        ],
        logs / "model.log",
        s3_env,
    )
    grpc_port, rest_port = model.wait_for(
        r"model server: gRPC on [\d.]+:(\d+), REST on [\d.]+:(\d+)", 120
    ).groups()
    token = "tok-" + secrets.token_urlsafe(24)
    gateway = ServiceProcess(
        [
            "serve",
            *DEBUG,
            "gateway",
            "--backend",
            f"127.0.0.1:{grpc_port}",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--grpc-port",
            "0",
            "--model-name",
            MODEL,
            "--allow-url-host",
            "127.0.0.1",
            "--allow-private-urls",
            "--url-timeout",
            "1",
            "--max-image-mb",
            "1",
        ],
        logs / "gateway.log",
        {"CIFARFLOW_GATEWAY_TOKEN": token},
    )
    http_port, gateway_grpc = gateway.wait_for(
        r"gateway: HTTP on [\d.]+:(\d+), gRPC on [\d.]+:(\d+)", 60
    ).groups()
    url = f"http://127.0.0.1:{http_port}"
    wait_ready(url)
    yield Stack(
        token,
        s3_env,
        store,
        model,
        gateway,
        f"127.0.0.1:{grpc_port}",
        f"http://127.0.0.1:{rest_port}",
        f"127.0.0.1:{gateway_grpc}",
        url,
        logs,
        export,
    )
    gateway.stop()
    model.stop()


@pytest.fixture(scope="session")
def api() -> GatewayApi:
    """The real REST handlers; URL fetching is off, so parsing never leaves the process."""
    config = GatewayConfig(backend="127.0.0.1:9", max_image_bytes=64 * 1024)
    backend = Backend(config.backend, config.model_name, 1.0)
    return GatewayApi(
        Classifier(config, backend, GatewayMetrics()), BearerAuth(None), lambda: False
    )


def pytest_collection_modifyitems(items):
    """A hostile input that hangs the code under test must fail its test, not the whole run."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(120))
