"""The gateway's HTTP endpoints.

    GET  /              the web page
    GET  /healthz       the process is up
    GET  /readyz        the backend answers and has the model AVAILABLE
    GET  /metrics       Prometheus
    GET  /v1/info       what the page needs to know (URL fetching on? auth on?)
    POST /v1/classify   multipart field `file`, JSON {"image_b64" | "url", "top_k"}, or a raw image/* body
    POST /predict       {"url": ...} -> {"<class name>": score, ...} (the 2023 contract)
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import importlib.resources
import time
from typing import Any

from cifarflow.serving.errors import InvalidInput, MethodNotAllowed, NotFound, Unavailable, UnsupportedMediaType
from cifarflow.serving.gateway.auth import BearerAuth
from cifarflow.serving.gateway.service import Classifier, check_top_k
from cifarflow.serving.http import Request, Response

PUBLIC = {"/", "/healthz", "/readyz", "/metrics", "/v1/info", "/favicon.ico"}


def _index_html() -> bytes:
    return importlib.resources.files("cifarflow.serving.gateway").joinpath("static/index.html").read_bytes()


def _media_type(request: Request) -> str:
    return (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()


def _multipart_file(request: Request) -> tuple[bytes, dict[str, str]]:
    """The `file` field and the other (text) fields of a multipart/form-data body."""
    content_type = request.headers.get("Content-Type", "")
    if "boundary=" not in content_type:
        raise InvalidInput("multipart body without a boundary parameter")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + request.body
    )
    if not message.is_multipart():
        raise InvalidInput("malformed multipart body")
    file_bytes, fields = None, {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "file":
            file_bytes = payload
        elif name:
            fields[str(name)] = payload.decode("utf-8", "replace")
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
        return Response(200, _index_html(), "text/html; charset=utf-8", {"Cache-Control": "no-cache"})

    def healthz(self, request: Request) -> Response:
        return Response.json({"status": "ok"})

    def readyz(self, request: Request) -> Response:
        if self.is_draining():
            raise Unavailable("shutting down")
        ready, reason, version = self.classifier.backend.status()
        if not ready:
            raise Unavailable(f"not ready: backend {self.classifier.backend.target}: {reason}")
        return Response.json({"status": "ready", "model": self.classifier.backend.model_name, "version": version})

    def metrics(self, request: Request) -> Response:
        return Response(200, self.classifier.metrics.render(), self.classifier.metrics.content_type)

    def info(self, request: Request) -> Response:
        config = self.classifier.config
        return Response.json({
            "model": config.model_name,
            "url_fetching": self.classifier.url_policy.enabled,
            "auth": self.auth.enabled,
            "max_image_bytes": config.max_image_bytes,
            "default_top_k": config.default_top_k,
        })

    def classify(self, request: Request) -> Response:
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
        top_k = check_top_k(top_k_value, self.classifier.config.default_top_k)
        result = self.classifier.classify([data], request.request_id, _deadline(request))[0]
        return Response.json({
            "model": result.model,
            "version": result.version,
            "predictions": [{"class": name, "probability": p} for _, name, p in result.top(top_k)],
        })

    def predict(self, request: Request) -> Response:
        if _media_type(request) != "application/json":
            raise UnsupportedMediaType("POST /predict takes application/json: {\"url\": \"...\"}")
        body = request.json()
        if not isinstance(body, dict) or "url" not in body:
            raise InvalidInput("JSON body must be {\"url\": \"...\"}")
        data = self.classifier.fetch(body["url"])
        result = self.classifier.classify([data], request.request_id, _deadline(request))[0]
        return Response.json(result.scores())


def _deadline(request: Request) -> float | None:
    """A client may shorten the backend deadline with `X-Request-Timeout: <seconds>`."""
    value = request.headers.get("X-Request-Timeout")
    try:
        return time.monotonic() + float(value) if value else None
    except ValueError:
        raise InvalidInput(f"X-Request-Timeout must be a number of seconds, got {value!r}") from None
