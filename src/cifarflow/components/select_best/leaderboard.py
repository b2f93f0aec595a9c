"""Ranking of evaluated candidates and the Markdown leaderboard."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cifarflow.components.candidate import CandidateMetrics

# Metrics where smaller is better; every other selection metric is maximised.
_LOWER_IS_BETTER = {"val_loss"}
# Tie-breaks after the named metric, in order; then the candidate's position.
_TIE_BREAKS = ("val_accuracy", "val_macro_f1", "val_loss")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One evaluated trial: its position in the input, its folder and its metrics.json."""

    index: int
    path: Path
    metrics: CandidateMetrics

    def value(self, metric: str) -> float:
        return self.metrics.value(metric)


def _oriented(value: float, metric: str) -> float:
    """Maps a metric to "smaller sorts first", with missing values last."""
    if math.isnan(value):
        return math.inf
    return value if metric in _LOWER_IS_BETTER else -value


def rank(candidates: Sequence[Entry], metric: str) -> list[Entry]:
    """Best first by `metric`; ties broken by val accuracy, val macro F1, val loss, then input order."""
    keys = (metric,) + tuple(m for m in _TIE_BREAKS if m != metric)
    return sorted(
        candidates, key=lambda c: tuple(_oriented(c.value(m), m) for m in keys) + (c.index,)
    )


_HYPER_PARAMETERS = (
    "architecture",
    "depth",
    "width",
    "optimizer",
    "learning_rate",
    "batch_size",
    "epochs",
    "fine_label_weight",
    "size_inner",
    "dropout",
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown_leaderboard(ranked: Sequence[Entry], metric: str) -> str:
    """All trials, best first: the selection metric, other metrics and the distinguishing hyper-parameters."""
    trials = [c.metrics.trial for c in ranked]
    # Show only hyper-parameters that differ between trials (all of them for one trial).
    varying = [k for k in _HYPER_PARAMETERS if len({repr(t.get(k)) for t in trials}) > 1] or [
        k for k in _HYPER_PARAMETERS[:5] if any(k in t for t in trials)
    ]
    columns = ["rank", "candidate", metric] + [
        m
        for m in (
            "val_accuracy",
            "val_macro_f1",
            "val_loss",
            "gate_accuracy",
            "accuracy",
            "macro_f1",
            "ece",
        )
        if m != metric
    ]
    header = columns + varying
    lines = [
        f"# Leaderboard ({len(ranked)} trials, ranked by `{metric}`)",
        "",
        "Ranked on val. `gate_accuracy` is on the gate split, the one the champion gate compares on. "
        "Test columns (`accuracy`, `macro_f1`, `ece`) are on the official test set: reported, never used to decide.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for position, (candidate, trial) in enumerate(zip(ranked, trials, strict=True), start=1):
        cells = [str(position), f"{candidate.index}"] + [
            _fmt(candidate.value(m)) for m in columns[2:]
        ]
        cells += [_fmt(trial.get(k, "")) for k in varying]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
