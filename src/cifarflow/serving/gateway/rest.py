"""The gateway's HTTP endpoints.

GET  /              the web page
GET  /healthz       the process is up
GET  /readyz        the backend answers and has the model AVAILABLE
GET  /metrics       Prometheus
GET  /v1/info       what the page needs to know (URL fetching on? auth on?)
GET  /openapi.json  this API described for clients and fuzzers (openapi.json beside this file)
POST /v1/classify   multipart field `file`, JSON {"image_b64" | "url", "top_k"}, or a raw image/* body
POST /predict       {"url": ...} -> {"<class name>": score, ...} (the 2023 contract)
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import importlib.resources
import math
import re
import time
from typing import Any

from cifarflow.serving.errors import (
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    Unavailable,
    UnsupportedMediaType,
)
from cifarflow.serving.gateway.auth import BearerAuth
from cifarflow.serving.gateway.service import Classifier, check_top_k
from cifarflow.serving.http import Request, Response

PUBLIC = {"/", "/healthz", "/readyz", "/metrics", "/v1/info", "/favicon.ico", "/openapi.json"}
# The form has two fields (file, top_k). The email parser costs ~0.1 ms per
# part, so a body of 100,000 empty parts would hold a core for seconds.
MAX_MULTIPART_PARTS = 16
_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s"]+))', re.IGNORECASE)


def _resource(name: str) -> bytes:
    return importlib.resources.files("cifarflow.serving.gateway").joinpath(name).read_bytes()


def _media_type(request: Request) -> str:
    return (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()


def _multipart_file(request: Request) -> tuple[bytes, dict[str, str]]:
    """The `file` field and the other (text) fields of a multipart/form-data body."""
    content_type = request.headers.get("Content-Type", "")
    boundary = _BOUNDARY.search(content_type)
    if not boundary:
        raise InvalidInput("multipart body without a boundary parameter")
    delimiter = b"--" + (boundary[1] or boundary[2]).encode("latin-1")
    if request.body.count(delimiter) > MAX_MULTIPART_PARTS + 1:
        raise InvalidInput(f"multipart body has more than {MAX_MULTIPART_PARTS} parts")
    file_bytes, fields, multipart = None, {}, False
    try:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + request.body
        )
        multipart = message.is_multipart()
        for part in message.iter_parts() if multipart else ():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if name == "file":
                file_bytes = payload
            elif name:
                fields[str(name)] = payload.decode("utf-8", "replace")
    except (
        Exception
    ) as exc:  # the stdlib parser has raised IndexError and others on malformed headers
        raise InvalidInput(f"malformed multipart body ({type(exc).__name__})") from None
    if not multipart:
        raise InvalidInput("malformed multipart body")
    if file_bytes is None:
        raise InvalidInput("multipart body has no 'file' field")
    return file_bytes, fields


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput("'image_b64' must be a base64 string")
    if value.startswith("data:"):  # a data URL from a browser
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"malformed base64 in 'image_b64': {exc}") from None


class GatewayApi:
    """`__call__(request) -> Response` for serving.http.HttpServer."""

    def __init__(self, classifier: Classifier, auth: BearerAuth, is_draining) -> None:
        self.classifier = classifier
        self.auth = auth
        self.is_draining = is_draining
        self.routes = {
            ("GET", "/"): self.index,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("GET", "/metrics"): self.metrics,
            ("GET", "/v1/info"): self.info,
            ("GET", "/openapi.json"): self.openapi,
            ("POST", "/v1/classify"): self.classify,
            ("POST", "/predict"): self.predict,
        }

    def __call__(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        handler = self.routes.get((method, request.path))
        if handler is None:
            if any(path == request.path for _, path in self.routes):
                raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
            raise NotFound(f"no such endpoint: {request.path}")
        if request.path in PUBLIC:
            return handler(request)
        self.auth.check(request.headers.get("Authorization"))
        with self.classifier.metrics.in_flight.track_inprogress():
            return handler(request)

    def endpoint_name(self, request: Request) -> str:
        """A bounded label for metrics (unknown paths would explode cardinality)."""
        return request.path if any(p == request.path for _, p in self.routes) else "other"

    # -- endpoints ----------------------------------------------------------------

    def index(self, request: Request) -> Response:
        return Response(
            200,
            _resource("static/index.html"),
            "text/html; charset=utf-8",
            {"Cache-Control": "no-cache"},
        )

    def openapi(self, request: Request) -> Response:
        return Response(200, _resource("openapi.json"), "application/json")

    def healthz(self, request: Request) -> Response:
        return Response.json({"status": "ok"})

    def readyz(self, request: Request) -> Response:
        if self.is_draining():
            raise Unavailable("shutting down")
        ready, reason, version = self.classifier.backend.status()
        if not ready:
            raise Unavailable(f"not ready: backend {self.classifier.backend.target}: {reason}")
        return Response.json(
            {"status": "ready", "model": self.classifier.backend.model_name, "version": version}
        )

    def metrics(self, request: Request) -> Response:
        return Response(200, self.classifier.metrics.render(), self.classifier.metrics.content_type)

    def info(self, request: Request) -> Response:
        config = self.classifier.config
        return Response.json(
            {
                "model": config.model_name,
                "url_fetching": self.classifier.url_policy.enabled,
                "auth": self.auth.enabled,
                "max_image_bytes": config.max_image_bytes,
                "default_top_k": config.default_top_k,
            }
        )

    def classify(self, request: Request) -> Response:
        data, top_k = self.classify_input(request)
        result = self.classifier.classify([data], request.request_id, _deadline(request))[0]
        return Response.json(
            {
                "model": result.model,
                "version": result.version,
                "predictions": [
                    {"class": name, "probability": p} for _, name, p in result.top(top_k)
                ],
            }
        )

    def classify_input(self, request: Request) -> tuple[bytes, int]:
        """The image bytes and top_k of a /v1/classify request, whichever way it was sent."""
        media_type = _media_type(request)
        top_k_value: Any = (request.query.get("top_k") or [None])[0]
        if media_type == "multipart/form-data":
            data, fields = _multipart_file(request)
            top_k_value = fields.get("top_k", top_k_value)
        elif media_type == "application/json":
            body = request.json()
            if not isinstance(body, dict):
                raise InvalidInput("JSON body must be an object with 'image_b64' (or 'url')")
            if "image_b64" in body:
                data = _b64(body["image_b64"])
            elif "url" in body:
                data = self.classifier.fetch(body["url"])
            else:
                raise InvalidInput("JSON body needs 'image_b64' (or 'url')")
            top_k_value = body.get("top_k", top_k_value)
        elif media_type.startswith("image/"):
            data = request.body
        else:
            raise UnsupportedMediaType(
                f"unsupported Content-Type {media_type or '(none)'!r}: send multipart/form-data, application/json or image/*"
            )
        return data, check_top_k(top_k_value, self.classifier.config.default_top_k)

    def predict(self, request: Request) -> Response:
        if _media_type(request) != "application/json":
            raise UnsupportedMediaType('POST /predict takes application/json: {"url": "..."}')
        body = request.json()
        if not isinstance(body, dict) or "url" not in body:
            raise InvalidInput('JSON body must be {"url": "..."}')
        data = self.classifier.fetch(body["url"])
        result = self.classifier.classify([data], request.request_id, _deadline(request))[0]
        return Response.json(result.scores())


def _deadline(request: Request) -> float | None:
    """A client may shorten the backend deadline with `X-Request-Timeout: <seconds>`."""
    value = request.headers.get("X-Request-Timeout")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:  # also false for NaN
        raise InvalidInput(f"X-Request-Timeout must be a positive number of seconds, got {value!r}")
    return time.monotonic() + seconds
