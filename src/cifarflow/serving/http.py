"""A small threaded HTTP/1.1 server shared by the model server's REST API and the gateway.

The standard library's `ThreadingHTTPServer` with: keep-alive, a body size
limit checked against `Content-Length` before reading (413 without
buffering the upload), request ids (`X-Request-ID` in, or generated; echoed
back), ServingError -> status mapping in one place, and a graceful stop
that refuses new requests, then waits for in-flight ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cifarflow.serving.errors import (
    InvalidInput,
    PayloadTooLarge,
    ServingError,
    Unauthenticated,
    Unavailable,
    as_serving_error,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any  # email.message.Message: case-insensitive get()
    body: bytes
    request_id: str
    client: str

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (
            ValueError,
            UnicodeDecodeError,
            RecursionError,
        ) as exc:  # RecursionError: [[[[... nested too deep
            raise InvalidInput(f"malformed JSON body: {exc}") from None


@dataclasses.dataclass
class Response:
    """An answer; `cause` is the failed request's ServingError.cause, for metrics (None on success)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    cause: str | None = None

    @classmethod
    def json(
        cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        return cls(
            status,
            json.dumps(payload, separators=(",", ":")).encode(),
            "application/json",
            headers or {},
        )


Handler = Callable[[Request], Response]


def error_response(exc: BaseException, request_id: str = "") -> Response:
    """`{"error": message}` with the status ServingError names (TensorFlow Serving's shape)."""
    error = as_serving_error(exc)
    headers = {}
    if isinstance(error, Unavailable):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="cifarflow"'
    payload = {"error": error.message}
    if request_id:
        payload["request_id"] = request_id
    response = Response.json(payload, error.http_status, headers)
    response.cause = error.cause
    return response


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    host: str = "0.0.0.0"
    port: int = 0
    max_body_bytes: int = 16 * 1024 * 1024
    idle_timeout_s: float = 30.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block exit
    allow_reuse_address = True
    request_queue_size = 128


class HttpServer:
    """Runs `app(request) -> Response` on a thread per connection.

    `on_done(request, response, seconds)` is called after each request (logs, metrics).
    `listen_socket`, when given, is an already bound and listening socket to
    accept on instead of binding `config.host:port` (gateway workers share one).
    """

    def __init__(
        self,
        config: HttpConfig,
        app: Handler,
        on_done: Callable[[Request, Response, float], None] | None = None,
        listen_socket: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.app = app
        self.on_done = on_done or (lambda req, resp, seconds: None)
        self._inflight = 0
        self._inflight_zero = threading.Condition()
        self.draining = False
        if listen_socket is None:
            self._httpd = _Server((config.host, config.port), _make_handler(self))
        else:
            self._httpd = _Server(
                listen_socket.getsockname()[:2], _make_handler(self), bind_and_activate=False
            )
            self._httpd.socket.close()
            self._httpd.socket = listen_socket
            self._httpd.server_address = listen_socket.getsockname()[:2]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> HttpServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"http-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, grace_s: float = 10.0) -> bool:
        """Stops accepting, waits up to `grace_s` for in-flight requests; True if all finished."""
        self.draining = True
        self._httpd.shutdown()
        deadline = time.monotonic() + grace_s
        with self._inflight_zero:
            while self._inflight and time.monotonic() < deadline:
                self._inflight_zero.wait(deadline - time.monotonic())
            finished = self._inflight == 0
        self._httpd.server_close()
        return finished

    def _enter(self) -> None:
        with self._inflight_zero:
            self._inflight += 1

    def _leave(self) -> None:
        with self._inflight_zero:
            self._inflight -= 1
            if not self._inflight:
                self._inflight_zero.notify_all()


def _make_handler(server: HttpServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = server.config.idle_timeout_s
        server_version = "cifarflow"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # access logs go through on_done
            pass

        def setup(self) -> None:
            super().setup()
            # Small responses must not wait for the client's delayed ACK (Nagle: +40 ms).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _handle(self) -> None:
            started = time.perf_counter()
            request_id = (self.headers.get("X-Request-ID") or "")[:64] or uuid.uuid4().hex
            parts = urlsplit(self.path)
            request = Request(
                self.command,
                parts.path,
                parse_qs(parts.query),
                self.headers,
                b"",
                request_id,
                self.client_address[0],
            )
            server._enter()
            try:
                response = self._respond(request)
                response.headers.setdefault("X-Request-ID", request_id)
                # Logged and counted before the answer leaves: once a client has its
                # answer, the log line and the metrics already show the request.
                server.on_done(request, response, time.perf_counter() - started)
                self._send(response)
            finally:
                # Only once the answer is written: a drain that waits for in-flight
                # requests, then exits the process, must not cut an answer off.
                server._leave()

        def _respond(self, request: Request) -> Response:
            try:
                if server.draining:
                    raise Unavailable("the server is shutting down")
                request.body = self._read_body()
                return server.app(request)
            except ServingError as exc:
                return error_response(exc, request.request_id)
            except Exception as exc:  # a bug: log it, answer 500, keep serving
                log.exception(
                    "unhandled error in %s %s (request %s)",
                    request.method,
                    request.path,
                    request.request_id,
                )
                return error_response(exc, request.request_id)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                self.close_connection = True
                raise InvalidInput("chunked request bodies are not supported: send Content-Length")
            values = self.headers.get_all("Content-Length") or ["0"]
            if len(values) > 1 or not (values[0].strip().isascii() and values[0].strip().isdigit()):
                # int() would raise (a 500) or take "-1"; two lengths are a request-smuggling classic.
                self.close_connection = True
                raise InvalidInput(
                    f"Content-Length must be one number of bytes, got {', '.join(values)!r}"
                )
            length = int(values[0])
            if length > server.config.max_body_bytes:
                self.close_connection = True  # the unread body cannot be skipped safely
                raise PayloadTooLarge(
                    f"request body is {length} bytes; the limit is {server.config.max_body_bytes} bytes"
                )
            return self.rfile.read(length) if length > 0 else b""

        def _send(self, response: Response) -> None:
            try:
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                for name, value in response.headers.items():
                    self.send_header(name, value)
                if self.close_connection:
                    self.send_header("Connection", "close")
                # Headers and body in one write: one packet for a small answer.
                self._headers_buffer.append(b"\r\n")
                if self.command != "HEAD":
                    self._headers_buffer.append(response.body)
                self.flush_headers()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

    return _Handler
