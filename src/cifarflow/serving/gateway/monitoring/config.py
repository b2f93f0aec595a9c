"""What the gateway's monitors run with (`cifarflow serve gateway --monitors ...`)."""

from __future__ import annotations

import dataclasses

from cifarflow import ood_scores
from cifarflow.errors import BadInputError

# Chosen by measurement on the trained full-data ResNet-20 (bench/ood.py, bench/results/ood.json).
DEFAULT_OOD_SCORE = ood_scores.ENERGY
# Images (and answers) in the sliding window; see docs/monitoring.md, "Drift".
DEFAULT_WINDOW = 500
# PSI above which a feature counts as drifted (docs/monitoring.md, bench/results/drift.json).
DEFAULT_DRIFT_THRESHOLD = 0.25


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """The out-of-distribution score per answer and the drift windows.

    Attributes:
        enabled: False turns every monitor off (no OOD field, no window, no gauges).
        store: the model store (folder or s3://bucket/prefix) whose
            `<model>/<version>/reference.json` holds each version's training
            reference; None: answers carry the OOD score without a flag, and
            drift is not compared.
        ood_score: `energy` or `max_softmax` (cifarflow.ood_scores).
        window: images and answers in each sliding window.
        update_every: the gauges are recomputed at the first flush after this many
            observations (images and answers).
        drift_threshold: the PSI the docs and the alert call drift.
    """

    enabled: bool = True
    store: str | None = None
    ood_score: str = DEFAULT_OOD_SCORE
    window: int = DEFAULT_WINDOW
    update_every: int = 20
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD

    def __post_init__(self) -> None:
        if self.ood_score not in ood_scores.SCORES:
            raise BadInputError(
                f"--ood-score must be one of {', '.join(ood_scores.SCORES)}, got {self.ood_score!r}"
            )
        if self.window < 1 or self.update_every < 1:
            raise BadInputError("--drift-window and the update interval must be at least 1")
