"""The evaluate step: a trained model and the data in, metrics and a report out.

`evaluate(model_dir, data_dir, out_dir)` scores the exported SavedModel's
`predict_pixels` signature on the val, gate and official test splits.

The output folder becomes a *candidate* (`cifarflow.components.candidate`):
if it is not the model folder itself, the model's files are copied in first,
so one folder holds the model and its evaluation. Files it adds:

    metrics.json            test metrics at the top level (accuracy, top5_accuracy,
                            macro_f1, confusion_matrix, ...), flat val_* keys for
                            ranking, gate_* keys, every split under "splits"; written last
    gate_predictions.npy    int64 [N] gate-split class ids, in its order: the
    gate_labels.npy         paired predictions the McNemar gate compares
    test_predictions.npy    the same on the official test set, which is only
    test_labels.npy         reported
    evaluation.html         per-class tables and confusion heat-maps
    reference.json          the training reference: pixel and image statistics of
                            the train split, class prior, and the val distribution
                            of the energy and max-softmax OOD scores with their
                            95 %-pass thresholds (cifarflow.training_reference)

A dataset preprocessed before the gate split existed has no `gate` split: the
candidate then has no gate predictions, and select_best cannot gate it
against a champion (it keeps the champion unless forced).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.calibration import softmax
from cifarflow.components import candidate as contract
from cifarflow.components.evaluate.metrics import classification_report
from cifarflow.components.pixel_predictions import has_saved_model, load_signature, predict_arrays
from cifarflow.data.splits import class_names as dataset_class_names
from cifarflow.data.splits import has_split, load_split, split_checksum
from cifarflow.errors import BadInputError, DataAnomalyError
from cifarflow.training_reference import (
    TrainingReference,
    data_reference,
    score_reference,
    training_reference,
)

# Kept for callers of the step (the KFP component, bench): the names live in the contract.
METRICS_FILE = contract.METRICS_FILE
REPORT_FILE = contract.REPORT_FILE
# Files that are training work state, never part of a candidate.
_NOT_COPIED = {"checkpoint"}
# Splits whose predictions are saved for pairing: the gate's, and test's for reporting.
_PAIRED = (contract.GATE_SPLIT, contract.TEST_SPLIT)
# The training reference: data from what the model learned from, scores on held-out val.
_DATA_REFERENCE_SPLIT = "train"
_SCORE_REFERENCE_SPLIT = "val"
# Numbers logged to the KFP Metrics artifact (the UI draws these).
LOGGED_METRICS = (
    "accuracy",
    "top5_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "ece",
    "ece_uncalibrated",
    "val_accuracy",
    "val_top5_accuracy",
    "val_macro_f1",
    "val_loss",
    "gate_accuracy",
    "gate_macro_f1",
)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """How to evaluate.

    Attributes:
        splits: which splits to score; "test" is required (the top-level
            metrics), "gate" is skipped when the data has no gate split.
        batch_size: images per signature call.
        ece_bins: bins of the expected calibration error.
    """

    splits: tuple[str, ...] = ("val", contract.GATE_SPLIT, contract.TEST_SPLIT)
    batch_size: int = 500
    ece_bins: int = 15


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    out_dir: str
    metrics: contract.CandidateMetrics


def copy_model(model_dir: Path, out_dir: Path) -> None:
    """Copies a model folder's files into `out_dir` (skipping training state)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry in model_dir.iterdir():
        if entry.name in _NOT_COPIED or entry.name.startswith("."):
            continue
        target = out_dir / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target)


def evaluate(
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: EvaluateConfig = EvaluateConfig(),
) -> EvaluationResult:
    """Scores a trained model on val, gate and test and writes a candidate folder.

    Args:
        model_dir: a `cifarflow train` output folder (SavedModel inside).
        data_dir: a preprocessed dataset.
        out_dir: where the candidate goes; may be `model_dir` itself.
        config: splits, batch size and ECE bins.

    Returns:
        The metrics also written to `out_dir/metrics.json`.

    Raises:
        BadInputError: no SavedModel in `model_dir`, or no such split.
        DataAnomalyError: the model's classes differ from the dataset's.
    """
    model_dir, out = Path(model_dir), Path(out_dir)
    if not has_saved_model(model_dir):
        raise BadInputError(
            f"{model_dir} has no saved_model.pb; pass the output folder of 'cifarflow train'"
        )
    if contract.TEST_SPLIT not in config.splits:
        raise BadInputError("evaluate needs the test split: its metrics are the reported ones")
    names = dataset_class_names(data_dir)
    summary = contract.TrainSummary.read(model_dir) or contract.TrainSummary({}, [], 1.0)
    if summary.class_names and summary.class_names != names:
        raise DataAnomalyError(f"{model_dir} was trained on other classes than {data_dir} has")
    if out.resolve() != model_dir.resolve():
        copy_model(model_dir, out)
    (out / contract.METRICS_FILE).unlink(missing_ok=True)  # absent until the new one is complete
    (out / contract.REFERENCE_FILE).unlink(missing_ok=True)  # never another data set's reference
    for split_name in _PAIRED:  # never leave another data set's predictions behind
        (out / contract.predictions_file(split_name)).unlink(missing_ok=True)
        (out / contract.labels_file(split_name)).unlink(missing_ok=True)

    signature = load_signature(model_dir)
    reports: dict[str, dict[str, Any]] = {}
    checksums: dict[str, str] = {}
    val_logits: np.ndarray | None = None
    val_checksum = ""
    for split_name in config.splits:
        if split_name == contract.GATE_SPLIT and not has_split(data_dir, split_name):
            continue  # data preprocessed before the gate split: no gate predictions
        split = load_split(data_dir, split_name)
        labels = np.asarray(split.coarse_labels, dtype=np.int64)
        predictions = predict_arrays(signature, split.images, config.batch_size)
        if predictions.logits.shape[1:] != (len(names),):
            raise DataAnomalyError(
                f"{model_dir} predicts {predictions.logits.shape[1]} classes, the data has {len(names)}"
            )
        # The served logits are divided by T; multiplying back gives the raw ones.
        uncalibrated = softmax(predictions.logits.astype(np.float64) * summary.temperature)
        reports[split_name] = classification_report(
            labels,
            predictions.logits,
            predictions.probabilities,
            uncalibrated,
            names,
            config.ece_bins,
        )
        if split_name in _PAIRED:
            checksums[split_name] = split_checksum(split)
            contract.write_predictions(out, split_name, predictions.class_ids, labels)
        if split_name == _SCORE_REFERENCE_SPLIT:
            val_logits, val_checksum = predictions.logits, split_checksum(split)

    from cifarflow.components.evaluate.report import render_report

    title = f"Evaluation of {summary.trial.get('architecture', 'model')} ({model_dir.name})"
    (out / contract.REPORT_FILE).write_text(
        render_report(reports, names, title, summary.temperature)
    )
    # No reference without images on both sides (a dataset with an empty val split).
    if val_logits is not None and len(val_logits) and has_split(data_dir, _DATA_REFERENCE_SPLIT):
        reference = build_reference(data_dir, names, val_logits, summary.temperature, val_checksum)
        contract.write_reference(out, reference)
    metrics = candidate_metrics(reports, names, checksums, summary)
    metrics.write(out)
    return EvaluationResult(out_dir=str(out), metrics=metrics)


def build_reference(
    data_dir: str | os.PathLike,
    class_names: list[str],
    val_logits: np.ndarray,
    temperature: float,
    val_sha256: str,
) -> TrainingReference:
    """The training reference: data side from the train split, OOD scores from val's logits."""
    train = load_split(data_dir, _DATA_REFERENCE_SPLIT)
    data = data_reference(
        train.images,
        train.coarse_labels,
        len(class_names),
        split=_DATA_REFERENCE_SPLIT,
        data_sha256=split_checksum(train),
    )
    scores = score_reference(
        val_logits, temperature, split=_SCORE_REFERENCE_SPLIT, data_sha256=val_sha256
    )
    return training_reference(class_names, data, scores)


def candidate_metrics(
    reports: Mapping[str, dict[str, Any]],
    class_names: list[str],
    checksums: Mapping[str, str],
    summary: contract.TrainSummary,
) -> contract.CandidateMetrics:
    """The metrics.json record from each split's `classification_report`."""
    test = reports[contract.TEST_SPLIT]

    def pick(split: str, names: tuple[str, ...]) -> dict[str, float]:
        return {k: reports[split][k] for k in names} if split in reports else {}

    return contract.CandidateMetrics(
        test=pick(contract.TEST_SPLIT, contract.TEST_METRICS),
        confusion_matrix=test["confusion_matrix"],
        class_names=list(class_names),
        val=pick("val", contract.VAL_METRICS),
        gate=pick(contract.GATE_SPLIT, contract.GATE_METRICS),
        checksums=dict(checksums),
        counts={split: report["count"] for split, report in reports.items()},
        temperature=summary.temperature,
        trial=summary.trial,
        splits=dict(reports),
    )


def logged_metrics(metrics: contract.CandidateMetrics) -> dict[str, float]:
    """The numbers the KFP component logs to its Metrics artifact (those present)."""
    values = {name: metrics.value(name) for name in LOGGED_METRICS}
    return {name: value for name, value in values.items() if not np.isnan(value)}


def candidate_metadata(metrics: contract.CandidateMetrics) -> dict[str, Any]:
    """Metadata of the KFP candidate artifact: what select_best's summary reads first."""
    metadata: dict[str, Any] = {
        "accuracy": metrics.accuracy,
        "val_accuracy": metrics.value("val_accuracy"),
        "trial": metrics.trial,
    }
    if metrics.gate:
        metadata["gate_accuracy"] = metrics.value("gate_accuracy")
    return {k: v for k, v in metadata.items() if not (isinstance(v, float) and np.isnan(v))}
