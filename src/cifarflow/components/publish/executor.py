"""The publish step: put the winning model into the store, or keep the champion.

A thin layer over `cifarflow.serving.store.publish_model` so the pipeline,
`cifarflow publish` and the tests all go through the same code. The gate
(does the candidate beat the deployed champion?) is decided upstream by
select_best; this step only acts on its verdict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cifarflow.components.candidate import METRICS_FILE, CandidateMetrics
from cifarflow.s3 import S3Settings
from cifarflow.serving.store import publish_model


@dataclasses.dataclass(frozen=True)
class PublishOutcome:
    """What the step did: `version` is 0 when the champion was kept."""

    published: bool
    version: int
    uri: str
    message: str

    def markdown(self) -> str:
        return f"## Publish\n\n{self.message}\n"


def model_metrics(
    model_dir: Path, artifact_metadata: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[str] | None]:
    """(metrics to record, class names or None): the folder's metrics.json, then numeric metadata.

    Raises:
        BadInputError: the folder's metrics.json is not one evaluate writes.
    """
    metrics: dict[str, Any] = {}
    class_names = None
    if (Path(model_dir) / METRICS_FILE).is_file():
        evaluation = CandidateMetrics.read(model_dir)
        metrics.update(evaluation.to_json())
        class_names = evaluation.class_names
    for key, value in (artifact_metadata or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.setdefault(key, value)
    return metrics, class_names


def publish(
    model_dir: str | Path,
    store: str,
    model_name: str,
    *,
    approved: bool = True,
    reason: str = "",
    run_id: str = "",
    data_checksum: str = "",
    artifact_metadata: Mapping[str, Any] | None = None,
    s3_settings: S3Settings | None = None,
) -> PublishOutcome:
    """Publishes `model_dir` as the next version of `model_name` when approved.

    Args:
        model_dir: the Model artifact folder (SavedModel plus extra files).
        store: local folder or `s3://bucket/prefix`.
        model_name: the model's name in the store.
        approved: False when the gate kept the champion: nothing is written.
        reason: the gate's explanation, echoed in the outcome.
        run_id: the pipeline run id recorded in `cifarflow.json`.
        data_checksum: the training data checksum recorded in `cifarflow.json`.
        artifact_metadata: the KFP Model artifact's metadata (numeric values
            are recorded as metrics).
        s3_settings: endpoint and credentials; default from `S3_*` variables.
    """
    if not approved:
        why = f": {reason}" if reason else ""
        return PublishOutcome(False, 0, "", f"Kept the champion; nothing published{why}.")
    metrics, class_names = model_metrics(Path(model_dir), artifact_metadata)
    metadata: dict[str, Any] = {
        "metrics": metrics,
        "run_id": run_id,
        "data_checksum": data_checksum,
    }
    if (
        class_names
    ):  # the store's default is the 20 CIFAR-100 names; an image-folder model has others
        metadata["class_names"] = class_names
    result = publish_model(model_dir, store, model_name, metadata, s3_settings)
    return PublishOutcome(
        True,
        result.version,
        result.uri,
        f"Published **{model_name}** version {result.version} to `{result.uri}`.",
    )
