"""The gateway's HTTP endpoints, on FastAPI.

GET  /              the web page
GET  /healthz       the process is up
GET  /readyz        the backend answers and has the model AVAILABLE
GET  /metrics       Prometheus
GET  /v1/info       what the page needs to know (URL fetching on? auth on?)
POST /v1/classify   multipart field `file`, JSON {"image_b64" | "url", "top_k"}, or a raw image/* body
POST /v1/explain    the same inputs as /v1/classify -> the top class's saliency map
POST /predict       {"url": ...} -> {"<class name>": score, ...} (the 2023 contract)
GET  /openapi.json  this API, generated from the models in schemas.py; `/docs` shows it

Bodies are read and parsed here (inputs.py), not by FastAPI's validation, so
a bad request is a 4xx naming what is wrong in the `{"error": ...}` shape
every other failure has; the models describe the bodies for the OpenAPI
description. The backend call and URL fetches are asynchronous (grpc.aio,
backend.py; httpx, url_fetch.py); the CPU work on a large body (parsing,
image checks) runs on the threadpool, off the event loop.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from cifarflow.serving.api_docs import add_offline_docs
from cifarflow.serving.asgi import NO_FASTAPI_TELEMETRY, install_error_handlers
from cifarflow.serving.errors import Unavailable
from cifarflow.serving.gateway import schemas
from cifarflow.serving.gateway.auth import BearerAuth
from cifarflow.serving.gateway.inputs import (
    ImageUrl,
    RawRequest,
    classify_input,
    predict_url,
    request_deadline,
)
from cifarflow.serving.gateway.service import Classifier

# Paths open without a token (probes, scraping, the page and what it needs).
PUBLIC = {"/", "/healthz", "/readyz", "/metrics", "/v1/info"}
TITLE = "cifarflow gateway"
DESCRIPTION = (
    "Classifies an image into one of CIFAR-100's 20 coarse classes. Errors are "
    '{"error": message, "request_id": id} with the status naming the cause. With auth on '
    "(CIFARFLOW_GATEWAY_TOKEN or --token-file), /v1/classify and /predict need "
    "'Authorization: Bearer <token>'; the other endpoints stay public."
)

_REQUEST_ID = {
    "X-Request-ID": {
        "description": "the client's X-Request-ID (first 64 characters), or a generated one",
        "schema": {"type": "string", "maxLength": 64},
    }
}
_UNAVAILABLE = {
    "model": schemas.Error,
    "description": "no model ready, backend down, or shutting down; retry after Retry-After seconds",
    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
}
_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": schemas.Error, "description": "malformed request, or not an image"},
    401: {
        "model": schemas.Error,
        "description": "missing or wrong bearer token",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    403: {"model": schemas.Error, "description": "a URL the policy refuses"},
    413: {"model": schemas.Error, "description": "too many bytes or pixels"},
    415: {"model": schemas.Error, "description": "unsupported Content-Type or image format"},
    502: {"model": schemas.Error, "description": "a fetched URL answered something unusable"},
    503: _UNAVAILABLE,
    504: {"model": schemas.Error, "description": "the backend or a URL fetch ran out of time"},
}
_TIMEOUT_HEADER = {
    "name": "X-Request-Timeout",
    "in": "header",
    "required": False,
    "description": "seconds the client will wait; shortens the backend deadline",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}
_OPEN: dict[str, list[Any]] = {
    "security": []
}  # public: no token asked, whatever the global setting

# The bearer scheme, as the OpenAPI description names it.
_BEARER_SCHEME = {"bearer": {"type": "http", "scheme": "bearer"}}
# A body this small is parsed and checked on the event loop: a trip to the
# threadpool costs more than the work. Larger ones go there.
INLINE_BODY_BYTES = 64 * 1024


def _api(request: Request) -> GatewayApi:
    return request.app.state.api


def _require_token(request: Request) -> None:
    """BearerAuth's check (constant-time compare, its messages), first thing in a protected endpoint.

    Called directly rather than as a FastAPI dependency: the dependency
    machinery costs more per request than the check.
    """
    _api(request).auth.check(request.headers.get("authorization"))


class RequestRoute(APIRoute):
    """An APIRoute whose endpoint is called with the Request and returns its Response.

    Every endpoint here reads its own inputs (inputs.py) and builds its own
    Response, so FastAPI's per-request dependency solving and response
    validation would have nothing to do but still cost about 50 µs a
    request, half of what the framework adds (docs/serving.md). FastAPI's
    documented hook for this is the route class; the route still describes
    itself in the OpenAPI document from its declaration, as any APIRoute.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


def _raw(request: Request, body: bytes) -> RawRequest:
    return RawRequest(request.headers, request.query_params, body)


def _json(payload: Any) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")


def _resource(name: str) -> bytes:
    return importlib.resources.files("cifarflow.serving.gateway").joinpath(name).read_bytes()


_ROUTES: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = []


def _route(method: str, path: str, protect: bool = False, **options: Any) -> Callable:
    """Registers an endpoint for create_app; `protect` asks for the bearer token."""

    def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        if protect:  # the endpoint calls _require_token; the description says so
            options["responses"] = {**_REFUSALS, **options.get("responses", {})}
            options["openapi_extra"] = {
                **options.get("openapi_extra", {}),
                "security": [{"bearer": []}],
            }
        _ROUTES.append((method, path, endpoint, options))
        return endpoint

    return register


@_route(
    "GET",
    "/",
    response_class=HTMLResponse,
    summary="the web page",
    openapi_extra=_OPEN,
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
)
async def index(request: Request) -> Response:
    return HTMLResponse(_resource("static/index.html"), headers={"Cache-Control": "no-cache"})


@_route(
    "GET",
    "/healthz",
    response_model=schemas.Health,
    summary="the process is up",
    openapi_extra=_OPEN,
    responses={200: {"headers": _REQUEST_ID}},
)
async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


@_route(
    "GET",
    "/readyz",
    response_model=schemas.Ready,
    summary="the backend answers and has the model AVAILABLE",
    openapi_extra=_OPEN,
    responses={503: _UNAVAILABLE},
)
async def readyz(request: Request) -> Response:
    api = _api(request)
    if api.is_draining():
        raise Unavailable("shutting down")
    backend = api.classifier.backend
    ready, reason, version = await backend.status()
    if not ready:
        raise Unavailable(f"not ready: backend {backend.target}: {reason}")
    return _json({"status": "ready", "model": backend.model_name, "version": version})


@_route(
    "GET",
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics",
    openapi_extra=_OPEN,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    classifier = _api(request).classifier
    classifier.measure_queued_images()  # the drift gauges then count every image seen
    metrics = classifier.metrics
    return Response(metrics.render(), media_type=metrics.content_type)


@_route(
    "GET",
    "/v1/info",
    response_model=schemas.Info,
    summary="what the web page needs to know",
    openapi_extra=_OPEN,
)
async def info(request: Request) -> Response:
    api = _api(request)
    config = api.classifier.config
    return _json(
        {
            "model": config.model_name,
            "url_fetching": api.classifier.url_policy.enabled,
            "auth": api.auth.enabled,
            "max_image_bytes": config.max_image_bytes,
            "default_top_k": config.default_top_k,
        }
    )


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


# The inputs /v1/classify and /v1/explain share (the handlers parse the raw
# body themselves, so FastAPI learns the forms from here).
_IMAGE_INPUT = {
    "parameters": [
        {
            "name": "top_k",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 20},
            "description": schemas.TOP_K,
        },
        _TIMEOUT_HEADER,
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _body_schema(schemas.ClassifyForm)},
            "application/json": {"schema": _body_schema(schemas.ClassifyJson)},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


@_route(
    "POST",
    "/v1/classify",
    protect=True,
    response_model=schemas.Classification,
    summary="classify one image: a multipart upload, base64 in JSON, a URL in JSON, or a raw image body",
    responses={200: {"headers": _REQUEST_ID}},
    openapi_extra=_IMAGE_INPUT,
)
async def classify(request: Request) -> Response:
    _require_token(request)
    raw = _raw(request, await request.body())
    api = _api(request)
    request_id = request.scope["state"]["request_id"]
    result, top_k = await api.classify_one(raw, request_id)
    body = {
        "model": result.model,
        "version": result.version,
        "predictions": [{"class": name, "probability": p} for _, name, p in result.top(top_k)],
    }
    if result.ood is not None:  # the monitors are on (docs/monitoring.md)
        body["ood"] = result.ood.to_json()
    return _json(body)


@_route(
    "POST",
    "/v1/explain",
    protect=True,
    response_model=schemas.Explanation,
    summary="explain one image's top class with a saliency map (the same inputs as /v1/classify)",
    responses={
        200: {"headers": _REQUEST_ID},
        501: {
            "model": schemas.Error,
            "description": "the served model version has no `explain` signature (exported before explanations)",
        },
    },
    openapi_extra=_IMAGE_INPUT,
)
async def explain(request: Request) -> Response:
    _require_token(request)
    raw = _raw(request, await request.body())
    api = _api(request)
    request_id = request.scope["state"]["request_id"]
    result, top_k = await api.explain_one(raw, request_id)
    return _json(
        {
            "model": result.classification.model,
            "version": result.classification.version,
            "class": result.class_name,
            "probability": result.probability,
            "saliency": result.saliency_rows(),
            "predictions": [
                {"class": name, "probability": p} for _, name, p in result.classification.top(top_k)
            ],
        }
    )


@_route(
    "POST",
    "/predict",
    protect=True,
    response_model=schemas.ClassScores,
    summary="the 2023 contract: fetch an image by URL (allow-listed hosts only) and score all 20 classes",
    openapi_extra={
        "parameters": [_TIMEOUT_HEADER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _body_schema(schemas.PredictUrl)}},
        },
    },
)
async def predict(request: Request) -> Response:
    _require_token(request)
    raw = _raw(request, await request.body())
    api = _api(request)
    request_id = request.scope["state"]["request_id"]
    result = await api.predict_url(raw, request_id)
    return _json(result.scores())


class GatewayApi:
    """The gateway's REST API: FastAPI app (`app`) over a Classifier.

    Args:
        classifier: what classifies (shared with the gRPC service).
        auth: the bearer token check.
        is_draining: True once a stop began (readyz turns 503).
    """

    def __init__(
        self, classifier: Classifier, auth: BearerAuth, is_draining: Callable[[], bool]
    ) -> None:
        self.classifier = classifier
        self.auth = auth
        self.is_draining = is_draining
        self.app = create_app()
        self.app.state.api = self
        self._paths = {route.path for route in self.app.routes if isinstance(route, Route)}

    @property
    def routes(self) -> set[tuple[str, str]]:
        """(method, path) of every operation the OpenAPI description lists."""
        return {
            (method, route.path)
            for route in self.app.routes
            if isinstance(route, Route) and route.include_in_schema
            for method in route.methods or ()
        }

    def endpoint_name(self, path: str) -> str:
        """A bounded label for metrics (unknown paths would explode cardinality)."""
        return path if path in self._paths else "other"

    def classify_input(self, request: RawRequest) -> tuple[bytes | ImageUrl, int]:
        """The image (or its URL) and top_k of a /v1/classify request, whichever way it was sent."""
        return classify_input(request, self.classifier.config.default_top_k)

    async def classify_one(self, request: RawRequest, request_id: str):
        """Parses, checks and classifies one /v1/classify request."""
        with self.classifier.metrics.in_flight.track_inprogress():
            if len(request.body) <= INLINE_BODY_BYTES:
                prepared, top_k, deadline = self._prepare_classify(request)
            else:  # a big image: parsed and checked in one trip to the threadpool
                prepared, top_k, deadline = await run_in_threadpool(self._prepare_classify, request)
            if isinstance(prepared, ImageUrl):  # fetched here, on the event loop, holding no thread
                data = await self.classifier.fetch(prepared.url)
                result = await self.classifier.classify([data], request_id, deadline)
            else:
                result = await self.classifier.classify_prepared(prepared, request_id, deadline)
            return result[0], top_k

    async def explain_one(self, request: RawRequest, request_id: str):
        """Parses and checks a /v1/explain request (the /v1/classify forms), then explains it."""
        with self.classifier.metrics.in_flight.track_inprogress():
            if len(request.body) <= INLINE_BODY_BYTES:
                prepared, top_k, deadline = self._prepare_classify(request)
            else:
                prepared, top_k, deadline = await run_in_threadpool(self._prepare_classify, request)
            if isinstance(prepared, ImageUrl):  # fetched on the event loop, then checked
                data = await self.classifier.fetch(prepared.url)
                prepared = await run_in_threadpool(self.classifier.prepare, [data])
            explanation = await self.classifier.explain_prepared(prepared[0], request_id, deadline)
            return explanation, top_k

    def _prepare_classify(
        self, request: RawRequest
    ) -> tuple[list[bytes] | ImageUrl, int, float | None]:
        data, top_k = self.classify_input(request)
        deadline = request_deadline(request)
        if isinstance(data, ImageUrl):
            return data, top_k, deadline
        return self.classifier.prepare([data]), top_k, deadline

    async def predict_url(self, request: RawRequest, request_id: str):
        """Fetches and classifies the URL of a /predict request."""
        with self.classifier.metrics.in_flight.track_inprogress():
            if len(request.body) <= INLINE_BODY_BYTES:
                url, deadline = self._parse_predict(request)
            else:
                url, deadline = await run_in_threadpool(self._parse_predict, request)
            data = await self.classifier.fetch(url)
            return (await self.classifier.classify([data], request_id, deadline))[0]

    def _parse_predict(self, request: RawRequest) -> tuple[str, float | None]:
        return predict_url(request), request_deadline(request)


def create_app() -> FastAPI:
    """The FastAPI application with every route; `app.state.api` is set by GatewayApi."""
    app = FastAPI(
        title=TITLE,
        version="1",
        description=DESCRIPTION,
        docs_url=None,  # add_offline_docs serves /docs without a CDN
        redoc_url=None,
        telemetry=NO_FASTAPI_TELEMETRY,
    )
    add_offline_docs(app)
    app.router.route_class = RequestRoute
    for method, path, endpoint, options in _ROUTES:
        app.add_api_route(path, endpoint, methods=[method], **options)
        if method == "GET":  # HEAD answers as GET does (probes, curl -I)
            app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
    install_error_handlers(app)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        # Protected unless an operation says otherwise (the public ones say `security: []`).
        description = generate()
        description.setdefault("security", [{"bearer": []}])
        description.setdefault("components", {}).setdefault("securitySchemes", _BEARER_SCHEME)
        return description

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def openapi_description() -> dict[str, Any]:
    """The OpenAPI description the gateway serves at /openapi.json (no gateway needed)."""
    return create_app().openapi()
