"""What the gateway does, independent of the protocol: image in, classes out.

REST (`rest.py`) and gRPC (`grpc_service.py`) both call `Classifier`, so an
image is validated, normalised, sent and ranked the same way on both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np

from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.serving.errors import InvalidInput, ServingError
from cifarflow.serving.gateway.backend import Backend
from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.images import ImageLimits, prepare_image
from cifarflow.serving.gateway.metrics import GatewayMetrics
from cifarflow.serving.gateway.url_fetch import UrlFetcher, UrlPolicy

MAX_BATCH_IMAGES = 64
INLINE_IMAGE_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Classification:
    model: str
    version: int
    probabilities: np.ndarray  # float32 [classes]

    def top(self, k: int) -> list[tuple[int, str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(int(i), class_name(int(i)), float(self.probabilities[i])) for i in order]

    def scores(self) -> dict[str, float]:
        return {class_name(i): float(p) for i, p in enumerate(self.probabilities)}


def class_name(class_id: int) -> str:
    return (
        COARSE_CLASS_NAMES[class_id] if class_id < len(COARSE_CLASS_NAMES) else f"class_{class_id}"
    )


def check_top_k(value, default: int) -> int:
    if value is None or value == "" or value == 0:
        return default
    try:
        top_k = int(value)
        if isinstance(value, float) and value != top_k or isinstance(value, bool):
            raise ValueError
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
        raise InvalidInput(f"top_k must be an integer, got {value!r}") from None
    if not 1 <= top_k <= len(COARSE_CLASS_NAMES):
        raise InvalidInput(f"top_k must be between 1 and {len(COARSE_CLASS_NAMES)}, got {top_k}")
    return top_k


class Classifier:
    def __init__(self, config: GatewayConfig, backend: Backend, metrics: GatewayMetrics) -> None:
        self.config = config
        self.backend = backend
        self.metrics = metrics
        self.limits = ImageLimits(config.max_image_bytes, config.max_pixels)
        self.url_policy = UrlPolicy(
            config.allowed_url_hosts,
            config.allow_private_urls,
            config.max_image_bytes,
            config.url_timeout_s,
        )
        self.url_fetcher = UrlFetcher(self.url_policy)

    async def fetch(self, url: str) -> bytes:
        """The image at `url`, within the URL policy; a coroutine that holds no thread."""
        return await self.url_fetcher.fetch(url)

    async def close(self) -> None:
        """Releases the URL fetcher's client (on the event loop that served the requests)."""
        await self.url_fetcher.aclose()

    def prepare(self, images: list[bytes]) -> list[bytes]:
        """Validates every image (one bad image must not fail a backend batch); CPU work."""
        if not images:
            raise InvalidInput("no images in the request")
        if len(images) > MAX_BATCH_IMAGES:
            raise InvalidInput(f"at most {MAX_BATCH_IMAGES} images per request, got {len(images)}")
        prepared = []
        for index, data in enumerate(images):
            try:
                prepared.append(prepare_image(data, self.limits).data)
            except ServingError as exc:
                if len(images) == 1:
                    raise
                raise type(exc)(f"image {index}: {exc.message}") from None
        return prepared

    async def classify(
        self, images: list[bytes], request_id: str = "", deadline: float | None = None
    ) -> list[Classification]:
        """Checks the images, then one (possibly shared) backend call.

        Small images are checked on the event loop (a trip to a thread costs
        more than the check); large ones, which may be decoded, on a thread.
        """
        if sum(map(len, images)) <= INLINE_IMAGE_BYTES:
            prepared = self.prepare(images)
        else:
            prepared = await asyncio.to_thread(self.prepare, images)
        return await self.classify_prepared(prepared, request_id, deadline)

    async def classify_prepared(
        self, prepared: list[bytes], request_id: str = "", deadline: float | None = None
    ) -> list[Classification]:
        """One (possibly shared) backend call for images `prepare` has checked."""
        started = time.perf_counter()
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            result = await self.backend.classify(prepared, request_id, remaining)
        finally:
            self.metrics.backend_latency.observe(time.perf_counter() - started)
        return [Classification(result.model, result.version, row) for row in result.probabilities]
