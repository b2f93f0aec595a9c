"""Charts and image strips for the EDA report, as inline SVG and PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np

SPLIT_COLOURS = {"train": "#4c72b0", "val": "#dd8452", "test": "#55a868"}
CHANNEL_COLOURS = ("#d62728", "#2ca02c", "#1f77b4")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display in pods or CI
    matplotlib.rcParams["svg.fonttype"] = "none"  # keep text as text: smaller, searchable
    matplotlib.rcParams["svg.hashsalt"] = "cifarflow"  # same input, same SVG
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog for inline use


def class_distribution_svg(class_names: Sequence[str], counts: dict[str, Sequence[int]]) -> str:
    """Horizontal grouped bars: share of each class per split (splits differ in size)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(class_names) + 1))
    y = np.arange(len(class_names))
    height = 0.8 / max(len(counts), 1)
    for i, (split, split_counts) in enumerate(counts.items()):
        values = np.asarray(split_counts, dtype=float)
        share = 100 * values / max(values.sum(), 1)
        ax.barh(
            y + i * height,
            share,
            height,
            label=f"{split} (n={int(values.sum())})",
            color=SPLIT_COLOURS.get(split),
        )
    ax.set_yticks(y + height * (len(counts) - 1) / 2, class_names)
    ax.invert_yaxis()
    ax.set_xlabel("% of the split")
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.6 / len(class_names) - 0.04),
        ncol=len(counts),
        frameon=False,
    )
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def channel_histogram_svg(histogram: Sequence[Sequence[int]]) -> str:
    """Pixel-value distribution of the R, G and B channels."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.6))
    hist = np.asarray(histogram, dtype=float)
    for c, name in enumerate("RGB"):
        ax.plot(
            np.arange(256),
            100 * hist[c] / hist[c].sum(),
            color=CHANNEL_COLOURS[c],
            label=name,
            linewidth=1.2,
        )
    ax.set_xlim(0, 255)
    ax.set_xlabel("pixel value")
    ax.set_ylabel("% of pixels")
    ax.legend()
    ax.grid(alpha=0.3)
    return _svg(fig)


def curves_svg(series: Mapping[str, Sequence[tuple[float, float]]], ylabel: str) -> str:
    """One line per named series of (x, y) points, e.g. val accuracy per epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for label, points in series.items():
        xs, ys = zip(*points, strict=True) if points else ((), ())
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _svg(fig)


def png_data_uri(image: np.ndarray) -> str:
    """uint8 [H, W, 3] -> `data:image/png;base64,...`."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_strip(images: np.ndarray, gap: int = 2) -> np.ndarray:
    """Lays [N, H, W, 3] images side by side on a white background."""
    n, h, w, _ = images.shape
    strip = np.full((h, n * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        strip[:, i * (w + gap) : i * (w + gap) + w] = image
    return strip
