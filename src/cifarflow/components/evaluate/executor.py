"""The evaluate step: a trained model and the data in, metrics and a report out.

`evaluate(model_dir, data_dir, out_dir)` scores the exported SavedModel's
`predict_pixels` signature on the val and the official test split.

The output folder becomes a *candidate*: if it is not the model folder
itself, the model's files are copied in first, so one folder holds the model
and its evaluation (what select_best ranks and publish copies verbatim).
Files it adds:

    metrics.json            test metrics at the top level (accuracy, top5_accuracy,
                            macro_f1, confusion_matrix, ...), flat val_* keys for
                            selection, every split under "splits"; written last
    test_predictions.npy    int64 [N] test-set class ids, in test-set order: the
                            paired predictions the McNemar gate compares
    test_labels.npy         int64 [N] the test labels they are scored against
    evaluation.html         per-class tables and confusion heat-maps
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.atomic_files import write_json_atomic
from cifarflow.components.evaluate.calibration import softmax
from cifarflow.components.evaluate.metrics import classification_report
from cifarflow.components.evaluate.predict import has_saved_model, load_signature, predict_arrays
from cifarflow.data.splits import class_names as dataset_class_names
from cifarflow.data.splits import load_split
from cifarflow.errors import BadInputError, DataAnomalyError

METRICS_FILE = "metrics.json"
TEST_PREDICTIONS_FILE = "test_predictions.npy"
TEST_LABELS_FILE = "test_labels.npy"
REPORT_FILE = "evaluation.html"
TRAIN_SUMMARY_FILE = "train_summary.json"
# Files that are training work state, never part of a candidate.
_NOT_COPIED = {"checkpoint"}


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """How to evaluate.

    Attributes:
        splits: which splits to score; "test" is required for the gate.
        batch_size: images per signature call.
        ece_bins: bins of the expected calibration error.
    """

    splits: tuple[str, ...] = ("val", "test")
    batch_size: int = 500
    ece_bins: int = 15


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    out_dir: str
    metrics: dict[str, Any]


def data_checksum(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of a split's pixels and labels: paired predictions need the same test set."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


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
    """Scores a trained model on val and test and writes a candidate folder.

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
    if "test" not in config.splits:
        raise BadInputError("evaluate needs the test split: the gate compares test-set predictions")
    names = dataset_class_names(data_dir)
    summary_path = model_dir / TRAIN_SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if summary.get("class_names") and summary["class_names"] != names:
        raise DataAnomalyError(f"{model_dir} was trained on other classes than {data_dir} has")
    temperature = float(summary.get("temperature", 1.0))
    if out.resolve() != model_dir.resolve():
        copy_model(model_dir, out)
    (out / METRICS_FILE).unlink(missing_ok=True)  # absent until the new one is complete

    signature = load_signature(model_dir)
    splits: dict[str, dict[str, Any]] = {}
    checksum = ""
    for split_name in config.splits:
        split = load_split(data_dir, split_name)
        labels = np.asarray(split.coarse_labels, dtype=np.int64)
        predictions = predict_arrays(signature, split.images, config.batch_size)
        if predictions.logits.shape[1:] != (len(names),):
            raise DataAnomalyError(
                f"{model_dir} predicts {predictions.logits.shape[1]} classes, the data has {len(names)}"
            )
        # The served logits are divided by T; multiplying back gives the raw ones.
        uncalibrated = softmax(predictions.logits.astype(np.float64) * temperature)
        splits[split_name] = classification_report(
            labels,
            predictions.logits,
            predictions.probabilities,
            uncalibrated,
            names,
            config.ece_bins,
        )
        if split_name == "test":
            checksum = data_checksum(split.images, labels)
            np.save(
                out / TEST_PREDICTIONS_FILE,
                predictions.class_ids.astype(np.int64),
                allow_pickle=False,
            )
            np.save(out / TEST_LABELS_FILE, labels, allow_pickle=False)

    from cifarflow.components.evaluate.report import render_report

    title = (
        f"Evaluation of {summary.get('trial', {}).get('architecture', 'model')} ({model_dir.name})"
    )
    (out / REPORT_FILE).write_text(render_report(splits, names, title, temperature))
    test = splits["test"]
    metrics: dict[str, Any] = {
        "split": "test",
        **{
            k: test[k]
            for k in (
                "accuracy",
                "top5_accuracy",
                "macro_precision",
                "macro_recall",
                "macro_f1",
                "loss",
                "ece",
                "ece_uncalibrated",
            )
        },
        "confusion_matrix": test["confusion_matrix"],
    }
    if "val" in splits:
        metrics.update(
            {
                f"val_{k}": splits["val"][k]
                for k in ("accuracy", "top5_accuracy", "macro_f1", "loss", "ece")
            }
        )
    metrics.update(
        {
            "class_names": names,
            "temperature": temperature,
            "test_count": test["count"],
            "test_data_sha256": checksum,
            "test_predictions_file": TEST_PREDICTIONS_FILE,
            "trial": summary.get("trial", {}),
            "splits": splits,
        }
    )
    write_json_atomic(out / METRICS_FILE, metrics, indent=1)
    return EvaluationResult(out_dir=str(out), metrics=metrics)
