"""The select step: evaluated candidates in, the winner and the publish decision out.

`select_best(candidates, out_dir, config)` ranks the candidate folders (each
written by `evaluate`: model + metrics.json + test_predictions.npy +
test_labels.npy) by a
validation metric, then gates the winner against the champion in the model
store with McNemar's test on their paired test-set predictions.

Output folder:

    model/            the winning candidate, copied verbatim: what publish copies
    leaderboard.md    every trial, best first
    selection.json    metric, ranking, and the gate's decision with its statistics
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.atomic_files import write_json_atomic
from cifarflow.components.select_best import champion as champion_store
from cifarflow.components.select_best.leaderboard import Candidate, markdown_leaderboard, rank
from cifarflow.components.select_best.mcnemar import EXACT_BELOW, challenger_wins, mcnemar_test
from cifarflow.components.train.config import SELECTION_METRICS
from cifarflow.errors import BadInputError, DataAnomalyError
from cifarflow.s3 import S3Settings

MODEL_SUBDIR = "model"
LEADERBOARD_FILE = "leaderboard.md"
SELECTION_FILE = "selection.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.npy"
LABELS_FILE = "test_labels.npy"


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """How to pick and gate.

    Attributes:
        metric: the validation metric to rank by (val_loss is minimised).
        store: model store (folder or s3://bucket/prefix); None: no gate, publish.
        model_name: the model's name in the store.
        alpha: significance level of the McNemar gate.
        force: publish even if the challenger does not beat the champion.
        exact_below: discordant-pair count under which the exact binomial test is used.
        data_dir: the preprocessed data; only needed to run the champion on the
            test set when its recorded predictions are missing or stale.
        s3: S3 endpoint and credentials (default: the S3_* environment).
    """

    metric: str = "val_accuracy"
    store: str | None = None
    model_name: str = "cifarflow"
    alpha: float = 0.05
    force: bool = False
    exact_below: int = EXACT_BELOW
    data_dir: str | None = None
    s3: S3Settings | None = None

    def __post_init__(self) -> None:
        if self.metric not in SELECTION_METRICS:
            raise BadInputError(
                f"--metric must be one of {', '.join(SELECTION_METRICS)}, got {self.metric!r}"
            )
        if not 0.0 < self.alpha < 1.0:
            raise BadInputError(f"--alpha must be in (0, 1), got {self.alpha}")


@dataclasses.dataclass(frozen=True)
class SelectionResult:
    """The winner and the gate's decision (also in `selection.json`)."""

    out_dir: str
    model_dir: str
    winner: int
    publish: bool
    decision: str
    record: dict[str, Any]


def load_candidates(paths: Sequence[str | os.PathLike]) -> list[Candidate]:
    """Reads each candidate folder's metrics.json, checking it holds what publish needs."""
    if not paths:
        raise BadInputError("no candidates: pass at least one evaluated model folder")
    candidates = []
    for index, path in enumerate(paths):
        folder = Path(path)
        missing = [
            n
            for n in ("saved_model.pb", METRICS_FILE, PREDICTIONS_FILE, LABELS_FILE)
            if not (folder / n).is_file()
        ]
        if missing:
            raise BadInputError(
                f"candidate {folder} lacks {', '.join(missing)}: pass folders written by 'cifarflow evaluate'"
            )
        candidates.append(
            Candidate(
                index=index,
                path=str(folder),
                metrics=json.loads((folder / METRICS_FILE).read_text()),
            )
        )
    return candidates


def select_best(
    candidates: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: SelectConfig = SelectConfig(),
) -> SelectionResult:
    """Ranks the candidates, gates the best against the store's champion, writes the outputs.

    Args:
        candidates: folders written by `evaluate` (model + evaluation).
        out_dir: where `model/`, `leaderboard.md` and `selection.json` go.
        config: metric, store and gate settings.

    Raises:
        BadInputError: a candidate is incomplete, or the metric is unknown.
        RemoteError: the s3:// store cannot be read.
    """
    loaded = load_candidates(candidates)
    ranked = rank(loaded, config.metric)
    winner = ranked[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_out = out / MODEL_SUBDIR
    if model_out.exists():
        shutil.rmtree(model_out)
    shutil.copytree(winner.path, model_out)

    gate = _gate(winner, config)
    record = {
        "metric": config.metric,
        "winner": {
            "index": winner.index,
            "path": winner.path,
            config.metric: winner.value(config.metric),
            "trial": winner.metrics.get("trial", {}),
        },
        "ranking": [
            {"index": c.index, "path": c.path, config.metric: c.value(config.metric)}
            for c in ranked
        ],
        "gate": gate,
        "publish": gate["publish"],
    }
    (out / LEADERBOARD_FILE).write_text(markdown_leaderboard(ranked, config.metric))
    write_json_atomic(out / SELECTION_FILE, record, indent=1)
    return SelectionResult(
        out_dir=str(out),
        model_dir=str(model_out),
        winner=winner.index,
        publish=gate["publish"],
        decision=gate["decision"],
        record=record,
    )


def _gate(winner: Candidate, config: SelectConfig) -> dict[str, Any]:
    """The publish decision: "publish" or "keep_champion", with why and the test's numbers."""
    base = {
        "alpha": config.alpha,
        "forced": config.force,
        "store": config.store,
        "model_name": config.model_name,
    }
    if config.store is None:
        return {
            **base,
            "decision": "publish",
            "publish": True,
            "reason": "no model store given: nothing to compare with",
        }
    champion = champion_store.find_champion(config.store, config.model_name, config.s3)
    if champion is None:
        return {
            **base,
            "decision": "publish",
            "publish": True,
            "reason": f"no champion: {config.model_name} has no complete version in the store",
        }
    base["champion"] = {
        "version": champion.version,
        "label": champion.label,
        "location": champion.location,
        "accuracy": champion.metrics.get("accuracy"),
    }
    labels, champion_predictions, source = _paired_predictions(winner, champion, config)
    if champion_predictions is None:
        decision = "publish" if config.force else "keep_champion"
        return {**base, "decision": decision, "publish": config.force, "reason": source}
    challenger_predictions = np.load(Path(winner.path) / PREDICTIONS_FILE, allow_pickle=False)
    test = mcnemar_test(labels, challenger_predictions, champion_predictions, config.exact_below)
    wins = challenger_wins(test, config.alpha)
    statistics = {
        **dataclasses.asdict(test),
        "discordant": test.discordant,
        "challenger_accuracy": float((challenger_predictions == labels).mean()),
        "champion_accuracy": float((champion_predictions == labels).mean()),
        "champion_predictions": source,
    }
    verdict = (
        f"McNemar {test.method}: challenger right on {test.challenger_only} images the champion misses, "
        f"champion on {test.champion_only}; p = {test.p_value:.4g} (alpha {config.alpha})"
    )
    if wins:
        return {
            **base,
            "decision": "publish",
            "publish": True,
            "reason": f"challenger is significantly better. {verdict}",
            "mcnemar": statistics,
        }
    if config.force:
        return {
            **base,
            "decision": "publish",
            "publish": True,
            "reason": f"forced (--force) although not significantly better. {verdict}",
            "mcnemar": statistics,
        }
    return {
        **base,
        "decision": "keep_champion",
        "publish": False,
        "reason": f"challenger is not significantly better. {verdict}",
        "mcnemar": statistics,
    }


def _paired_predictions(
    winner: Candidate, champion: champion_store.Champion, config: SelectConfig
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(test labels, champion's test predictions or None, where they came from or why they are missing)."""
    labels = np.load(Path(winner.path) / LABELS_FILE, allow_pickle=False).astype(np.int64)
    checksum = winner.metrics.get("test_data_sha256", "")
    recorded = champion.test_predictions
    if (
        recorded is not None
        and checksum
        and champion.metrics.get("test_data_sha256") == checksum
        and len(recorded) == len(labels)
    ):
        return (
            labels,
            np.asarray(recorded, dtype=np.int64),
            f"recorded {PREDICTIONS_FILE} of version {champion.version}",
        )
    # Recorded predictions are missing or belong to other data: run the champion itself.
    if config.data_dir is None:
        return (
            labels,
            None,
            (
                f"champion version {champion.version} has no recorded predictions on this test set; "
                "pass --data DIR to run it on the test set, or --force to publish anyway"
            ),
        )
    from cifarflow.components.evaluate.executor import data_checksum
    from cifarflow.components.evaluate.predict import has_saved_model, predict_arrays
    from cifarflow.data.splits import load_split

    test = load_split(config.data_dir, "test")
    if data_checksum(test.images, test.coarse_labels) != checksum:
        raise DataAnomalyError(
            f"the winning candidate was evaluated on another test set than {config.data_dir} holds"
        )
    download = champion_store.local_copy(champion)
    try:
        folder = download.name if download else champion.location
        if not has_saved_model(folder):
            return (
                labels,
                None,
                f"champion version {champion.version} has no SavedModel to compare with; use --force to publish anyway",
            )
        predicted = predict_arrays(folder, test.images).class_ids
    finally:
        if download:
            download.cleanup()
    return labels, predicted, f"champion version {champion.version} re-run on the test set"
