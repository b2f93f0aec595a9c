"""Publishing an exported model as a new version of the store.

This is what the pipeline's publish step and `cifarflow publish` call. The
model folder (the train step's `Model` artifact: SavedModel plus extra files
such as `model.keras`, `model.tflite`, `test_predictions.npy`) is copied
verbatim; `cifarflow.json` is written after every other file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.s3 import S3Settings
from cifarflow.serving.store.model_store import VersionInfo, open_store


@dataclasses.dataclass(frozen=True)
class PublishResult:
    """Where the new version went."""

    store: str
    model_name: str
    version: int
    manifest: dict[str, Any]

    @property
    def uri(self) -> str:
        return f"{self.store.rstrip('/')}/{self.model_name}/{self.version}"


def publish_model(
    model_dir: str | Path,
    store_uri: str | Path,
    model_name: str,
    metadata: Mapping[str, Any] | None = None,
    s3_settings: S3Settings | None = None,
) -> PublishResult:
    """Copies `model_dir` into the store as the next version of `model_name`.

    Args:
        model_dir: the exported model folder (must contain `saved_model.pb`).
        store_uri: a local folder or `s3://bucket/prefix`.
        model_name: the model's folder name in the store.
        metadata: goes into `cifarflow.json`; conventionally `metrics` (dict),
            `run_id`, `data_checksum`; `class_names` defaults to the 20
            coarse classes.
        s3_settings: endpoint and credentials; default from `S3_*` variables.

    Returns:
        The version number and where it is.

    Raises:
        BadInputError: not a SavedModel folder, bad model name, missing bucket.
        RemoteError: the store could not be reached.
    """
    meta = dict(metadata or {})
    meta.setdefault("class_names", list(COARSE_CLASS_NAMES))
    store = open_store(store_uri, s3_settings)
    info: VersionInfo = store.publish(model_name, Path(model_dir), meta)
    return PublishResult(
        store=store.uri, model_name=model_name, version=info.version, manifest=info.manifest
    )
