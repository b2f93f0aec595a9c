"""KFP `Metrics` and `ClassificationMetrics` outputs that also exist as files.

`log_metric` and `log_confusion_matrix` only fill the artifact's metadata; the
file at its path is never written. kfp.local's cache (kfp 2.17.3,
`kfp/local/cache.py`, `_deserialize_artifact`) treats an output whose local
file is missing as a cache miss, so every task with such an output (EDA,
train, evaluate) ran again on every `cifarflow run`. Writing the metadata as
JSON at the artifact's path makes the cache hold, and on a cluster gives the
artifact a readable body in the store as well.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any


def log_metrics(artifact: Any, values: Mapping[str, float]) -> None:
    """Logs each value on a `dsl.Metrics` output, then writes its file."""
    for name, value in values.items():
        artifact.log_metric(name, float(value))
    write_metadata_file(artifact)


def write_metadata_file(artifact: Any) -> None:
    """Writes the artifact's metadata as JSON at `artifact.path`."""
    os.makedirs(os.path.dirname(artifact.path), exist_ok=True)
    with open(artifact.path, "w") as out:
        json.dump(artifact.metadata, out, indent=2, sort_keys=True)
        out.write("\n")
