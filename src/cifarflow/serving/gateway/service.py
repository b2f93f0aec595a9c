"""What the gateway does, independent of the protocol: image in, classes out.

REST (`rest.py`) and gRPC (`grpc_service.py`) both call `Classifier`, so an
image is validated, normalised, sent and ranked the same way on both, and
watched the same way by the monitors (monitoring/): each checked image goes
into the drift windows, each answer gets its out-of-distribution verdict.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import numpy as np

from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.serving.errors import InvalidInput, ServingError
from cifarflow.serving.gateway.backend import Backend, BackendExplanation
from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.images import ImageLimits, prepare_image
from cifarflow.serving.gateway.metrics import GatewayMetrics
from cifarflow.serving.gateway.monitoring.features import MODEL_INPUT_SIDE
from cifarflow.serving.gateway.monitoring.monitor import GatewayMonitor, OodVerdict
from cifarflow.serving.gateway.url_fetch import UrlFetcher, UrlPolicy

MAX_BATCH_IMAGES = 64
INLINE_IMAGE_BYTES = 64 * 1024

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Classification:
    model: str
    version: int
    probabilities: np.ndarray  # float32 [classes]
    ood: OodVerdict | None = None  # None with the monitors off

    def top(self, k: int) -> list[tuple[int, str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(int(i), class_name(int(i)), float(self.probabilities[i])) for i in order]

    def scores(self) -> dict[str, float]:
        return {class_name(i): float(p) for i, p in enumerate(self.probabilities)}


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Why the model answered its top class: a saliency map over the image."""

    classification: Classification
    class_id: int
    saliency: np.ndarray  # float32 [32, 32] in [0, 1], row 0 at the top

    @property
    def class_name(self) -> str:
        return class_name(self.class_id)

    @property
    def probability(self) -> float:
        return float(self.classification.probabilities[self.class_id])

    def saliency_rows(self, decimals: int = 3) -> list[list[float]]:
        """The map as nested lists, rounded (3 decimals: 1/1000 of the range is below what a heat map shows)."""
        return np.round(self.saliency.astype(np.float64), decimals).tolist()


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
        self.monitor = (
            GatewayMonitor(config.monitors, config.model_name, metrics.registry)
            if config.monitors.enabled
            else None
        )
        self._monitor_failed = False
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
        side = MODEL_INPUT_SIDE if self.monitor else None
        prepared = []
        for index, data in enumerate(images):
            try:
                prepared.append(prepare_image(data, self.limits, side))
            except ServingError as exc:
                if len(images) == 1:
                    raise
                raise type(exc)(f"image {index}: {exc.message}") from None
        if self.monitor:
            try:
                self.monitor.observe_images(
                    [p.thumbnail for p in prepared if p.thumbnail is not None]
                )
            except Exception:
                self._monitor_broke()
        return [p.data for p in prepared]

    def measure_queued_images(self) -> None:
        """Puts the images the drift monitor has queued into its windows and updates the gauges (before a scrape)."""
        if self.monitor:
            try:
                self.monitor.flush(update=True)
            except Exception:
                self._monitor_broke()

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
        verdicts = await self._judge(result.version, result.probabilities, result.logits)
        return [
            Classification(result.model, result.version, row, verdict)
            for row, verdict in zip(result.probabilities, verdicts, strict=True)
        ]

    async def _judge(
        self, version: int, probabilities: np.ndarray, logits: np.ndarray | None
    ) -> list[OodVerdict | None]:
        """The monitors' verdicts; a monitor that fails costs the answer its OOD field, nothing more."""
        if self.monitor is not None:
            try:
                return list(await self.monitor.judge(version, probabilities, logits))
            except Exception:
                self._monitor_broke()
        return [None] * len(probabilities)

    def _monitor_broke(self) -> None:
        """Logs a monitor failure (inside an except block) once: a bug there must not flood the log."""
        if not self._monitor_failed:
            self._monitor_failed = True
            log.exception("the OOD/drift monitor failed; answers go out without it")

    async def explain_prepared(
        self, prepared: bytes, request_id: str = "", deadline: float | None = None
    ) -> Explanation:
        """The saliency map of one image `prepare` has checked (a backend call of its own)."""
        started = time.perf_counter()
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            result: BackendExplanation = await self.backend.explain(prepared, request_id, remaining)
        finally:
            self.metrics.backend_latency.observe(time.perf_counter() - started)
        return Explanation(
            Classification(result.model, result.version, result.probabilities),
            result.class_id,
            result.saliency,
        )
