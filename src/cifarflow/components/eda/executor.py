"""EDA: a self-contained HTML report, a Markdown summary and KFP metrics.

Reads the preprocess output (split arrays + stats.json); touches only the
images it shows, thanks to memory-mapped arrays.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.atomic_files import write_json_atomic, write_text_atomic
from cifarflow.components.eda import charts, report
from cifarflow.data.splits import SPLIT_NAMES, load_split, load_stats
from cifarflow.training_reference import DataReference, data_reference

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
SUMMARY_MD = "summary.md"
METRICS_JSON = "metrics.json"


@dataclasses.dataclass(frozen=True)
class EdaConfig:
    """Options of the EDA step.

    Attributes:
        samples_per_class: images shown per class in the sample grid.
        duplicate_examples: duplicate pairs shown with thumbnails.
        seed: picks the sample images.
    """

    samples_per_class: int = 10
    duplicate_examples: int = 12
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class EdaResult:
    out_dir: Path
    metrics: dict[str, float]

    @property
    def report_path(self) -> Path:
        return self.out_dir / REPORT_HTML


def eda(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, config: EdaConfig = EdaConfig()
) -> EdaResult:
    """Writes report.html, summary.md and metrics.json for a preprocessed dataset.

    Args:
        data_dir: output of the preprocess step.
        out_dir: where the three files go.
        config: how many samples to show, and the seed that picks them.

    Returns:
        The output folder and the metrics written to metrics.json.

    Raises:
        BadInputError: `data_dir` is not a preprocessed dataset.
    """
    started = time.monotonic()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    stats = load_stats(data_dir)
    splits = {name: load_split(data_dir, name) for name in SPLIT_NAMES}
    class_names = stats["class_names"]
    rng = np.random.default_rng(config.seed)

    train = splits["train"]
    sample_rows, mean_images = [], []
    for label in range(len(class_names)):
        members = np.flatnonzero(train.coarse_labels == label)
        chosen = np.sort(
            rng.choice(members, size=min(config.samples_per_class, members.size), replace=False)
        )
        sample_rows.append(charts.png_data_uri(charts.image_strip(train.images[chosen])))
        mean_images.append(
            np.asarray(train.images[members], dtype=np.float32)
            .mean(axis=0)
            .round()
            .astype(np.uint8)
        )

    duplicate_pairs = []
    for example in stats["duplicates"]["examples"][: config.duplicate_examples]:
        (split_a, index_a), (split_b, index_b) = example["a"], example["b"]
        pair = np.stack([splits[split_a].images[index_a], splits[split_b].images[index_b]])
        duplicate_pairs.append({**example, "image": charts.png_data_uri(charts.image_strip(pair))})

    # The same function evaluate records the training reference with: one implementation.
    image_statistics: dict[str, DataReference] = {
        name: data_reference(split.images, split.coarse_labels, len(class_names), split=name)
        for name, split in splits.items()
        if len(split)
    }
    view = report.ReportView(
        stats=stats,
        class_names=class_names,
        fine_by_class=_fine_classes_by_coarse(splits, stats),
        sample_rows=sample_rows,
        mean_images=[charts.png_data_uri(m) for m in mean_images],
        distribution_svg=charts.class_distribution_svg(
            class_names, {name: stats["splits"][name]["class_counts"] for name in SPLIT_NAMES}
        ),
        histogram_svg=charts.channel_histogram_svg(stats["splits"]["train"]["channel_histogram"]),
        duplicate_pairs=duplicate_pairs,
        image_statistics=image_statistics,
    )
    metrics = summary_metrics(stats)
    if "train" in image_statistics:
        train_reference = image_statistics["train"]
        for feature in ("brightness", "contrast", "saturation"):
            metrics[f"train_{feature}_mean"] = round(getattr(train_reference, feature).mean, 4)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / REPORT_HTML, report.render_html(view))
    write_text_atomic(out_dir / SUMMARY_MD, report.render_markdown(view, metrics))
    write_json_atomic(out_dir / METRICS_JSON, metrics)
    log.info(
        "report for %d classes (%.1fs) -> %s",
        len(class_names),
        time.monotonic() - started,
        out_dir / REPORT_HTML,
    )
    return EdaResult(out_dir, metrics)


def summary_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics for the KFP UI (one value per name)."""
    train = stats["splits"]["train"]
    counts = np.asarray(train["class_counts"])
    metrics: dict[str, float] = {
        f"{name}_images": float(s["count"]) for name, s in stats["splits"].items()
    }
    metrics["classes"] = float(len(stats["class_names"]))
    metrics["train_class_imbalance"] = round(float(counts.max() / max(counts.min(), 1)), 4)
    metrics["cross_split_duplicate_pairs"] = float(sum(stats["duplicates"]["across"].values()))
    metrics["duplicate_label_conflicts"] = float(stats["duplicates"]["label_conflicts"])
    for channel, mean, std in zip("rgb", train["channel_mean"], train["channel_std"], strict=True):
        metrics[f"train_mean_{channel}"] = mean
        metrics[f"train_std_{channel}"] = std
    return metrics


def _fine_classes_by_coarse(splits: dict, stats: dict[str, Any]) -> list[list[str]]:
    fine_names = stats["fine_class_names"]
    train = splits["train"]
    pairs = np.unique(train.coarse_labels.astype(np.int32) * 256 + train.fine_labels)
    by_coarse: list[list[str]] = [[] for _ in stats["class_names"]]
    for pair in pairs:
        coarse, fine = divmod(int(pair), 256)
        if fine_names[fine] != stats["class_names"][coarse]:  # image folders: fine == coarse
            by_coarse[coarse].append(fine_names[fine])
    return by_coarse
