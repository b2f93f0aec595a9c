"""Writing a file so readers see the old content or the new, never half of it.

Each helper writes `.<name>.partial` beside the target and renames it into
place; a failed write (a full disk) removes the partial file, and a crash
leaves at most that hidden file, which nothing reads. Marker files that say
"this folder is complete" (stats.json, ingest.json, metrics.json,
train_summary.json, run.json) are written this way, last.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def partial_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the partial path to write; renames it onto `path` on success, removes it on failure.

    An OSError without a file name (a write on an open file has none) gets
    `path`'s, so the error says which file the disk refused.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with partial_file(path) as partial:
        partial.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(
    path: str | os.PathLike,
    value: Any,
    indent: int = 2,
    default: Callable[[Any], Any] | None = None,
) -> None:
    write_text_atomic(path, json.dumps(value, indent=indent, default=default) + "\n")
