"""Writing a file so readers see the old content or the new, never half of it.

Each helper writes `.<name>.partial` beside the target and renames it into
place; a crash leaves at most the hidden partial file, which nothing reads.
Marker files that say "this folder is complete" (stats.json, ingest.json,
metrics.json, train_summary.json, run.json) are written this way, last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(
    path: str | os.PathLike, value: Any, indent: int = 2, default: Callable[[Any], Any] | None = None
) -> None:
    write_text_atomic(path, json.dumps(value, indent=indent, default=default) + "\n")
