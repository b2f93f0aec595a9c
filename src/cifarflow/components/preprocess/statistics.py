"""Per-split statistics written to stats.json and shown in the EDA report."""

from __future__ import annotations

from typing import Any

import numpy as np

from cifarflow.data.splits import Split


def channel_histograms(images: np.ndarray) -> np.ndarray:
    """[3, 256] pixel-value counts per RGB channel (exact, no float copy of the images)."""
    flat = images.reshape(-1, 3)
    return np.stack([np.bincount(flat[:, c], minlength=256) for c in range(3)])


def moments(histograms: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std, in 0..255 units, from value histograms."""
    values = np.arange(256, dtype=np.float64)
    total = histograms.sum(axis=1)
    mean = (histograms * values).sum(axis=1) / total
    var = (histograms * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    return mean.round(4).tolist(), np.sqrt(var).round(4).tolist()


def split_statistics(split: Split, num_classes: int, num_fine: int) -> dict[str, Any]:
    hist = channel_histograms(split.images)
    mean, std = moments(hist)
    rows = split.images.reshape(len(split), -1)
    constant = int(np.sum(rows.min(axis=1) == rows.max(axis=1)))
    return {
        "count": len(split),
        "class_counts": np.bincount(split.coarse_labels, minlength=num_classes).tolist(),
        "fine_class_counts": np.bincount(split.fine_labels, minlength=num_fine).tolist(),
        "channel_mean": mean,
        "channel_std": std,
        "channel_histogram": hist.tolist(),
        "constant_images": constant,
    }
