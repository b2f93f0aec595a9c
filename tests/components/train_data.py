"""Preprocessed splits built from a real CIFAR-100 archive, for the training tests.

Reads the official pickles with the project's safe unpickler and writes the
`cifarflow.data.splits` layout with a stratified validation split, the same
contract preprocess fulfils, so these tests do not depend on that step.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cifarflow.classes import COARSE_CLASS_NAMES, NUM_COARSE_CLASSES
from cifarflow.data.cifar_pickle import load_pickle
from cifarflow.data.splits import Split, write_split, write_stats


def _read_member(archive: Path, name: str) -> dict:
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.getmember(f"cifar-100-python/{name}")
        return load_pickle(tar.extractfile(member).read(), source=f"{archive}:{name}")


def _to_split(batch: dict, index: np.ndarray | None = None) -> Split:
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    coarse = np.asarray(batch["coarse_labels"], dtype=np.uint8)
    fine = np.asarray(batch["fine_labels"], dtype=np.uint8)
    if index is not None:
        images, coarse, fine = images[index], coarse[index], fine[index]
    return Split(np.ascontiguousarray(images), coarse, fine)


def write_splits_from_archive(
    archive: Path, out: Path, val_fraction: float = 0.1, seed: int = 0
) -> Path:
    """Writes train/val/test + stats.json under `out` from an official-format archive."""
    train = _read_member(archive, "train")
    coarse = np.asarray(train["coarse_labels"])
    rng = np.random.default_rng(seed)
    val_index: list[int] = []
    for label in range(NUM_COARSE_CLASSES):
        members = np.flatnonzero(coarse == label)
        val_index.extend(
            rng.choice(members, size=round(len(members) * val_fraction), replace=False)
        )
    is_val = np.zeros(len(coarse), dtype=bool)
    is_val[val_index] = True
    splits = {
        "train": _to_split(train, np.flatnonzero(~is_val)),
        "val": _to_split(train, np.flatnonzero(is_val)),
        "test": _to_split(_read_member(archive, "test")),
    }
    stats = {"splits": {}, "class_names": list(COARSE_CLASS_NAMES)}
    for name, split in splits.items():
        write_split(out, name, split)
        counts = np.bincount(split.coarse_labels, minlength=NUM_COARSE_CLASSES)
        stats["splits"][name] = {"count": len(split), "class_counts": [int(c) for c in counts]}
    write_stats(out, stats)
    return out


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory, sample_archive) -> Path:
    """The shipped sample as preprocessed splits: 1,800 train, 200 val, 500 test images."""
    return write_splits_from_archive(sample_archive, tmp_path_factory.mktemp("sample_data"))


@pytest.fixture(scope="session")
def sample_slice(tmp_path_factory, sample_data) -> Path:
    """The first 128 train and 64 val and test images of `sample_data`: one real epoch in seconds.

    For tests that need training to run (a dtype policy, an architecture), not to learn.
    """
    from cifarflow.data.splits import load_split, load_stats

    out = tmp_path_factory.mktemp("sample_slice")
    for name, count in (("train", 128), ("val", 64), ("test", 64)):
        split = load_split(sample_data, name, mmap=False)
        write_split(
            out,
            name,
            Split(split.images[:count], split.coarse_labels[:count], split.fine_labels[:count]),
        )
    write_stats(out, load_stats(sample_data))
    return out


# A trial small enough for tests: ResNet-8 (80 k parameters), a few seconds per epoch on the sample.
TINY_TRIAL = {
    "architecture": "resnet",
    "depth": 8,
    "batch_size": 64,
    "learning_rate": 0.05,
    "epochs": 4,
    "fine_label_weight": 0.5,
    "mixed_precision": "off",
}


def built_once_per_session(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `build(folder)` fills, built once for the whole test session.

    Session fixtures are per process, and `make test` runs two xdist workers:
    each would train the same model. Here the first worker to ask builds it
    under the session's shared temporary folder while holding a lock; the
    other waits for the lock and reuses the finished folder (marked done only
    once built, so a failed build is retried, not reused). Users only read it.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)
                build(folder)
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, sample_data) -> Path:
    """A ResNet-8 trained 4 epochs on the sample and exported (SavedModel, .keras, .tflite).

    Trained once per session, not once per xdist worker (`built_once_per_session`).
    """
    from cifarflow.components.train.config import TrialConfig
    from cifarflow.components.train.executor import train

    def build(folder: Path) -> None:
        train(
            sample_data, TrialConfig.from_dict(TINY_TRIAL), folder / "model", log=lambda line: None
        )

    return built_once_per_session(tmp_path_factory, "trained", build) / "model"


@pytest.fixture(scope="session")
def candidate(tmp_path_factory, trained_model, sample_data) -> Path:
    """`trained_model` evaluated into a separate folder: a select_best candidate (built once per session)."""
    from cifarflow.components.evaluate.executor import evaluate

    def build(folder: Path) -> None:
        evaluate(trained_model, sample_data, folder / "candidate")

    return built_once_per_session(tmp_path_factory, "candidate", build) / "candidate"
