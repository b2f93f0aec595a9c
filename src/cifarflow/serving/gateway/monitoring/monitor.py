"""The gateway's monitors: an OOD score on every answer, drift over a sliding window.

`GatewayMonitor` is told two things per classification, both cheap:

- `observe_images`: each image as the model sees it (RGB at the training
  size, from the pixels the gateway decoded anyway to check the upload).
  The image is only queued: its brightness, contrast and saturation bins
  and pixel histograms are computed for `FLUSH_IMAGES` images at a time
  (features.py), by whichever request fills the queue, and go into the
  windows then (window.py). So one request in `FLUSH_IMAGES` does the
  measuring for all, at a fraction of the per-image cost, and the median
  request does none of it. A scrape of /metrics measures what is queued
  first (`flush`), so the gauges it reads have seen every image;
- `judge`: the backend's answer: the OOD score of each row against the
  threshold in the answering version's reference, and the predicted class
  into the class window.

Every `update_every` observations it compares the windows with the served
version's training reference (PSI, psi.py) and sets the gauges (metrics.py).
The windows do not depend on the version (fixed histogram edges), so a new
version only changes what they are compared with.

Images are observed where they are checked, which may be a worker thread,
while answers are judged on the event loop: one lock guards the windows.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Sequence

import numpy as np
from prometheus_client import CollectorRegistry

from cifarflow import ood_scores
from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.image_statistics import CHANNELS
from cifarflow.serving.gateway.monitoring import features
from cifarflow.serving.gateway.monitoring.config import MonitorConfig
from cifarflow.serving.gateway.monitoring.metrics import MonitorMetrics
from cifarflow.serving.gateway.monitoring.psi import population_stability_index
from cifarflow.serving.gateway.monitoring.references import ReferenceSource
from cifarflow.serving.gateway.monitoring.window import SlidingBins, SlidingCounts
from cifarflow.training_reference import TrainingReference

log = logging.getLogger(__name__)

# Images measured together (see the module docstring): 0.03 ms of CPU an image
# in a batch of 32, against 0.19 ms one at a time, on the 2-core development
# machine (bench/results/monitor_cost.json).
FLUSH_IMAGES = 32


@dataclasses.dataclass(frozen=True)
class OodVerdict:
    """One answer's out-of-distribution score.

    Attributes:
        score: `energy` or `max_softmax`.
        value: the score of this answer.
        threshold: the served version's val threshold; None without a reference.
        in_distribution: whether the value passes it; None without a reference.
    """

    score: str
    value: float
    threshold: float | None = None
    in_distribution: bool | None = None

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"score": self.score, "value": self.value}
        if self.in_distribution is not None:
            body["threshold"] = self.threshold
            body["in_distribution"] = self.in_distribution
        return body


class DriftWindows:
    """The sliding windows of input statistics, predicted classes and OOD verdicts.

    Args:
        size: observations per window.
        num_classes: the model's classes.
    """

    def __init__(self, size: int, num_classes: int) -> None:
        self.images = SlidingCounts(size, features.VECTOR_BINS)  # features.LAYOUT
        self.classes = SlidingBins(size, num_classes)
        self.ood = SlidingBins(size, 2)  # bin 1: flagged out-of-distribution

    def reference_counts(self, reference: TrainingReference) -> dict[str, list[int]]:
        """Each feature's reference histogram, by feature name."""
        data = reference.data
        counts = {name: getattr(data, name).histogram.counts for name in features.IMAGE_FEATURES}
        for name, channel in zip(features.PIXEL_FEATURES, CHANNELS, strict=True):
            counts[name] = data.channels[channel].histogram.counts
        counts[features.CLASS_FEATURE] = reference.scores.predicted_class_counts
        return counts

    def live_counts(self) -> dict[str, np.ndarray]:
        """Each feature's window histogram, by feature name."""
        counts = {
            name: self.images.counts[segment.start : segment.stop]
            for name, segment in features.LAYOUT.items()
        }
        counts[features.CLASS_FEATURE] = self.classes.counts
        return counts

    def psi(self, reference: TrainingReference) -> dict[str, float]:
        """PSI per feature, for the windows that are full (a filling window says nothing yet)."""
        full = {
            features.CLASS_FEATURE: self.classes.filled == self.classes.size,
            **dict.fromkeys(features.LAYOUT, self.images.filled == self.images.size),
        }
        expected = self.reference_counts(reference)
        return {
            name: population_stability_index(np.asarray(expected[name]), live)
            for name, live in self.live_counts().items()
            if full[name] and len(expected[name]) == len(live)
        }

    @property
    def ood_rate(self) -> float | None:
        judged = self.ood.filled
        return float(self.ood.counts[1]) / judged if judged else None


class GatewayMonitor:
    """OOD verdicts per answer and drift gauges, for one gateway process.

    Args:
        config: the monitors' settings.
        model_name: the model's folder in the store.
        registry: the gateway's Prometheus registry.
    """

    def __init__(self, config: MonitorConfig, model_name: str, registry: CollectorRegistry) -> None:
        self.config = config
        self.references = ReferenceSource(config.store, model_name)
        self.metrics = MonitorMetrics(registry)
        self.windows = DriftWindows(config.window, len(COARSE_CLASS_NAMES))
        self._reference: TrainingReference | None = None
        self._lock = threading.Lock()
        self._since_update = 0
        self._queued: collections.deque[np.ndarray] = collections.deque()
        self._measuring = threading.Lock()
        self._verdict_counters = {
            verdict: self.metrics.ood_answers.labels(label)
            for verdict, label in ((None, "unknown"), (True, "in"), (False, "out"))
        }

    def observe_images(self, pixels: Sequence[np.ndarray]) -> None:
        """Queues images (uint8 RGB `[H, W, 3]` at the training size) for the windows.

        The call that fills the queue to `FLUSH_IMAGES` measures the queue (`flush`).
        """
        self._queued.extend(pixels)  # deque appends are atomic: no lock on the request path
        if len(self._queued) >= FLUSH_IMAGES:
            self.flush()

    def flush(self) -> None:
        """Measures the queued images and adds them to the windows (then maybe updates the gauges).

        A call while another is measuring returns at once: that one, or the
        next, takes what is queued.
        """
        if not self._measuring.acquire(blocking=False):
            return
        try:
            images = []
            while self._queued:
                images.append(self._queued.popleft())
            if not images:
                return
            by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
            for image in images:
                by_shape.setdefault(image.shape, []).append(image)
            measured = [features.images_features(np.stack(same)) for same in by_shape.values()]
            with self._lock:
                for vectors in measured:
                    for vector in vectors:
                        self.windows.images.add(vector)
                self._count(len(images))
        finally:
            self._measuring.release()

    async def judge(
        self, version: int, probabilities: np.ndarray, logits: np.ndarray | None
    ) -> list[OodVerdict]:
        """The verdict on each answer row; adds the predicted classes to the window.

        Args:
            version: the version that answered.
            probabilities: `[n, classes]`.
            logits: `[n, classes]`, the served (temperature-scaled) logits; None when
                the backend sent none (then only max-softmax can be scored).
        """
        reference = await self.references.get(version)
        name = self.config.ood_score
        # Plain Python per row: an answer has a few rows of 20 numbers, where
        # NumPy's per-call cost would be most of the work.
        probability_rows = np.asarray(probabilities).tolist()
        if name == ood_scores.MAX_SOFTMAX or logits is None:
            name = ood_scores.MAX_SOFTMAX
            values = [max(row) for row in probability_rows]
        else:
            values = [ood_scores.row_score(name, row) for row in np.asarray(logits).tolist()]
        threshold = reference.scores.scores[name].threshold if reference else None
        passed = [
            None if threshold is None else ood_scores.row_passes(name, value, threshold)
            for value in values
        ]
        classes = self.windows.classes.bins
        with self._lock:
            if reference is not self._reference:
                self._reference = reference
                if reference is None:  # nothing to compare with: no stale drift either
                    for feature in self._features():
                        self.metrics.drift.labels(feature).set(0.0)
            for row, flag in zip(probability_rows, passed, strict=True):
                class_id = row.index(max(row))
                if class_id < classes:
                    self.windows.classes.add(class_id)
                if flag is not None:
                    self.windows.ood.add(0 if flag else 1)
            self._count(len(probability_rows))
        verdicts = []
        for value, flag in zip(values, passed, strict=True):
            self._verdict_counters[flag].inc()
            verdicts.append(OodVerdict(name, float(value), threshold, flag))
        return verdicts

    def _features(self) -> tuple[str, ...]:
        return (*features.LAYOUT, features.CLASS_FEATURE)

    def _count(self, observations: int) -> None:
        """Under the lock: refreshes the gauges every `update_every` observations."""
        self._since_update += observations
        if self._since_update >= self.config.update_every:
            self._since_update = 0
            self.update_gauges()

    def update_gauges(self) -> dict[str, float]:
        """Sets the gauges from the windows now (the lock held); returns the PSI per feature."""
        self.metrics.window_images.set(self.windows.images.filled)
        rate = self.windows.ood_rate
        if rate is not None:
            self.metrics.ood_rate.set(rate)
        if self._reference is None:
            return {}
        scores = self.windows.psi(self._reference)
        for feature, value in scores.items():
            self.metrics.drift.labels(feature).set(value)
        return scores
