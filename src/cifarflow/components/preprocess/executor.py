"""Preprocess: raw dataset -> checked train / val / gate / test arrays + stats.json.

The official test set is kept as it is, and is only reported on. Two seeded,
stratified fractions of the official train set are held out of training:
`val` (best epoch, early stopping, temperature, ranking the trials) and
`gate` (only the McNemar gate against the deployed champion uses it, so the
published model is never chosen on the images it is reported on).

Every check runs on the arrays in memory before anything is written, and
`stats.json` is written last, so an output folder with `stats.json` is always
complete and checked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from cifarflow import defaults
from cifarflow.components.preprocess import checks, sources, statistics
from cifarflow.components.preprocess.split import hold_out, stratified_split, stratum_counts
from cifarflow.data import official
from cifarflow.data.splits import STATS_FILE, Split, write_split, write_stats
from cifarflow.errors import BadInputError


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Options of the preprocess step.

    Attributes:
        val_fraction: share of the train set held out for validation.
        gate_fraction: share of the train set held out as the gate split, on
            which the McNemar gate compares the winner with the champion
            (0.1: 5,000 of the official 50,000 train images).
        test_fraction: share held out as test when the source has no test set
            (image folders without a test/ subfolder).
        seed: seeds the val, gate (and test) selection.
        limits: thresholds that make the data an anomaly.
    """

    val_fraction: float = defaults.VAL_FRACTION
    gate_fraction: float = defaults.GATE_FRACTION
    test_fraction: float = 0.1
    seed: int = defaults.SPLIT_SEED
    limits: checks.CheckLimits = checks.CheckLimits()

    def __post_init__(self) -> None:
        for name in ("val_fraction", "gate_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise BadInputError(
                    f"{name.replace('_', '-')} must be between 0 and 1 (exclusive), got {value}"
                )
        if self.val_fraction + self.gate_fraction >= 1.0:
            raise BadInputError(
                f"val-fraction + gate-fraction must be below 1 (something must be left to train on), "
                f"got {self.val_fraction} + {self.gate_fraction}"
            )


@dataclasses.dataclass(frozen=True)
class PreprocessResult:
    out_dir: Path
    stats: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        return {name: s["count"] for name, s in self.stats["splits"].items()}


def preprocess(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: PreprocessConfig = PreprocessConfig(),
) -> PreprocessResult:
    """Splits, checks and writes a raw dataset.

    Args:
        raw_dir: `cifarflow ingest` output, a folder with the official
            train/test/meta files, or an image folder (`root/<class>/*.jpg`).
        out_dir: where the split arrays and `stats.json` go.
        config: split fractions, seed and check thresholds.

    Returns:
        The output folder and the statistics written to `stats.json`.

    Raises:
        BadInputError: `raw_dir` is missing or not a known layout.
        DataAnomalyError: a schema or statistics check failed.
        IntegrityError: a pickle is corrupt or unsafe.
    """
    started = time.monotonic()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STATS_FILE).unlink(missing_ok=True)  # incomplete until rewritten

    raw = sources.read_raw(raw_dir)
    strata = (
        raw.train.fine_labels.astype(int) * 256 + raw.train.coarse_labels
    )  # fine refines coarse
    test = raw.test
    train_pool = raw.train
    if test is None:
        train_pool, test = stratified_split(
            raw.train, config.test_fraction, config.seed + 1, strata
        )
        strata = train_pool.fine_labels.astype(int) * 256 + train_pool.coarse_labels
    train, val = stratified_split(train_pool, config.val_fraction, config.seed, strata)
    # The gate's share is of the whole pool, like val's; drawn after val so a
    # seed's val split is what it was before the gate split existed.
    gate_counts = stratum_counts(strata, config.gate_fraction)
    train_strata = train.fine_labels.astype(int) * 256 + train.coarse_labels
    train, gate = hold_out(train, train_strata, gate_counts, config.seed + 2)
    splits: dict[str, Split] = {"train": train, "val": val, "gate": gate, "test": test}

    num_classes, num_fine = len(raw.class_names), len(raw.fine_class_names)
    duplicates = checks.find_duplicates(splits)
    results = [
        *checks.check_schema(splits, num_classes, num_fine),
        checks.check_fine_to_coarse(splits),
        *checks.check_class_counts(splits, raw.class_names, config.limits),
        *checks.check_duplicates(duplicates, splits, config.limits),
    ]
    checks.enforce(results)

    for name, split in splits.items():
        write_split(out_dir, name, split)
    stats = {
        "splits": {
            name: statistics.split_statistics(s, num_classes, num_fine)
            for name, s in splits.items()
        },
        "class_names": raw.class_names,
        "fine_class_names": raw.fine_class_names,
        "source": {"kind": raw.kind, "raw_dir": str(raw_dir), "ingest": _ingest_record(raw_dir)},
        "val_fraction": config.val_fraction,
        "gate_fraction": config.gate_fraction,
        "seed": config.seed,
        "duplicates": duplicates,
        "checks": [r.to_json() for r in results],
    }
    write_stats(out_dir, stats)
    counts = ", ".join(f"{n} {len(s)}" for n, s in splits.items())
    across = sum(duplicates["across"].values())
    print(
        f"preprocess: {counts}; {len(results)} checks passed; {across} cross-split duplicates "
        f"({time.monotonic() - started:.1f}s) -> {out_dir}",
        flush=True,
    )
    return PreprocessResult(out_dir, stats)


def _ingest_record(raw_dir: Path) -> dict[str, Any] | None:
    record = raw_dir / official.INGEST_RECORD
    return json.loads(record.read_text()) if record.is_file() else None
