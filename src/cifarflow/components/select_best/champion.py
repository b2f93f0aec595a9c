"""Reads the deployed champion from the model store (local folder or s3://).

The champion is the version the `stable` label names, when the store has
one (that is what `cifarflow serve model --label stable` and TensorFlow
Serving's version_labels serve), else the newest complete version. The store
itself (layout, completeness, labels) is `cifarflow.serving.store`'s.

A version published from a select_best candidate also holds `metrics.json`
and `test_predictions.npy` (the paired predictions the gate needs). When they
are missing, or were made on another test set, the champion's SavedModel is
downloaded and run on the current test set instead.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.s3 import S3Settings, is_s3_uri
from cifarflow.serving.store import ModelStore, check_model_name, open_store

PREDICTIONS_FILE = "test_predictions.npy"
METRICS_FILE = "metrics.json"
CHAMPION_LABEL = "stable"


@dataclasses.dataclass(frozen=True)
class Champion:
    """The deployed version of a model.

    Attributes:
        store: the store it lives in.
        model: its model name.
        version: its integer version.
        label: the label that named it, or None when it is simply the newest.
        info: its cifarflow.json.
        metrics: its metrics.json, or {} when it has none.
        test_predictions: its recorded test-set class ids, or None.
    """

    store: ModelStore = dataclasses.field(repr=False)
    model: str
    version: int
    label: str | None
    info: dict[str, Any]
    metrics: dict[str, Any]
    test_predictions: np.ndarray | None

    @property
    def location(self) -> str:
        """The version's folder path or s3:// URI."""
        return f"{self.store.uri}/{self.model}/{self.version}"


def find_champion(store: str, model_name: str, s3: S3Settings | None = None) -> Champion | None:
    """The deployed version, or None when the model has no complete version.

    Args:
        store: a local folder or `s3://bucket/prefix`.
        model_name: the model's folder in the store.
        s3: endpoint and credentials (default: from the S3_* environment).
    """
    check_model_name(model_name)
    model_store = open_store(store, s3)
    versions = model_store.versions(model_name)
    if not versions:
        return None
    labelled = model_store.labels(model_name).get(CHAMPION_LABEL)
    label = CHAMPION_LABEL if labelled in versions else None
    version = labelled if label else versions[-1]

    def read(name: str) -> bytes | None:
        return model_store.backend.read_bytes(f"{model_name}/{version}/{name}")

    metrics = read(METRICS_FILE)
    predictions = read(PREDICTIONS_FILE)
    return Champion(
        store=model_store,
        model=model_name,
        version=version,
        label=label,
        info=model_store.manifest(model_name, version),
        metrics=json.loads(metrics) if metrics else {},
        test_predictions=np.load(io.BytesIO(predictions), allow_pickle=False)
        if predictions
        else None,
    )


def local_copy(champion: Champion) -> tempfile.TemporaryDirectory | None:
    """Downloads an s3:// champion into a temporary folder (None for a local one).

    The copy is checked against the version's manifest. The caller keeps the
    returned object alive while it uses `.name`.
    """
    if not is_s3_uri(champion.location):
        return None
    tmp = tempfile.TemporaryDirectory(prefix="cifarflow-champion-")
    try:
        champion.store.download(champion.model, champion.version, Path(tmp.name))
    except BaseException:
        tmp.cleanup()
        raise
    return tmp
