"""The benchmarks' results files: JSON lists that each run appends its records to."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def append_records(path: Path, records: Sequence[dict[str, Any]], indent: int = 1) -> None:
    """Appends `records` to the JSON list at `path` (created with its folder when absent)."""
    existing = json.loads(path.read_text()) if path.is_file() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([*existing, *records], indent=indent) + "\n")
