"""The image and top_k of a REST classify request, however it was sent; and the client's deadline.

Protocol-light on purpose: it sees headers, query and body, not the web
framework, so the hostile-input property tests drive it directly.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from cifarflow.serving.errors import InvalidInput, UnsupportedMediaType
from cifarflow.serving.gateway.multipart_form import read_form
from cifarflow.serving.gateway.service import check_top_k


@dataclasses.dataclass(frozen=True)
class RawRequest:
    """What the parsers need of an HTTP request.

    Attributes:
        headers: case-insensitive (Starlette's `Headers`).
        query: query parameters, the first value of each.
        body: the whole body, already within the server's body limit.
    """

    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes

    @property
    def media_type(self) -> str:
        return (self.headers.get("content-type") or "").split(";")[0].strip().lower()

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: [[[[... nested too deep
            raise InvalidInput(f"malformed JSON body: {exc}") from None


def multipart_file(request: RawRequest) -> tuple[bytes, dict[str, str]]:
    """The `file` field and the other (text) fields of a multipart/form-data body."""
    form = read_form(request.headers.get("content-type", ""), request.body)
    file_bytes = form.fields.get("file")
    if file_bytes is None:
        raise InvalidInput("multipart body has no 'file' field")
    return file_bytes, {name: form.text(name) or "" for name in form.fields if name != "file"}


def decode_b64(value: Any) -> bytes:
    """`image_b64`: base64, or a browser's data URL."""
    if not isinstance(value, str):
        raise InvalidInput("'image_b64' must be a base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"malformed base64 in 'image_b64': {exc}") from None


@dataclasses.dataclass(frozen=True)
class ImageUrl:
    """A `{"url": ...}` body: the image is still to be fetched, by the caller, asynchronously.

    `url` is what the client sent, checked by the fetcher (url_fetch.py).
    """

    url: str


def classify_input(request: RawRequest, default_top_k: int) -> tuple[bytes | ImageUrl, int]:
    """The image (or the URL to fetch it from) and top_k of a /v1/classify request.

    Args:
        request: the request.
        default_top_k: top_k when the request names none.
    """
    media_type = request.media_type
    top_k_value: Any = request.query.get("top_k")
    data: bytes | ImageUrl
    if media_type == "multipart/form-data":
        data, fields = multipart_file(request)
        top_k_value = fields.get("top_k", top_k_value)
    elif media_type == "application/json":
        body = request.json()
        if not isinstance(body, dict):
            raise InvalidInput("JSON body must be an object with 'image_b64' (or 'url')")
        if "image_b64" in body:
            data = decode_b64(body["image_b64"])
        elif "url" in body:
            data = ImageUrl(body["url"])
        else:
            raise InvalidInput("JSON body needs 'image_b64' (or 'url')")
        top_k_value = body.get("top_k", top_k_value)
    elif media_type.startswith("image/"):
        data = request.body
    else:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {media_type or '(none)'!r}: "
            "send multipart/form-data, application/json or image/*"
        )
    return data, check_top_k(top_k_value, default_top_k)


def predict_url(request: RawRequest) -> str:
    """The URL of a `/predict` body (the 2023 contract: `{"url": "..."}`)."""
    if request.media_type != "application/json":
        raise UnsupportedMediaType('POST /predict takes application/json: {"url": "..."}')
    body = request.json()
    if not isinstance(body, dict) or "url" not in body:
        raise InvalidInput('JSON body must be {"url": "..."}')
    return body["url"]


def request_deadline(request: RawRequest) -> float | None:
    """A client may shorten the backend deadline with `X-Request-Timeout: <seconds>`."""
    value = request.headers.get("x-request-timeout")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:  # also false for NaN
        raise InvalidInput(f"X-Request-Timeout must be a positive number of seconds, got {value!r}")
    return time.monotonic() + seconds
