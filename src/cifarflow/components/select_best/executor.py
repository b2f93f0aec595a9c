"""The select step: evaluated candidates in, the winner and the publish decision out.

`select_best(candidates, out_dir, config)` ranks the candidate folders
(`cifarflow.components.candidate`, written by `evaluate`) by a validation
metric, then gates the winner against the champion in the model store with
McNemar's test on their paired predictions on the *gate* split: images held
out of training, val and temperature fitting, and never the official test
set, which is only reported.

Output folder:

    model/            the winning candidate, copied verbatim: what publish copies
    leaderboard.md    every trial, best first
    selection.json    metric, ranking, and the gate's decision with its statistics
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.atomic_files import write_json_atomic
from cifarflow.components import candidate as contract
from cifarflow.components.select_best import champion as champion_store
from cifarflow.components.select_best.leaderboard import Entry, markdown_leaderboard, rank
from cifarflow.components.select_best.mcnemar import EXACT_BELOW, challenger_wins, mcnemar_test
from cifarflow.defaults import GATE_ALPHA, MODEL_NAME
from cifarflow.errors import BadInputError, DataAnomalyError
from cifarflow.s3 import S3Settings

MODEL_SUBDIR = "model"
LEADERBOARD_FILE = "leaderboard.md"
SELECTION_FILE = "selection.json"
# The winner's numbers in the run-summary Metrics (the KFP UI compares runs by them).
SUMMARY_METRICS = (
    "val_accuracy",
    "val_macro_f1",
    "gate_accuracy",
    "accuracy",
    "top5_accuracy",
    "macro_f1",
    "ece",
)


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """How to pick and gate.

    Attributes:
        metric: the validation metric to rank by (val_loss is minimised).
        store: model store (folder or s3://bucket/prefix); None: no gate, publish.
        model_name: the model's name in the store.
        alpha: significance level of the McNemar gate (two-sided; with
            "challenger ahead" also required, a one-sided test at alpha / 2).
        force: publish even if the challenger does not beat the champion.
        exact_below: discordant-pair count under which the exact binomial test is used.
        data_dir: the preprocessed data; needed only to re-score the champion
            on the gate split when its recorded predictions are missing or
            were made on another gate split.
        s3: S3 endpoint and credentials (default: the S3_* environment).
    """

    metric: str = "val_accuracy"
    store: str | None = None
    model_name: str = MODEL_NAME
    alpha: float = GATE_ALPHA
    force: bool = False
    exact_below: int = EXACT_BELOW
    data_dir: str | None = None
    s3: S3Settings | None = None

    def __post_init__(self) -> None:
        if self.metric not in contract.SELECTION_METRICS:
            raise BadInputError(
                f"--metric must be one of {', '.join(contract.SELECTION_METRICS)}, got {self.metric!r}"
            )
        if not 0.0 < self.alpha < 1.0:
            raise BadInputError(f"--alpha must be in (0, 1), got {self.alpha}")


@dataclasses.dataclass(frozen=True)
class SelectionResult:
    """The winner and the gate's decision (also in `selection.json`).

    Attributes:
        out_dir: the output folder.
        model_dir: the winner's copy, `out_dir/model`.
        winner: the winner's position in the input.
        winner_metrics: its metrics.json.
        trials: how many candidates were ranked.
        publish: the gate's verdict.
        decision: "publish" or "keep_champion".
        record: what selection.json holds.
    """

    out_dir: str
    model_dir: str
    winner: int
    winner_metrics: contract.CandidateMetrics
    trials: int
    publish: bool
    decision: str
    record: dict[str, Any]


def load_candidates(paths: Sequence[str | os.PathLike]) -> list[Entry]:
    """Opens each candidate folder, checking it holds what publish needs."""
    if not paths:
        raise BadInputError("no candidates: pass at least one evaluated model folder")
    entries = []
    for index, path in enumerate(paths):
        candidate = contract.Candidate.open(path)
        entries.append(Entry(index=index, path=candidate.path, metrics=candidate.metrics))
    return entries


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
        DataAnomalyError: the champion has other classes than the winner, or
            the data given is not the winner's gate split.
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

    gate = gate_decision(winner, config)
    record = {
        "metric": config.metric,
        "winner": {
            "index": winner.index,
            "path": str(winner.path),
            config.metric: winner.value(config.metric),
            "trial": winner.metrics.trial,
        },
        "ranking": [
            {"index": c.index, "path": str(c.path), config.metric: c.value(config.metric)}
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
        winner_metrics=winner.metrics,
        trials=len(loaded),
        publish=gate["publish"],
        decision=gate["decision"],
        record=record,
    )


def summary_metrics(result: SelectionResult) -> dict[str, float]:
    """The run-summary numbers: the winner's metrics, trials, publish and the gate's p-value."""
    values = {f"best_{name}": result.winner_metrics.value(name) for name in SUMMARY_METRICS}
    values = {name: value for name, value in values.items() if not math.isnan(value)}
    values["trials"] = float(result.trials)
    values["publish"] = 1.0 if result.publish else 0.0
    mcnemar = result.record["gate"].get("mcnemar")
    if mcnemar:
        values["gate_p_value"] = float(mcnemar["p_value"])
    return values


def best_metadata(result: SelectionResult) -> dict[str, Any]:
    """Metadata of the winning Model artifact."""
    return {
        "candidate": result.winner,
        "trial": result.winner_metrics.trial,
        "publish": result.publish,
    }


def gate_decision(winner: Entry, config: SelectConfig) -> dict[str, Any]:
    """The publish decision: "publish" or "keep_champion", with why and the test's numbers."""
    base: dict[str, Any] = {
        "alpha": config.alpha,
        "forced": config.force,
        "store": config.store,
        "model_name": config.model_name,
        "split": contract.GATE_SPLIT,
    }

    def verdict(publish: bool, reason: str, **extra: Any) -> dict[str, Any]:
        decision = "publish" if publish else "keep_champion"
        return {**base, "decision": decision, "publish": publish, "reason": reason, **extra}

    def refuse(why: str) -> dict[str, Any]:
        # Nothing to compare with: fail closed, unless forced.
        if config.force:
            return verdict(True, f"forced (--force) without a comparison: {why}")
        return verdict(False, why)

    if config.store is None:
        return verdict(True, "no model store given: nothing to compare with")
    champion = champion_store.find_champion(config.store, config.model_name, config.s3)
    if champion is None:
        return verdict(
            True, f"no champion: {config.model_name} has no complete version in the store"
        )
    base["champion"] = {
        "version": champion.version,
        "label": champion.label,
        "location": champion.location,
        "accuracy": champion.metrics.accuracy if champion.metrics else None,
    }
    if champion.class_names != winner.metrics.class_names:
        why = (
            f"champion version {champion.version} has other classes than the winner "
            f"({_first_difference(champion.class_names, winner.metrics.class_names)}): "
            "comparing them means nothing"
        )
        if config.force:
            return refuse(why)
        raise DataAnomalyError(f"{why}; publish under another model name, or use --force")
    challenger = contract.read_predictions(winner.path, contract.GATE_SPLIT, winner.metrics)
    if challenger is None:
        return refuse(
            f"the winner has no {contract.GATE_SPLIT} predictions (its data has no gate split): "
            "run 'cifarflow preprocess' and evaluate again, or use --force"
        )
    champion_predictions, source = _champion_predictions(challenger, champion, config)
    if champion_predictions is None:
        return refuse(source)
    test = mcnemar_test(
        challenger.labels, challenger.predictions, champion_predictions, config.exact_below
    )
    statistics = {
        **dataclasses.asdict(test),
        "discordant": test.discordant,
        "images": len(challenger),
        "challenger_accuracy": challenger.accuracy,
        "champion_accuracy": float((champion_predictions == challenger.labels).mean()),
        "champion_predictions": source,
    }
    summary = (
        f"McNemar {test.method} on the {len(challenger)} gate images: challenger right on "
        f"{test.challenger_only} the champion misses, champion on {test.champion_only}; "
        f"p = {test.p_value:.4g} (alpha {config.alpha})"
    )
    if challenger_wins(test, config.alpha):
        return verdict(True, f"challenger is significantly better. {summary}", mcnemar=statistics)
    if config.force:
        return verdict(
            True,
            f"forced (--force) although not significantly better. {summary}",
            mcnemar=statistics,
        )
    return verdict(False, f"challenger is not significantly better. {summary}", mcnemar=statistics)


def _first_difference(champion: Sequence[str], winner: Sequence[str]) -> str:
    """Where two class lists part, in a few words (the full lists are too long for one line)."""
    if not champion:
        return "the champion records none"
    for label, (old, new) in enumerate(zip(champion, winner, strict=False)):
        if old != new:
            return f"label {label} is {old!r} there, {new!r} here"
    return f"{len(champion)} classes there, {len(winner)} here"


def _champion_predictions(
    challenger: contract.PairedPredictions,
    champion: champion_store.Champion,
    config: SelectConfig,
) -> tuple[np.ndarray | None, str]:
    """(the champion's predictions on the challenger's gate images or None, where from or why not)."""
    recorded = champion.gate
    if (
        recorded is not None
        and recorded.checksum == challenger.checksum
        and len(recorded) == len(challenger)
    ):
        return (
            recorded.predictions,
            f"recorded {recorded.split} predictions of version {champion.version}",
        )
    # Missing, or made on another gate split (new data, seed or fraction): re-score the champion.
    if config.data_dir is None:
        return None, (
            f"champion version {champion.version} has no recorded predictions on this gate split; "
            "pass --data DIR to re-score it there, or --force to publish anyway"
        )
    from cifarflow.components.pixel_predictions import has_saved_model, predict_arrays
    from cifarflow.data.splits import has_split, load_split, split_checksum

    if not has_split(config.data_dir, contract.GATE_SPLIT):
        raise BadInputError(
            f"{config.data_dir} has no gate split: pass the data the winner was evaluated on"
        )
    gate = load_split(config.data_dir, contract.GATE_SPLIT)
    if split_checksum(gate) != challenger.checksum:
        raise DataAnomalyError(
            f"the winning candidate was evaluated on another gate split than {config.data_dir} holds"
        )
    download = champion_store.local_copy(champion)
    try:
        folder = download.name if download else champion.location
        if not has_saved_model(folder):
            return None, (
                f"champion version {champion.version} has no SavedModel to re-score; "
                "use --force to publish anyway"
            )
        predicted = predict_arrays(folder, gate.images)
    finally:
        if download:
            download.cleanup()
    if predicted.logits.shape[1] != len(champion.class_names):
        raise DataAnomalyError(
            f"champion version {champion.version} predicts {predicted.logits.shape[1]} classes "
            f"but names {len(champion.class_names)}"
        )
    return predicted.class_ids, f"champion version {champion.version} re-scored on the gate split"
