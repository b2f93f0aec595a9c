"""Loads preprocessed splits for training (NumPy only, no TensorFlow)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from cifarflow.data.splits import class_names, load_split
from cifarflow.errors import DataAnomalyError


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """In-memory train and val arrays plus what the model needs to know about them."""

    train_images: np.ndarray
    train_coarse: np.ndarray
    train_fine: np.ndarray
    val_images: np.ndarray
    val_coarse: np.ndarray
    class_names: list[str]
    pixel_mean: list[float]
    pixel_std: list[float]


def load_training_data(data_dir: str | os.PathLike) -> TrainingData:
    """Reads train and val of a preprocessed dataset (the layout of `cifarflow.data.splits`).

    Raises:
        BadInputError: the folder is not a preprocessed dataset.
        DataAnomalyError: a split is empty or labels fall outside the class list.
    """
    names = class_names(data_dir)
    train = load_split(data_dir, "train", mmap=False)
    val = load_split(data_dir, "val", mmap=False)
    for split_name, split in (("train", train), ("val", val)):
        if len(split) == 0:
            raise DataAnomalyError(f"{data_dir}: the {split_name} split is empty")
        if int(split.coarse_labels.max()) >= len(names):
            raise DataAnomalyError(
                f"{data_dir}: {split_name} has coarse label {int(split.coarse_labels.max())} but only {len(names)} classes"
            )
    # Per-channel statistics of the training pixels, folded into the model.
    flat = train.images.reshape(-1, 3).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    return TrainingData(
        train_images=train.images,
        train_coarse=train.coarse_labels.astype(np.int64),
        train_fine=train.fine_labels.astype(np.int64),
        val_images=val.images,
        val_coarse=val.coarse_labels.astype(np.int64),
        class_names=names,
        pixel_mean=[float(v) for v in mean],
        pixel_std=[float(max(v, 1e-3)) for v in std],
    )
