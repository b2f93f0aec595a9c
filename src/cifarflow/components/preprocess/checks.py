"""Schema and statistics checks on preprocessed splits.

Each check returns a `CheckResult`; `enforce` raises `DataAnomalyError`
naming the first failure, so a bad dataset stops the pipeline at this step
instead of surfacing as a strange accuracy three steps later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from cifarflow.data.splits import IMAGE_SHAPE, Split
from cifarflow.errors import DataAnomalyError

_EXAMPLES = 50  # duplicate pairs kept for the report


@dataclasses.dataclass(frozen=True)
class CheckLimits:
    """Thresholds above which the data is an anomaly, not a quirk."""

    max_class_imbalance: float = 10.0  # largest / smallest class count in a split
    max_cross_split_duplicates: float = 0.01  # share of the smaller split


@dataclasses.dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": "pass" if self.passed else "fail",
            "detail": self.detail,
        }


def check_schema(splits: Mapping[str, Split], num_classes: int, num_fine: int) -> list[CheckResult]:
    results = []
    for name, split in splits.items():
        n = len(split)
        ok = split.images.dtype == np.uint8 and split.images.shape[1:] == IMAGE_SHAPE
        results.append(
            CheckResult(
                f"{name}: images uint8 [N,32,32,3]",
                ok,
                f"{split.images.dtype} {split.images.shape}",
            )
        )
        results.append(CheckResult(f"{name}: not empty", n > 0, f"{n} images"))
        lengths = (split.coarse_labels.shape, split.fine_labels.shape)
        results.append(
            CheckResult(
                f"{name}: one label per image", lengths == ((n,), (n,)), f"labels {lengths}"
            )
        )
        if n:
            top, fine_top = int(split.coarse_labels.max()), int(split.fine_labels.max())
            results.append(
                CheckResult(
                    f"{name}: coarse labels in 0..{num_classes - 1}",
                    top < num_classes,
                    f"max {top}",
                )
            )
            results.append(
                CheckResult(
                    f"{name}: fine labels in 0..{num_fine - 1}",
                    fine_top < num_fine,
                    f"max {fine_top}",
                )
            )
    return results


def check_fine_to_coarse(splits: Mapping[str, Split]) -> CheckResult:
    """Each fine label must belong to exactly one coarse class."""
    pairs = np.unique(
        np.concatenate(
            [s.fine_labels.astype(np.int32) * 256 + s.coarse_labels for s in splits.values()]
        )
    )
    fine = pairs // 256
    ambiguous = np.unique(fine[np.flatnonzero(np.diff(fine) == 0)])
    return CheckResult(
        "fine labels map to one coarse class",
        ambiguous.size == 0,
        "consistent"
        if ambiguous.size == 0
        else f"fine labels {ambiguous.tolist()[:10]} map to several coarse classes",
    )


def check_class_counts(
    splits: Mapping[str, Split], class_names: list[str], limits: CheckLimits
) -> list[CheckResult]:
    results = []
    for name, split in splits.items():
        counts = np.bincount(split.coarse_labels, minlength=len(class_names))
        missing = [class_names[i] for i in np.flatnonzero(counts == 0)]
        results.append(
            CheckResult(
                f"{name}: every class present",
                not missing,
                "all present" if not missing else f"no images of {', '.join(missing[:5])}",
            )
        )
        if not missing:
            ratio = counts.max() / counts.min()
            results.append(
                CheckResult(
                    f"{name}: class imbalance <= {limits.max_class_imbalance:g}",
                    ratio <= limits.max_class_imbalance,
                    f"largest/smallest = {ratio:.2f}",
                )
            )
    return results


def image_hashes(images: np.ndarray) -> np.ndarray:
    """A 64-bit hash per image; equal images hash equally (collisions are re-checked)."""
    flat = images.reshape(len(images), -1).view(np.uint64)
    weights = np.random.default_rng(20).integers(
        1, 2**63, size=flat.shape[1], dtype=np.uint64
    ) | np.uint64(1)
    hashes = np.zeros(len(images), dtype=np.uint64)
    for start in range(0, len(images), 4096):  # bounds the temporary to ~12 MB
        block = flat[start : start + 4096]
        hashes[start : start + 4096] = (block * weights).sum(axis=1, dtype=np.uint64)
    return hashes


def find_duplicates(splits: Mapping[str, Split]) -> dict[str, Any]:
    """Exact duplicate images within and across splits.

    Returns a JSON-ready dict: counts of duplicated images per split and per
    split pair, images whose copies disagree on the label, and example pairs.
    """
    names = list(splits)
    hashes = np.concatenate([image_hashes(splits[n].images) for n in names])
    owner = np.concatenate([np.full(len(splits[n]), i) for i, n in enumerate(names)])
    index = np.concatenate([np.arange(len(splits[n])) for n in names])
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    starts = np.flatnonzero(np.r_[True, sorted_hashes[1:] != sorted_hashes[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])

    within = {n: 0 for n in names}
    across: dict[str, int] = {}
    conflicts = 0
    examples: list[dict[str, Any]] = []
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
        group = order[start : start + size]
        for a_pos, a in enumerate(group):
            for b in group[a_pos + 1 :]:
                sa, sb = names[owner[a]], names[owner[b]]
                img_a, img_b = splits[sa].images[index[a]], splits[sb].images[index[b]]
                if not np.array_equal(img_a, img_b):
                    continue  # hash collision
                if sa == sb:
                    within[sa] += 1
                else:
                    key = f"{sa}-{sb}"
                    across[key] = across.get(key, 0) + 1
                label_a = int(splits[sa].coarse_labels[index[a]])
                label_b = int(splits[sb].coarse_labels[index[b]])
                conflicts += label_a != label_b
                if len(examples) < _EXAMPLES:
                    examples.append(
                        {
                            "a": [sa, int(index[a])],
                            "b": [sb, int(index[b])],
                            "labels": [label_a, label_b],
                        }
                    )
    return {"within": within, "across": across, "label_conflicts": conflicts, "examples": examples}


def check_duplicates(
    duplicates: dict[str, Any], splits: Mapping[str, Split], limits: CheckLimits
) -> list[CheckResult]:
    results = []
    for pair, count in duplicates["across"].items():
        a, b = pair.split("-")
        smaller = min(len(splits[a]), len(splits[b]))
        share = count / max(smaller, 1)
        results.append(
            CheckResult(
                f"{pair}: duplicates <= {limits.max_cross_split_duplicates:.1%}",
                share <= limits.max_cross_split_duplicates,
                f"{count} duplicate pairs ({share:.3%} of {smaller})",
            )
        )
    return results


def enforce(results: list[CheckResult]) -> None:
    failed = [r for r in results if not r.passed]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more failed checks)" if len(failed) > 1 else ""
        raise DataAnomalyError(f"data check failed: {first.name}: {first.detail}{more}")
