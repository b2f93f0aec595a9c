"""Classification metrics from labels and predictions (NumPy only).

Conventions: `confusion[i, j]` counts images of true class `i` predicted as
`j`. A class that is never predicted has precision 0, one that never occurs
has recall 0 (and both count in the macro average, so a model cannot hide a
class it ignores).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cifarflow.calibration import (
    expected_calibration_error,
    negative_log_likelihood,
)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(
        matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1
    )
    return matrix


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(
        true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0
    )
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    if len(labels) == 0:
        return 0.0
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def classification_report(
    labels: np.ndarray,
    logits: np.ndarray,
    probabilities: np.ndarray,
    uncalibrated_probabilities: np.ndarray,
    class_names: Sequence[str],
    ece_bins: int = 15,
) -> dict[str, Any]:
    """Every metric of one split, JSON-serialisable.

    Args:
        labels: [N] true class ids.
        logits: [N, C] the served (temperature-scaled) logits.
        probabilities: [N, C] the served probabilities.
        uncalibrated_probabilities: [N, C] softmax of the unscaled logits.
        class_names: the C class names.
        ece_bins: bins of the expected calibration error.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, len(class_names))
    scores = per_class_scores(matrix)
    return {
        "count": int(len(labels)),
        "accuracy": float((predictions == labels).mean()) if len(labels) else 0.0,
        "top5_accuracy": top_k_accuracy(probabilities, labels, 5),
        "macro_precision": float(scores["precision"].mean()),
        "macro_recall": float(scores["recall"].mean()),
        "macro_f1": float(scores["f1"].mean()),
        "loss": negative_log_likelihood(logits, labels),
        "ece": expected_calibration_error(probabilities, labels, ece_bins),
        "ece_uncalibrated": expected_calibration_error(
            uncalibrated_probabilities, labels, ece_bins
        ),
        "per_class": [
            {
                "class": name,
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f1": float(scores["f1"][i]),
                "support": int(scores["support"][i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": matrix.tolist(),
    }
