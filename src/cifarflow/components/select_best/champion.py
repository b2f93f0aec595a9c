"""Reads the deployed champion from the model store (local folder or s3://).

The champion is the version the `stable` label names, when the store has
one (that is what `cifarflow serve model --label stable` and TensorFlow
Serving's version_labels serve), else the newest complete version. The store
itself (layout, completeness, labels) is `cifarflow.serving.store`'s.

A version published from a select_best candidate is a candidate folder
(`cifarflow.components.candidate`): it holds `metrics.json` and
`gate_predictions.npy`, the paired predictions the gate needs. When they are
missing, or were made on another gate split, the gate downloads the
champion's SavedModel and runs it on the current gate split instead.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.components import candidate as contract
from cifarflow.errors import BadInputError
from cifarflow.s3 import S3Settings, is_s3_uri
from cifarflow.serving.store import ModelStore, check_model_name, open_store

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
        metrics: its metrics.json, or None when it has none (or an unreadable one).
        gate: its recorded gate-split predictions, or None.
    """

    store: ModelStore = dataclasses.field(repr=False)
    model: str
    version: int
    label: str | None
    info: dict[str, Any]
    metrics: contract.CandidateMetrics | None
    gate: contract.PairedPredictions | None

    @property
    def location(self) -> str:
        """The version's folder path or s3:// URI."""
        return f"{self.store.uri}/{self.model}/{self.version}"

    @property
    def class_names(self) -> list[str]:
        """Its classes: from metrics.json, else cifarflow.json; [] when neither says."""
        if self.metrics is not None:
            return self.metrics.class_names
        return [str(n) for n in self.info.get("class_names") or []]


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
    if labelled is not None and labelled in versions:
        version, label = labelled, CHAMPION_LABEL
    else:
        version, label = versions[-1], None

    def read(name: str) -> bytes | None:
        return model_store.backend.read_bytes(f"{model_name}/{version}/{name}")

    metrics = _metrics(read(contract.METRICS_FILE))
    return Champion(
        store=model_store,
        model=model_name,
        version=version,
        label=label,
        info=model_store.manifest(model_name, version),
        metrics=metrics,
        gate=_predictions(read, contract.GATE_SPLIT, metrics),
    )


def _metrics(raw: bytes | None) -> contract.CandidateMetrics | None:
    # A champion published by hand may carry any metrics.json: without a
    # usable one the gate re-scores it instead of trusting numbers it cannot read.
    if raw is None:
        return None
    try:
        return contract.CandidateMetrics.from_json(json.loads(raw))
    except (ValueError, BadInputError, TypeError):
        return None


def _predictions(read, split: str, metrics: contract.CandidateMetrics | None):
    if metrics is None or not metrics.checksum(split):
        return None
    predictions = read(contract.predictions_file(split))
    labels = read(contract.labels_file(split))
    if predictions is None or labels is None:
        return None
    return contract.PairedPredictions(
        split=split,
        predictions=np.load(io.BytesIO(predictions), allow_pickle=False).astype(np.int64),
        labels=np.load(io.BytesIO(labels), allow_pickle=False).astype(np.int64),
        checksum=metrics.checksum(split),
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
