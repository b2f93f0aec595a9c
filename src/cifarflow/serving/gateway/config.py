"""Gateway configuration, and where its bearer token comes from."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from cifarflow.defaults import MODEL_NAME
from cifarflow.errors import BadInputError
from cifarflow.serving.gateway.monitoring.config import MonitorConfig
from cifarflow.serving.gateway.target import validate_target

TOKEN_ENV = "CIFARFLOW_GATEWAY_TOKEN"


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """What `cifarflow serve gateway` runs with.

    Attributes:
        backend: model server (or TensorFlow Serving) gRPC target: HOST:PORT (one
            connection), or dns:///NAME:PORT / ipv4:ADDR:PORT,... (calls spread
            round robin over every address; target.py).
        port / grpc_port: 0 picks a free port; grpc_port < 0 disables gRPC.
        model_name: the model to ask the backend for.
        backend_timeout_s: deadline of each backend call.
        max_image_bytes: largest image (upload or fetched); 413 above.
        max_pixels: largest width*height; refuses decompression bombs before decoding.
        allowed_url_hosts: hosts `/predict` may fetch from ('*.example.com' for
            subdomains); empty turns URL fetching off.
        allow_private_urls: allow private, loopback and link-local addresses.
        url_timeout_s: total time for one URL fetch.
        token: bearer token clients must send; None turns auth off.
        shutdown_grace_s: how long a stop waits for in-flight requests.
        header_timeout_s: an HTTP connection that has not sent a request's complete
            headers this long after connecting (or after its previous answer) is
            closed, so slow clients hold nothing for long.
        idle_timeout_s: an idle keep-alive HTTP connection is closed after this long.
        monitors: the OOD score per answer and the drift windows (monitoring/).
    """

    backend: str
    host: str = "0.0.0.0"
    port: int = 8080
    grpc_port: int = 8081
    model_name: str = MODEL_NAME
    backend_timeout_s: float = 5.0
    max_image_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 40_000_000
    allowed_url_hosts: tuple[str, ...] = ()
    allow_private_urls: bool = False
    url_timeout_s: float = 5.0
    token: str | None = dataclasses.field(default=None, repr=False)
    shutdown_grace_s: float = 10.0
    default_top_k: int = 5
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    monitors: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)

    def __post_init__(self) -> None:
        validate_target(self.backend)
        if self.max_image_bytes <= 0 or self.max_pixels <= 0:
            raise BadInputError("image limits must be positive")
        if not (self.header_timeout_s > 0 and self.idle_timeout_s > 0):
            raise BadInputError("--header-timeout and --idle-timeout must be positive")

    @property
    def max_body_bytes(self) -> int:
        # base64 in JSON is 4/3 of the image, multipart adds headers: leave room
        # so the image limit (a clear 413 naming the image) is what users hit.
        return self.max_image_bytes * 4 // 3 + 64 * 1024


def load_token(
    environ: Mapping[str, str] | None = None, token_file: Path | None = None
) -> str | None:
    """The bearer token from a mounted secret file, else from CIFARFLOW_GATEWAY_TOKEN; None if neither."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise BadInputError(f"cannot read --token-file {token_file}: {exc.strerror}") from None
        if not token:
            raise BadInputError(f"--token-file {token_file} is empty")
        return token
    env = os.environ if environ is None else environ
    return env.get(TOKEN_ENV, "").strip() or None
