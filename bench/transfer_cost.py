"""What one epoch of the `reference` grid (the 2023 transfer heads) costs on this machine.

    .venv/bin/python bench/transfer_cost.py --data DIR [--trial 0] [--train-images 1024]

Runs the grid's trial through the pipeline's own `train` for a few epochs on
a class-stratified slice of preprocess's train and val splits, and scales the
last epoch's time (training plus scoring val, after the first epoch's tracing)
to the full splits. `weights: none` stands in for `imagenet`: the weights'
values do not change the work, and nothing can be downloaded here. Results
are appended to `bench/results/transfer_cost.json` with the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "transfer_cost.json"
sys.path.insert(0, str(REPO / "bench"))

from robustness import stratified_sample  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="preprocess's output folder")
    parser.add_argument("--config", default="reference", help="a shipped grid's name")
    parser.add_argument("--trial", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=1024)
    parser.add_argument("--val-images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="the first one traces the graph")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--note", default="", help="free text stored with the record")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch includes tracing")

    from machine import machine_info
    from records import append_records

    from cifarflow.components.train.config import TrialConfig
    from cifarflow.components.train.executor import train
    from cifarflow.configs import CONFIG_DIR
    from cifarflow.data.splits import load_split, load_stats, write_split, write_stats
    from cifarflow.grid import load_grid

    trial = load_grid(CONFIG_DIR / f"{args.config}.yaml").trials[args.trial]
    trial = TrialConfig.from_dict(
        {**trial.to_dict(), "weights": "none", "epochs": args.epochs, "early_stopping_patience": 0}
    )
    full = load_stats(args.data)["splits"]
    with tempfile.TemporaryDirectory(prefix="transfer-cost-") as work:
        small = Path(work) / "data"
        for name, count in (("train", args.train_images), ("val", args.val_images)):
            split = load_split(args.data, name, mmap=False)
            chosen = stratified_sample(np.asarray(split.coarse_labels), count, seed=0)
            write_split(
                small,
                name,
                type(split)(
                    split.images[chosen], split.coarse_labels[chosen], split.fine_labels[chosen]
                ),
            )
        write_split(small, "test", load_split(small, "val", mmap=False))
        write_stats(small, load_stats(args.data))
        started = time.monotonic()
        train(
            small,
            trial,
            Path(work) / "out",
            log=lambda line: print(line, file=sys.stderr, flush=True),
            export_tflite=False,
        )
        history = json.loads((Path(work) / "out" / "history.json").read_text())
        train_images = len(load_split(small, "train", mmap=False))
        val_images = len(load_split(small, "val", mmap=False))
    epoch_seconds = [round(float(row["seconds"]), 1) for row in history]
    last = epoch_seconds[-1]
    # The last epoch's time split by image: a val image is a forward pass only, so
    # scaling both by one rate over-counts val a little; say so rather than guess.
    per_image = last / (train_images + val_images)
    full_images = full["train"]["count"] + full["val"]["count"]
    record = {
        "config": args.config,
        "trial": args.trial,
        "architecture": trial.architecture,
        "input_size": trial.input_size,
        "freeze_base": trial.freeze_base,
        "batch_size": trial.batch_size,
        "train_images": train_images,
        "val_images": val_images,
        "epoch_seconds": epoch_seconds,
        "images_per_second": round((train_images + val_images) / last, 1),
        "full_epoch_minutes_estimate": round(per_image * full_images / 60, 1),
        "full_split_images": full_images,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine_info(),
        "note": args.note,
    }
    print(
        f"{trial.architecture} at {trial.input_size}px, frozen={trial.freeze_base}: "
        f"epochs {epoch_seconds} s on {train_images}+{val_images} images; "
        f"{record['images_per_second']} img/s; full {full_images}-image epoch ~ "
        f"{record['full_epoch_minutes_estimate']} min"
    )
    results = Path(args.results)
    append_records(results, [record])
    print(f"record -> {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
