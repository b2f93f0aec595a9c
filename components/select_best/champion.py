"""Reads the deployed champion from the model store (local folder or s3://).

The store layout (../shared/DESIGN.md, "Model store"):
`<store>/<model_name>/<version>/` with the SavedModel and `cifarflow.json`,
which is written last: only versions that have it are complete. The champion
is the newest complete version.

A version published from a select_best candidate also holds `metrics.json`
and `test_predictions.npy` (the paired predictions the gate needs). When they
are missing, or were made on another test set, the champion's SavedModel is
downloaded and run on the current test set instead.

This module reads the layout directly; it is small on purpose, to be unified
with the serving store module (issue 6) later.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.errors import BadInputError
from cifarflow.s3 import S3Location, S3Settings, describe_s3_error, is_s3_uri

COMPLETE_MARKER = "cifarflow.json"
PREDICTIONS_FILE = "test_predictions.npy"
METRICS_FILE = "metrics.json"


@dataclasses.dataclass(frozen=True)
class Champion:
    """The newest complete version of a model in the store.

    Attributes:
        location: where the version lives (folder path or s3:// URI).
        version: its integer version.
        info: its cifarflow.json.
        metrics: its metrics.json, or {} when it has none.
        test_predictions: its recorded test-set class ids, or None.
    """

    location: str
    version: int
    info: dict[str, Any]
    metrics: dict[str, Any]
    test_predictions: np.ndarray | None


def _int_or_none(name: str) -> int | None:
    return int(name) if name.isdigit() else None


def find_champion(store: str, model_name: str, s3: S3Settings | None = None) -> Champion | None:
    """The newest complete version, or None when the model has no complete version.

    Args:
        store: a local folder or `s3://bucket/prefix`.
        model_name: the model's folder in the store.
        s3: endpoint and credentials (default: from the S3_* environment).
    """
    if not model_name or "/" in model_name:
        raise BadInputError(f"bad model name {model_name!r}")
    if is_s3_uri(store):
        return _find_s3(S3Location.parse(store), model_name, s3 or S3Settings.from_env())
    return _find_local(Path(store), model_name)


def _find_local(store: Path, model_name: str) -> Champion | None:
    folder = store / model_name
    if not folder.is_dir():
        return None
    versions = [
        v for v in (_int_or_none(p.name) for p in folder.iterdir() if (p / COMPLETE_MARKER).is_file()) if v is not None
    ]
    if not versions:
        return None
    version = max(versions)
    path = folder / str(version)
    metrics_path = path / METRICS_FILE
    predictions_path = path / PREDICTIONS_FILE
    return Champion(
        location=str(path),
        version=version,
        info=json.loads((path / COMPLETE_MARKER).read_text()),
        metrics=json.loads(metrics_path.read_text()) if metrics_path.is_file() else {},
        test_predictions=np.load(predictions_path, allow_pickle=False) if predictions_path.is_file() else None,
    )


def _find_s3(location: S3Location, model_name: str, settings: S3Settings) -> Champion | None:
    client = settings.client()
    prefix = "/".join(p for p in (location.key.strip("/"), model_name) if p) + "/"
    try:
        names = [o.object_name for o in client.list_objects(location.bucket, prefix=prefix, recursive=True)]
    except Exception as exc:
        raise describe_s3_error(exc, location) from None
    versions: set[int] = set()
    for name in names:
        parts = name[len(prefix) :].split("/")
        if len(parts) == 2 and parts[1] == COMPLETE_MARKER and _int_or_none(parts[0]) is not None:
            versions.add(int(parts[0]))
    if not versions:
        return None
    version = max(versions)
    key = f"{prefix}{version}/"

    def get(name: str) -> bytes | None:
        if f"{key}{name}" not in names:
            return None
        try:
            response = client.get_object(location.bucket, f"{key}{name}")
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()
        except Exception as exc:
            raise describe_s3_error(exc, f"s3://{location.bucket}/{key}{name}") from None

    metrics = get(METRICS_FILE)
    predictions = get(PREDICTIONS_FILE)
    return Champion(
        location=f"s3://{location.bucket}/{key}",
        version=version,
        info=json.loads(get(COMPLETE_MARKER) or b"{}"),
        metrics=json.loads(metrics) if metrics else {},
        test_predictions=np.load(io.BytesIO(predictions), allow_pickle=False) if predictions else None,
    )


def local_copy(champion: Champion, s3: S3Settings | None = None) -> tempfile.TemporaryDirectory | None:
    """Downloads an s3:// champion into a temporary folder (None for a local one).

    The caller keeps the returned object alive while it uses `.name`.
    """
    if not is_s3_uri(champion.location):
        return None
    location = S3Location.parse(champion.location)
    client = (s3 or S3Settings.from_env()).client()
    tmp = tempfile.TemporaryDirectory(prefix="cifarflow-champion-")
    try:
        for obj in client.list_objects(location.bucket, prefix=location.key, recursive=True):
            relative = obj.object_name[len(location.key) :]
            target = Path(tmp.name) / relative
            if ".." in Path(relative).parts:
                continue  # never write outside the temporary folder
            target.parent.mkdir(parents=True, exist_ok=True)
            client.fget_object(location.bucket, obj.object_name, os.fspath(target))
    except Exception as exc:
        tmp.cleanup()
        raise describe_s3_error(exc, champion.location) from None
    return tmp
