"""The candidate folder: the contract between train, evaluate, select_best and publish.

One folder carries a trained model and its evaluation from step to step;
select_best copies the winner verbatim and publish copies it into the model
store, so a store version holds the same files. Every step names these files
and reads them through this module, never through another step's code.

```
<candidate>/
    saved_model.pb, variables/, assets/   train: the served SavedModel
    model.keras, model.tflite             train
    history.json, curves.png              train: per-epoch metrics and their plot
    train_summary.json                    train: trial, class names, temperature, ...;
                                          written last: a finished trial
    metrics.json                          evaluate: test metrics at the top level,
                                          val_* for ranking, gate_* for the gate;
                                          written last: a complete candidate
    gate_predictions.npy, gate_labels.npy evaluate: int64 class ids on the gate split,
                                          in its order: what the McNemar gate pairs
    test_predictions.npy, test_labels.npy evaluate: the same on the official test
                                          set: reported, never used to decide
    evaluation.html                       evaluate: per-class tables, heat-maps
    reference.json                        evaluate: the training reference the monitors
                                          compare live traffic with (data side from
                                          train, OOD scores from val); see
                                          cifarflow.training_reference
```
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from cifarflow.atomic_files import write_json_atomic
from cifarflow.errors import BadInputError
from cifarflow.training_reference import TrainingReference

SAVED_MODEL_FILE = "saved_model.pb"
TRAIN_SUMMARY_FILE = "train_summary.json"
HISTORY_FILE = "history.json"
KERAS_FILE = "model.keras"
CURVES_FILE = "curves.png"
METRICS_FILE = "metrics.json"
REPORT_FILE = "evaluation.html"
REFERENCE_FILE = "reference.json"

GATE_SPLIT = "gate"  # the split the champion gate compares on
TEST_SPLIT = "test"  # the official test set: reported only

# Validation metrics a candidate can be ranked by (flat `val_*` keys of metrics.json).
SELECTION_METRICS = ("val_accuracy", "val_top5_accuracy", "val_macro_f1", "val_loss")
# Test metrics at the top level of metrics.json (with _REQUIRED, what every reader may rely on).
TEST_METRICS = (
    "accuracy",
    "top5_accuracy",
    "macro_f1",
    "macro_precision",
    "macro_recall",
    "loss",
    "ece",
    "ece_uncalibrated",
)
_REQUIRED = ("accuracy", "top5_accuracy", "macro_f1", "confusion_matrix", "class_names")
# Per-split metrics copied to flat `<split>_<name>` keys.
VAL_METRICS = ("accuracy", "top5_accuracy", "macro_f1", "loss", "ece")
GATE_METRICS = ("accuracy", "macro_f1")


def predictions_file(split: str) -> str:
    """`<split>_predictions.npy`: int64 [N] predicted class ids in the split's order."""
    return f"{split}_predictions.npy"


def labels_file(split: str) -> str:
    """`<split>_labels.npy`: int64 [N] true class ids in the split's order."""
    return f"{split}_labels.npy"


@dataclasses.dataclass(frozen=True)
class TrainSummary:
    """What evaluate needs from `train_summary.json` (train writes the whole record)."""

    trial: dict[str, Any]
    class_names: list[str]
    temperature: float

    @classmethod
    def read(cls, folder: str | os.PathLike) -> TrainSummary | None:
        """The folder's summary, or None when it has none (a model from elsewhere)."""
        values = _read_json(Path(folder) / TRAIN_SUMMARY_FILE)
        if values is None:
            return None
        return cls(
            trial=dict(values.get("trial") or {}),
            class_names=list(values.get("class_names") or []),
            temperature=float(values.get("temperature", 1.0)),
        )


def write_train_summary(folder: str | os.PathLike, summary: Mapping[str, Any]) -> None:
    """Writes `train_summary.json` atomically: its presence marks a finished trial."""
    write_json_atomic(Path(folder) / TRAIN_SUMMARY_FILE, dict(summary), indent=1)


@dataclasses.dataclass(frozen=True)
class CandidateMetrics:
    """`metrics.json`: test metrics at the top level, flat val_*/gate_* keys, every split.

    Attributes:
        test: the official test set's metrics (`accuracy`, `top5_accuracy`,
            `macro_f1`, ...), NaN where absent.
        confusion_matrix: test confusion matrix, rows: true class.
        class_names: the model's classes in label order.
        val: `val_<name>` values for ranking.
        gate: `gate_<name>` values; empty when the data had no gate split.
        checksums: sha256 of each paired split (`gate`, `test`) the
            predictions were made on (`cifarflow.data.splits.split_checksum`).
        counts: images per scored split.
        temperature: the served temperature.
        trial: the trial's hyper-parameters.
        splits: every scored split's full report (per class, confusion).
    """

    test: dict[str, float]
    confusion_matrix: list[list[int]]
    class_names: list[str]
    val: dict[str, float] = dataclasses.field(default_factory=dict)
    gate: dict[str, float] = dataclasses.field(default_factory=dict)
    checksums: dict[str, str] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    temperature: float = 1.0
    trial: dict[str, Any] = dataclasses.field(default_factory=dict)
    splits: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.test.get("accuracy", math.nan)

    def value(self, name: str) -> float:
        """A flat metric (`accuracy`, `val_accuracy`, `gate_accuracy`, ...); NaN when absent."""
        for prefix, values in (("val_", self.val), ("gate_", self.gate)):
            if name.startswith(prefix):
                return float(values.get(name[len(prefix) :], math.nan))
        return float(self.test.get(name, math.nan))

    def checksum(self, split: str) -> str:
        """sha256 of the split the recorded predictions were made on; "" when none."""
        return self.checksums.get(split, "")

    def to_json(self) -> dict[str, Any]:
        """The flat layout of metrics.json: accuracy, top5_accuracy, macro_f1, ... (the module docstring)."""
        out: dict[str, Any] = {"split": TEST_SPLIT, **self.test}
        out["confusion_matrix"] = self.confusion_matrix
        out.update({f"val_{k}": v for k, v in self.val.items()})
        out.update({f"gate_{k}": v for k, v in self.gate.items()})
        for split, count in self.counts.items():
            out[f"{split}_count"] = count
        for split, checksum in self.checksums.items():
            out[f"{split}_data_sha256"] = checksum
        out.update(
            {
                "class_names": self.class_names,
                "temperature": self.temperature,
                "trial": self.trial,
                "splits": self.splits,
            }
        )
        return out

    @classmethod
    def from_json(cls, values: Mapping[str, Any], source: str = "metrics.json") -> CandidateMetrics:
        """Parses metrics.json; older files without gate keys parse with an empty `gate`.

        Raises:
            BadInputError: a required key is missing.
        """
        missing = [k for k in _REQUIRED if k not in values]
        if missing:
            raise BadInputError(f"{source} lacks {', '.join(missing)}: not written by evaluate")

        def numbers(prefix: str) -> dict[str, float]:
            return {
                k[len(prefix) :]: float(v)
                for k, v in values.items()
                if k.startswith(prefix) and _is_number(v) and not k.endswith("_count")
            }

        return cls(
            test={k: float(values[k]) for k in TEST_METRICS if _is_number(values.get(k))},
            confusion_matrix=[list(map(int, row)) for row in values["confusion_matrix"]],
            class_names=[str(n) for n in values["class_names"]],
            val=numbers("val_"),
            gate=numbers("gate_"),
            checksums={
                k[: -len("_data_sha256")]: str(v)
                for k, v in values.items()
                if k.endswith("_data_sha256") and v
            },
            counts={
                k[: -len("_count")]: int(v)
                for k, v in values.items()
                if k.endswith("_count") and _is_number(v)
            },
            temperature=float(values.get("temperature", 1.0)),
            trial=dict(values.get("trial") or {}),
            splits=dict(values.get("splits") or {}),
        )

    @classmethod
    def read(cls, path: str | os.PathLike) -> CandidateMetrics:
        """Reads a metrics.json file (or a folder's), one clear line when it is not one."""
        path = Path(path)
        if path.is_dir():
            path = path / METRICS_FILE
        values = _read_json(path)
        if values is None:
            raise BadInputError(f"{path} does not exist: run 'cifarflow evaluate' first")
        return cls.from_json(values, str(path))

    def write(self, folder: str | os.PathLike) -> None:
        """Writes metrics.json atomically; its presence marks a complete candidate."""
        write_json_atomic(Path(folder) / METRICS_FILE, self.to_json(), indent=1)


def write_reference(folder: str | os.PathLike, reference: TrainingReference) -> None:
    """Writes `reference.json` atomically (before metrics.json, which marks completeness)."""
    write_json_atomic(Path(folder) / REFERENCE_FILE, reference.to_json(), indent=1)


def read_reference(folder: str | os.PathLike) -> TrainingReference | None:
    """A candidate's (or store version's) training reference; None when it has none.

    Raises:
        BadInputError: the file is not JSON, or not a reference this version reads.
    """
    path = Path(folder) / REFERENCE_FILE
    values = _read_json(path)
    return None if values is None else TrainingReference.from_json(values, str(path))


@dataclasses.dataclass(frozen=True)
class PairedPredictions:
    """One split's predicted and true class ids, and the checksum of its images."""

    split: str
    predictions: np.ndarray
    labels: np.ndarray
    checksum: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).mean()) if len(self) else math.nan


def write_predictions(
    folder: str | os.PathLike, split: str, predictions: np.ndarray, labels: np.ndarray
) -> None:
    """Writes `<split>_predictions.npy` and `<split>_labels.npy` as int64."""
    folder = Path(folder)
    np.save(folder / predictions_file(split), np.asarray(predictions, np.int64), allow_pickle=False)
    np.save(folder / labels_file(split), np.asarray(labels, np.int64), allow_pickle=False)


def read_predictions(
    folder: str | os.PathLike, split: str, metrics: CandidateMetrics
) -> PairedPredictions | None:
    """A folder's recorded predictions on `split`, or None when it has none."""
    folder = Path(folder)
    predictions, labels = folder / predictions_file(split), folder / labels_file(split)
    if not (predictions.is_file() and labels.is_file() and metrics.checksum(split)):
        return None
    return PairedPredictions(
        split=split,
        predictions=np.load(predictions, allow_pickle=False).astype(np.int64),
        labels=np.load(labels, allow_pickle=False).astype(np.int64),
        checksum=metrics.checksum(split),
    )


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An evaluated model folder: what select_best ranks and publish copies.

    Attributes:
        path: the folder.
        metrics: its metrics.json.
    """

    path: Path
    metrics: CandidateMetrics

    @classmethod
    def open(cls, path: str | os.PathLike) -> Candidate:
        """Opens a folder written by evaluate.

        Raises:
            BadInputError: a file the later steps need is missing (all named).
        """
        folder = Path(path)
        needed = (
            SAVED_MODEL_FILE,
            METRICS_FILE,
            predictions_file(TEST_SPLIT),
            labels_file(TEST_SPLIT),
        )
        missing = [n for n in needed if not (folder / n).is_file()]
        if missing:
            raise BadInputError(
                f"candidate {folder} lacks {', '.join(missing)}: pass folders written by 'cifarflow evaluate'"
            )
        return cls(folder, CandidateMetrics.read(folder))

    def predictions(self, split: str) -> PairedPredictions | None:
        """Recorded predictions on `split` (None: e.g. no gate split in its data)."""
        return read_predictions(self.path, split, self.metrics)


def recorded_number(metrics: Mapping[str, Any] | None, name: str) -> float | None:
    """One flat metric of a metrics.json as a store version records it; None when absent.

    Lenient on purpose: versions published by hand record whatever they were given.
    """
    value = (metrics or {}).get(name)
    return float(value) if _is_number(value) else None


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except ValueError as exc:
        raise BadInputError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise BadInputError(f"{path} holds a {type(values).__name__}, not a JSON object")
    return values
