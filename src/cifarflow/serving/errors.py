"""Typed serving errors, each mapped once to an HTTP status and a gRPC code.

Every handler (model server REST and gRPC, gateway REST and gRPC) raises one
of these for an expected failure and lets the protocol layer translate it
with `http_status`/`grpc_code`, so a bad image is a 400 on REST and an
INVALID_ARGUMENT on gRPC everywhere, and a down backend is always a 503 with
`Retry-After`. The codes for the TensorFlow Serving API follow what
TensorFlow Serving itself answers (unknown model -> NOT_FOUND, unknown
signature -> FAILED_PRECONDITION, bad tensor -> INVALID_ARGUMENT).
"""

from __future__ import annotations

import grpc

from cifarflow.errors import CifarflowError


class ServingError(CifarflowError):
    """Base of expected serving failures; subclasses fix the status codes.

    Attributes:
        http_status: the HTTP status a REST handler answers with.
        grpc_code: the gRPC status code a servicer aborts with.
        cause: a short label for metrics (`errors_total{cause=...}`).
    """

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    cause = "internal"
    exit_code = 5

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.cause


class InvalidInput(ServingError):
    """Malformed request: bad JSON, bad base64, bad tensor, undecodable image."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    cause = "invalid_input"
    exit_code = 2


class FailedPrecondition(ServingError):
    """The request is well formed but asks for something the model lacks (a signature)."""

    # TensorFlow Serving's REST API answers FAILED_PRECONDITION with 400 too.
    http_status = 400
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    cause = "failed_precondition"
    exit_code = 2


class NotFound(ServingError):
    """Unknown model, version, label or URL path."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    cause = "not_found"
    exit_code = 5


class PayloadTooLarge(ServingError):
    """Too many bytes, or too many pixels (a decompression bomb)."""

    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    cause = "too_large"
    exit_code = 2


class UnsupportedMediaType(ServingError):
    """A content type or image format the service does not take."""

    http_status = 415
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    cause = "unsupported_type"
    exit_code = 2


class Forbidden(ServingError):
    """The request is understood but refused by policy (a URL off the allow-list)."""

    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    cause = "forbidden"
    exit_code = 2


class Unauthenticated(ServingError):
    """Missing or wrong bearer token."""

    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    cause = "unauthenticated"
    exit_code = 2


class Unimplemented(ServingError):
    """The served model cannot do what was asked (an explanation from a version exported without one)."""

    http_status = 501
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    cause = "unimplemented"
    exit_code = 5


class MethodNotAllowed(ServingError):
    http_status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    cause = "method_not_allowed"


class Unavailable(ServingError):
    """The backend is down, no model is loaded yet, or the server is shutting down.

    REST answers carry `Retry-After: retry_after_s`.
    """

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    cause = "unavailable"
    exit_code = 5
    retry_after_s = 1


class DeadlineExceeded(ServingError):
    """A backend call or a URL fetch ran past its deadline."""

    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    cause = "deadline"
    exit_code = 5


class BadGateway(ServingError):
    """A fetched URL or the backend answered something unusable."""

    http_status = 502
    grpc_code = grpc.StatusCode.UNAVAILABLE
    cause = "bad_gateway"
    exit_code = 5


class Internal(ServingError):
    """A bug or an unexpected failure inside the model; logged with its traceback."""


# A gRPC status from a backend, as the error a gateway or client raises for it.
_FROM_GRPC: dict[grpc.StatusCode, type[ServingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: PayloadTooLarge,
    grpc.StatusCode.PERMISSION_DENIED: Forbidden,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: NotFound,
}

# gRPC code -> HTTP status, for the model server's REST API, which (like
# TensorFlow Serving's) answers with the status of the underlying call.
_HTTP_FOR_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status_for_grpc(code: grpc.StatusCode) -> int:
    return _HTTP_FOR_GRPC.get(code, 500)


def from_grpc_error(exc: grpc.RpcError, what: str = "backend") -> ServingError:
    """Turns a failed gRPC call into the matching ServingError, keeping its message."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    kind = _FROM_GRPC.get(code, Internal)
    if kind is Unavailable:
        return Unavailable(f"{what} unavailable: {details}")
    if kind is DeadlineExceeded:
        return DeadlineExceeded(f"{what} did not answer in time: {details}")
    return kind(details or code.name)


def as_serving_error(exc: BaseException) -> ServingError:
    """Any exception as a ServingError; unknown ones become `Internal`."""
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, grpc.RpcError):
        return from_grpc_error(exc)
    return Internal(f"{type(exc).__name__}: {exc}")
