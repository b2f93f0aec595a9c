"""On-disk layout of preprocessed splits, shared by every step after preprocess.

```
<root>/stats.json                      counts per split and class, class names
<root>/<split>/...                     split: train, val, gate, test
<root>/<split>/images.npy              uint8 [N, 32, 32, 3]
<root>/<split>/coarse_labels.npy       uint8 [N]
<root>/<split>/fine_labels.npy         uint8 [N]
```

Plain `.npy` files: `numpy.load(mmap_mode="r")` maps them without reading,
so a step that needs only a slice (EDA samples, an evaluation batch) pays for
that slice alone, and no step needs TensorFlow to read the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from cifarflow.atomic_files import partial_file, write_json_atomic
from cifarflow.errors import BadInputError

# gate: held out of training like val, used only by the champion gate (docs/training.md).
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "gate", "test")
IMAGE_SHAPE: tuple[int, int, int] = (32, 32, 3)
STATS_FILE = "stats.json"


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's arrays; `images` may be memory-mapped."""

    images: np.ndarray
    coarse_labels: np.ndarray
    fine_labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


class _ChunkedWrites:
    """Hides the real file from numpy, which then writes in chunks with write().

    On a real file numpy uses tofile(), whose short write on a full disk says
    only "N requested and M written"; write() raises ENOSPC, which the CLI
    reports as a full disk.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        return self._out.write(data)


def write_split(root: str | os.PathLike, name: str, split: Split) -> None:
    """Writes one split; each file lands under a temporary name first."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    for field in ("images", "coarse_labels", "fine_labels"):
        with partial_file(folder / f"{field}.npy") as partial, open(partial, "wb") as f:
            np.save(
                _ChunkedWrites(f), np.ascontiguousarray(getattr(split, field)), allow_pickle=False
            )


def load_split(root: str | os.PathLike, name: str, mmap: bool = True) -> Split:
    """Loads one split written by `write_split` (memory-mapped by default)."""
    folder = Path(root) / name
    if not (folder / "images.npy").is_file():
        raise BadInputError(
            f"{folder} is not a preprocessed split (no images.npy); run 'cifarflow preprocess' first"
        )
    mode: Literal["r"] | None = "r" if mmap else None
    return Split(
        images=np.load(folder / "images.npy", mmap_mode=mode, allow_pickle=False),
        coarse_labels=np.load(folder / "coarse_labels.npy", mmap_mode=mode, allow_pickle=False),
        fine_labels=np.load(folder / "fine_labels.npy", mmap_mode=mode, allow_pickle=False),
    )


def has_split(root: str | os.PathLike, name: str) -> bool:
    """Whether the dataset holds split `name` (folders written before the gate split lack `gate`)."""
    return (Path(root) / name / "images.npy").is_file()


def split_checksum(split: Split) -> str:
    """sha256 of a split's pixels and coarse labels, in order.

    Paired predictions (the McNemar gate) are comparable only when made on
    the same images in the same order: equal checksums say they were.
    """
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(split.images).tobytes())
    digest.update(np.ascontiguousarray(split.coarse_labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def write_stats(root: str | os.PathLike, stats: dict[str, Any]) -> None:
    write_json_atomic(Path(root) / STATS_FILE, stats)


def load_stats(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / STATS_FILE
    if not path.is_file():
        raise BadInputError(f"{root} has no {STATS_FILE}; run 'cifarflow preprocess' first")
    return json.loads(path.read_text())


def class_names(root: str | os.PathLike) -> list[str]:
    """The coarse class names of a preprocessed dataset, in label order."""
    return list(load_stats(root)["class_names"])
