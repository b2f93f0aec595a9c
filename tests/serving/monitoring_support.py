"""A training reference for the test model, from real CIFAR-100 images of the shipped sample."""

from __future__ import annotations

import functools
import shutil
import tarfile
from pathlib import Path

import numpy as np

from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.components.candidate import write_reference
from cifarflow.data.cifar_pickle import load_pickle
from cifarflow.data.sample import SAMPLE_ARCHIVE
from cifarflow.training_reference import data_reference, score_reference, training_reference
from tests.serving.model_factory import reference_logits


@functools.lru_cache(maxsize=1)
def sample_train_images() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 32, 32, 3], coarse labels [N]) of the sample's train pickle."""
    with tarfile.open(SAMPLE_ARCHIVE) as tar:
        batch = load_pickle(tar.extractfile("cifar-100-python/train").read(), "sample train")
    data = np.asarray(batch["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(data), np.asarray(batch["coarse_labels"])


def model_with_reference(model_dir: Path, dest: Path) -> Path:
    """A copy of the test model (seed 0) with the reference.json evaluate would write.

    Data side: the sample's train images; scores: the model's logits on its
    last 400 (standing in for val).
    """
    shutil.copytree(model_dir, dest)
    images, labels = sample_train_images()
    data = data_reference(images, labels, len(COARSE_CLASS_NAMES))
    scores = score_reference(reference_logits(images[-400:]), temperature=1.0)
    write_reference(dest, training_reference(COARSE_CLASS_NAMES, data, scores))
    return dest
