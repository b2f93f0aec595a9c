"""What the gateway's and the model server's REST APIs share on the ASGI stack.

- `RequestContext`: an ASGI middleware that gives every request an id
  (`X-Request-ID` in, or generated; echoed back), refuses an oversized body
  with 413 from its `Content-Length` before reading it (and counts a chunked
  one as it arrives), answers 503 while the server drains, turns a bug into
  a logged 500, counts in-flight requests for the drain, and reports each
  answer (`on_done`) for access logs and metrics before it is sent.
- `error_response` / `install_error_handlers`: ServingError -> status and
  `{"error": message, "request_id": id}` in one place, the framework's own
  404/405 included.
- `UvicornServer`: uvicorn (httptools, uvloop) on a thread of its own, on a
  socket bound up front so `port=0` is known before the first request;
  `stop()` drains.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException

from cifarflow.serving.errors import (
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServingError,
    Unauthenticated,
    Unavailable,
    as_serving_error,
)
from cifarflow.serving.ports import bind
from cifarflow.serving.slow_clients import DEFAULT_HEADER_TIMEOUT_S, HeaderTimeoutProtocol

log = logging.getLogger(__name__)
T = TypeVar("T")

# FastAPI's own OpenTelemetry off (FastAPI(telemetry=...), from 0.142): the
# servers report through their Prometheus metrics and JSON access log, and
# with it on, every request first checks whether some global OpenTelemetry
# provider is configured (about 4 µs a request, measured in process).
NO_FASTAPI_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclasses.dataclass
class Answered:
    """One answered request, as `on_done` sees it (before the answer is sent).

    `headers` may still be added to; `cause` is the failed request's
    ServingError.cause, for metrics (None on success).
    """

    method: str
    path: str
    status: int
    request_id: str
    client: str
    seconds: float
    cause: str | None
    headers: list[tuple[bytes, bytes]]


class ServerState:
    """Draining flag and in-flight count, shared by the middleware and `UvicornServer.stop`."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._idle = threading.Condition()

    def enter(self) -> None:
        with self._idle:
            self._in_flight += 1

    def leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """True once no request is in flight, False if `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._in_flight and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
            return self._in_flight == 0


def error_body(error: ServingError, request_id: str) -> bytes:
    payload = {"error": error.message}
    if request_id:
        payload["request_id"] = request_id
    return json.dumps(payload, separators=(",", ":")).encode()


def error_headers(error: ServingError) -> dict[str, str]:
    headers = {}
    if isinstance(error, Unavailable):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="cifarflow"'
    if isinstance(error, PayloadTooLarge):
        headers["Connection"] = "close"  # the unread body cannot be skipped safely
    return headers


def error_response(exc: BaseException, request: Request) -> Response:
    """`{"error": message, "request_id": id}` with the status ServingError names (TF Serving's shape).

    The error's cause is left in the request's state for the metrics.
    """
    error = as_serving_error(exc)
    state = request.scope.setdefault("state", {})
    state["cause"] = error.cause
    return Response(
        error_body(error, state.get("request_id", "")),
        error.http_status,
        error_headers(error),
        media_type="application/json",
    )


def _framework_error(request: Request, exc: Exception) -> Response:
    """The router's own 404/405 and FastAPI's validation errors, as ServingErrors."""
    if isinstance(exc, RequestValidationError):
        return error_response(InvalidInput(f"invalid request: {exc.errors()}"), request)
    status = getattr(exc, "status_code", 500)
    path, method = request.url.path, request.method
    if status == 404:
        return error_response(NotFound(f"no such endpoint: {path}"), request)
    if status == 405:
        return error_response(MethodNotAllowed(f"{method} is not allowed on {path}"), request)
    error = ServingError(str(getattr(exc, "detail", "") or "bad request"))
    error.http_status = status if 400 <= status < 600 else 500
    return error_response(error, request)


async def _serving_error(request: Request, exc: Exception) -> Response:
    return error_response(exc, request)


async def _http_error(request: Request, exc: Exception) -> Response:
    return _framework_error(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    """ServingError and the framework's own HTTP errors answer `{"error": ...}` with their status."""
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _http_error)


def _header(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope["headers"] if key == name]


class RequestContext:
    """ASGI middleware: request id, body limit, drain refusal, bug -> 500, `on_done` per answer.

    Args:
        app: the application it wraps.
        state: the draining flag and in-flight count `UvicornServer.stop` waits on.
        max_body_bytes: larger bodies are refused with 413, before they are read
            when `Content-Length` says so.
        on_done: called with each `Answered` just before its headers are sent.
    """

    def __init__(
        self,
        app: ASGIApp,
        state: ServerState,
        max_body_bytes: int,
        on_done: Callable[[Answered], None],
    ) -> None:
        self.app = app
        self.state = state
        self.max_body_bytes = max_body_bytes
        self.on_done = on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        request_id = given[0].decode("latin-1")[:64] if given and given[0] else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        client = scope.get("client")
        sent = False

        async def send_with_context(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.start":
                sent = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                # Logged and counted before the answer leaves: once a client has
                # its answer, the log line and the metrics already show it.
                self.on_done(
                    Answered(
                        scope["method"],
                        scope["path"],
                        message["status"],
                        request_id,
                        client[0] if client else "",
                        time.perf_counter() - started,
                        state.get("cause"),
                        headers,
                    )
                )
                message["headers"] = headers
            await send(message)

        self.state.enter()
        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await self._send_error(refusal, state, send_with_context)
                return
            try:
                await self.app(scope, self._limited(receive), send_with_context)
            except Exception as exc:
                if isinstance(exc, ServingError):  # raised while reading the body
                    error = exc
                else:  # a bug: log it, answer 500, keep serving
                    log.exception(
                        "unhandled error in %s %s (request %s)",
                        scope["method"],
                        scope["path"],
                        request_id,
                    )
                    error = as_serving_error(exc)
                if sent:  # too late for an answer of its own
                    raise
                await self._send_error(error, state, send_with_context)
        finally:
            # Only once the answer is written: a drain that waits for in-flight
            # requests, then exits the process, must not cut an answer off.
            self.state.leave()

    def _refusal(self, scope: Scope) -> ServingError | None:
        if self.state.draining:
            return Unavailable("the server is shutting down")
        lengths = _header(scope, b"content-length")
        if not lengths:
            return None
        # The HTTP parser has already refused malformed and repeated lengths.
        length = int(lengths[0])
        if length > self.max_body_bytes:
            return PayloadTooLarge(
                f"request body is {length} bytes; the limit is {self.max_body_bytes} bytes"
            )
        return None

    def _limited(self, receive: Receive) -> Receive:
        """`receive` that refuses a body (chunked: no length up front) once it passes the limit."""
        received = 0
        limit = self.max_body_bytes

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
            return message

        return limited

    @staticmethod
    async def _send_error(error: ServingError, state: dict, send: Send) -> None:
        state["cause"] = error.cause
        body = error_body(error, state.get("request_id", ""))
        headers = [(k.lower().encode(), v.encode()) for k, v in error_headers(error).items()]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    """Where an HTTP server listens and what it accepts.

    Attributes:
        host / port: where to listen; port 0 picks a free one.
        max_body_bytes: the body limit (413 above).
        idle_timeout_s: an idle keep-alive connection is closed after this long.
        header_timeout_s: a connection must send a request's complete headers
            this soon after connecting or after its previous answer, or it is
            closed (slow clients).
    """

    host: str = "0.0.0.0"
    port: int = 0
    max_body_bytes: int = 16 * 1024 * 1024
    idle_timeout_s: float = 30.0
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S


def uvicorn_config(app: Any, config: HttpConfig, **options: Any) -> uvicorn.Config:
    """uvicorn with httptools (and its header deadline) and uvloop, logging left to us.

    `options` are more uvicorn.Config arguments (workers, lifespan, ...).
    """
    settings: dict[str, Any] = {
        "loop": "uvloop",
        "http": HeaderTimeoutProtocol,
        "lifespan": "off",
        "access_log": False,  # ours is one JSON line per request, from on_done
        "log_config": None,
        "server_header": False,
        "date_header": False,
        # Nothing here reads the client's address: X-Forwarded-For rewriting
        # would be one more middleware layer on every request for nothing.
        "proxy_headers": False,
        "timeout_keep_alive": max(1, int(config.idle_timeout_s)),
        "backlog": 1024,
    }
    uv_config = _UvicornConfig(app, **{**settings, **options})
    uv_config.header_timeout_s = config.header_timeout_s
    return uv_config


class _UvicornConfig(uvicorn.Config):
    """uvicorn's Config with the headers deadline HeaderTimeoutProtocol reads."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S


class UvicornServer:
    """uvicorn (httptools, uvloop) serving `app` on a thread and event loop of its own.

    Args:
        app: the ASGI application.
        config: where to listen and how long idle connections stay.
        state: the draining flag and in-flight count the app's RequestContext keeps.
        listen_socket: an already bound, listening socket to accept on instead.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: HttpConfig,
        state: ServerState,
        listen_socket: socket.socket | None = None,
    ) -> None:
        self.state = state
        self.socket = listen_socket or bind(config.host, config.port)
        self.server = uvicorn.Server(uvicorn_config(app, config))
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    def start(self, timeout_s: float = 30.0) -> UvicornServer:
        self._thread = threading.Thread(target=self._serve, name=f"http-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server on port {self.port} did not start")
            time.sleep(0.005)
        return self

    def _serve(self) -> None:
        # Off the main thread uvicorn installs no signal handlers: the owner handles them.
        import uvloop

        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self.socket])

        # asyncio.Runner(loop_factory=...) would do this, but only from Python 3.11.
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(serve())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Runs `coroutine` on the server's event loop (from another thread) and returns its result."""
        assert self.loop is not None, "the server is not running"
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def stop(self, grace_s: float = 10.0) -> bool:
        """Refuses new requests, stops accepting, waits up to `grace_s` for in-flight ones.

        Returns:
            True if every in-flight request finished in time.
        """
        self.state.draining = True
        self.server.config.timeout_graceful_shutdown = max(1, int(grace_s + 0.999))
        self.server.should_exit = True
        finished = self.state.wait_idle(grace_s)
        if self._thread is not None:
            self._thread.join(grace_s + 5)
        self.socket.close()
        return finished
