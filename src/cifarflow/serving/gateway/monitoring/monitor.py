"""The gateway's monitors: an OOD score on every answer, drift over a sliding window.

`GatewayMonitor` is told two things per classification, both cheap:

- `observe_images`: each image as the model sees it (RGB at the training
  size, from the pixels the gateway decoded anyway to check the upload):
  its brightness, contrast and saturation bins and pixel histograms go into
  the windows (features.py, window.py);
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
from cifarflow.serving.gateway.monitoring.window import SlidingCounts
from cifarflow.training_reference import TrainingReference

log = logging.getLogger(__name__)


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
        self.classes = SlidingCounts(size, num_classes)
        self.ood = SlidingCounts(size, 2)  # bin 1: flagged out-of-distribution

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

    def observe_images(self, pixels: Sequence[np.ndarray]) -> None:
        """Adds images (uint8 RGB `[H, W, 3]` at the training size) to the windows."""
        measured = [features.image_features(p) for p in pixels]  # outside the lock
        with self._lock:
            for vector in measured:
                self.windows.images.add(vector)
            self._count(len(measured))

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
        if name == ood_scores.MAX_SOFTMAX or logits is None:
            name = ood_scores.MAX_SOFTMAX
            values = np.asarray(probabilities, dtype=np.float64).max(axis=1)
        else:
            values = ood_scores.score(name, logits)
        threshold = reference.scores.scores[name].threshold if reference else None
        passed = ood_scores.passes(name, values, threshold) if threshold is not None else None
        predicted = np.asarray(probabilities).argmax(axis=1)
        with self._lock:
            if reference is not self._reference:
                self._reference = reference
                if reference is None:  # nothing to compare with: no stale drift either
                    for feature in self._features():
                        self.metrics.drift.labels(feature).set(0.0)
            for row, class_id in enumerate(predicted):
                if class_id < len(self.windows.classes.counts):
                    self.windows.classes.add_bin(int(class_id))
                if passed is not None:
                    self.windows.ood.add_bin(0 if passed[row] else 1)
            self._count(len(predicted))
        verdicts = []
        for row, value in enumerate(values):
            flag = None if passed is None else bool(passed[row])
            self.metrics.ood_answers.labels(
                "unknown" if flag is None else "in" if flag else "out"
            ).inc()
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
