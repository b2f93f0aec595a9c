"""The gateway's monitors: an OOD score on every answer, drift over a sliding window.

`GatewayMonitor` is told two things per classification:

- `observe_images`: each image's thumbnail (a small PIL image from the
  pixels the gateway decoded anyway to check the upload). The thumbnail is
  only queued: turning it into RGB pixels, its brightness, contrast and
  saturation bins and pixel histograms are done for `FLUSH_IMAGES` images
  at a time (features.py), by whichever request fills the queue, and go
  into the windows then (window.py), followed by the drift gauges. So one
  request in `FLUSH_IMAGES` does the measuring for all, at a fraction of
  the per-image cost, and the median request does none of it. A scrape of
  /metrics measures what is queued first (`flush`), so the gauges it reads
  have seen every image;
- `judge`: the backend's answer: the OOD score of each row against the
  threshold in the answering version's reference (it goes out with the
  answer, so it cannot wait). The predicted class and the verdict are only
  queued too: the answer windows and the verdict counters take them at the
  next flush.

At a flush, when `update_every` observations have come in since the last
time, it compares the windows with the served version's training reference
(PSI, psi.py; the reference side is computed once per version) and sets the
gauges (metrics.py). The windows do not depend on the version (fixed
histogram edges), so a new version only changes what they are compared with.

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
from PIL import Image
from prometheus_client import CollectorRegistry

from cifarflow import ood_scores
from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.image_statistics import CHANNELS
from cifarflow.serving.gateway.monitoring import features
from cifarflow.serving.gateway.monitoring.config import MonitorConfig
from cifarflow.serving.gateway.monitoring.metrics import MonitorMetrics
from cifarflow.serving.gateway.monitoring.psi import SegmentedPsi
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


@dataclasses.dataclass(frozen=True)
class _Comparison:
    """One reference's side of the PSI, computed once per served version.

    Attributes:
        image_features: the image features whose bins match the reference's.
        image_bins: where those features' bins sit in the image window's counts.
        images: their PSI, or None when none matches.
        classes: the predicted-class PSI, or None when the class count differs.
    """

    image_features: tuple[str, ...]
    image_bins: np.ndarray
    images: SegmentedPsi | None
    classes: SegmentedPsi | None


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
        self._compared: tuple[TrainingReference, _Comparison] | None = None

    def reference_counts(self, reference: TrainingReference) -> dict[str, list[int]]:
        """Each feature's reference histogram, by feature name."""
        data = reference.data
        counts = {name: getattr(data, name).histogram.counts for name in features.IMAGE_FEATURES}
        for name, channel in zip(features.PIXEL_FEATURES, CHANNELS, strict=True):
            counts[name] = data.channels[channel].histogram.counts
        counts[features.CLASS_FEATURE] = reference.scores.predicted_class_counts
        return counts

    def psi(self, reference: TrainingReference) -> dict[str, float]:
        """PSI per feature, for the windows that are full (a filling window says nothing yet)."""
        comparison = self._comparison(reference)
        scores: dict[str, float] = {}
        if comparison.images is not None and self.images.filled == self.images.size:
            values = comparison.images(self.images.counts[comparison.image_bins])
            scores.update(zip(comparison.image_features, values.tolist(), strict=True))
        if comparison.classes is not None and self.classes.filled == self.classes.size:
            scores[features.CLASS_FEATURE] = float(comparison.classes(self.classes.counts)[0])
        return scores

    def _comparison(self, reference: TrainingReference) -> _Comparison:
        if self._compared is not None and self._compared[0] is reference:
            return self._compared[1]
        expected = self.reference_counts(reference)
        matching = [
            (name, segment)
            for name, segment in features.LAYOUT.items()
            if len(expected[name]) == segment.bins
        ]
        bins = [np.arange(segment.start, segment.stop) for _, segment in matching]
        class_counts = expected[features.CLASS_FEATURE]
        comparison = _Comparison(
            image_features=tuple(name for name, _ in matching),
            image_bins=np.concatenate(bins) if bins else np.zeros(0, dtype=np.int64),
            images=SegmentedPsi([np.asarray(expected[name]) for name, _ in matching])
            if matching
            else None,
            classes=SegmentedPsi([np.asarray(class_counts)])
            if len(class_counts) == self.classes.bins
            else None,
        )
        self._compared = (reference, comparison)
        return comparison

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
        self._queued: collections.deque[Image.Image] = collections.deque()
        self._answers: collections.deque[tuple[int, bool | None]] = collections.deque()
        self._measuring = threading.Lock()
        # Labelled children resolved once: a labels() lookup per answer costs more than the update.
        self._verdict_counters = {
            verdict: self.metrics.ood_answers.labels(label)
            for verdict, label in ((None, "unknown"), (True, "in"), (False, "out"))
        }
        self._drift_gauges = {
            feature: self.metrics.drift.labels(feature)
            for feature in (*features.LAYOUT, features.CLASS_FEATURE)
        }

    def observe_images(self, thumbnails: Sequence[Image.Image]) -> None:
        """Queues images (`images.prepare_image`'s thumbnails, any mode) for the windows.

        The call that fills the queue to `FLUSH_IMAGES` measures the queue (`flush`).
        """
        self._queued.extend(thumbnails)  # deque appends are atomic: no lock on the request path
        if len(self._queued) >= FLUSH_IMAGES:
            self.flush()

    def flush(self, update: bool = False) -> None:
        """Puts what is queued into the windows and counters; maybe updates the gauges.

        The images are turned into RGB pixels and measured as one batch; the
        answers' predicted classes and verdicts are counted.

        Args:
            update: update the gauges even if fewer than `update_every`
                observations came in since the last time (a scrape).

        A call while another is measuring returns at once: that one, or the
        next, takes what is queued.
        """
        if not self._measuring.acquire(blocking=False):
            return
        try:
            images = []
            while self._queued:
                images.append(self._queued.popleft())
            answers = []
            while self._answers:
                answers.append(self._answers.popleft())
            by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
            for image in images:
                pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
                by_shape.setdefault(pixels.shape, []).append(pixels)
            measured = [features.images_features(np.stack(same)) for same in by_shape.values()]
            with self._lock:
                for vectors in measured:
                    for vector in vectors:
                        self.windows.images.add(vector)
                self._count_answers(answers)
                self._since_update += len(images) + len(answers)
                if update or self._since_update >= self.config.update_every:
                    self._since_update = 0
                    self.update_gauges()
        finally:
            self._measuring.release()

    async def judge(
        self, version: int, probabilities: np.ndarray, logits: np.ndarray | None
    ) -> list[OodVerdict]:
        """The verdict on each answer row; queues the predicted classes and verdicts for the windows.

        Args:
            version: the version that answered.
            probabilities: `[n, classes]`.
            logits: `[n, classes]`, the served (temperature-scaled) logits; None when
                the backend sent none (then only max-softmax can be scored).
        """
        reference = await self.references.get(version)
        if reference is not self._reference:
            self._serve_reference(reference)
        name = self.config.ood_score
        # Plain Python per row: an answer has a few rows of 20 numbers, where
        # NumPy's per-call cost would be most of the work.
        probability_rows = probabilities.tolist()
        if name == ood_scores.MAX_SOFTMAX or logits is None:
            name = ood_scores.MAX_SOFTMAX
            values = [max(row) for row in probability_rows]
        else:
            values = [ood_scores.row_score(name, row) for row in logits.tolist()]
        threshold = reference.scores.scores[name].threshold if reference else None
        if threshold is None:
            flags: list[bool | None] = [None] * len(values)
        else:
            flags = [ood_scores.row_passes(name, value, threshold) for value in values]
        # Counted into the windows and counters at the next flush, with the images.
        classes = [row.index(max(row)) for row in probability_rows]
        self._answers.extend(zip(classes, flags, strict=True))
        if len(self._answers) >= 2 * FLUSH_IMAGES:  # never left to pile up, images or not
            self.flush()
        return [
            OodVerdict(name, value, threshold, flag)
            for value, flag in zip(values, flags, strict=True)
        ]

    def _serve_reference(self, reference: TrainingReference | None) -> None:
        """The served version's reference changed: the drift is compared with the new one."""
        with self._lock:
            self._reference = reference
            if reference is None:  # nothing to compare with: no stale drift either
                for gauge in self._drift_gauges.values():
                    gauge.set(0.0)

    def _count_answers(self, answers: list[tuple[int, bool | None]]) -> None:
        """Under the lock: judged answers (predicted class, verdict) into the windows and counters."""
        classes, ood = self.windows.classes, self.windows.ood
        verdicts: collections.Counter[bool | None] = collections.Counter()
        for class_id, flag in answers:
            if class_id < classes.bins:
                classes.add(class_id)
            if flag is not None:
                ood.add(0 if flag else 1)
            verdicts[flag] += 1
        for flag, count in verdicts.items():
            self._verdict_counters[flag].inc(count)

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
            self._drift_gauges[feature].set(value)
        return scores
