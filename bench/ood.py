"""Out-of-distribution benchmark: how well energy and max-softmax tell CIFAR-100 from what it is not.

    .venv/bin/python bench/ood.py --model DIR [--data DIR] [--images 1000]

In-distribution: the official CIFAR-100 test set (all of it, from the
pipeline's preprocessed `--data`, or ingested and preprocessed from the
archive). Out-of-distribution sets, each `--images` images:

- `corrupt/<name>/s<severity>`: a seeded, class-stratified sample of the same
  test images under an ImageNet-C/CIFAR-C corruption from `corrupt-tta` (as
  bench/robustness.py uses it), at increasing severity. Covariate shift: the
  objects are CIFAR's, the image statistics are not; at severity 1 many are
  hard to tell from clean images, by design.
- `synthetic/<kind>`: images that contain no object at all, generated here
  from a seeded NumPy generator: `uniform_noise` (every pixel uniform in
  0..255), `smooth_noise` (uniform noise at 4x4 to 8x8, upsampled bicubically
  to 32x32: coloured blobs), `constant_colour` (one random RGB colour per
  image), `gratings` (sinusoidal stripes of random orientation, frequency
  and two random colours), `checkerboard` (random square size and colours).

Per score and set: AUROC (out-of-distribution as the positive class, 0.5 is
chance, 1.0 perfect), and the rates at the model's own val threshold
(`reference.json`, 95 % of val passes): `ood_passed`, the share of the set's
images that pass as in-distribution (the false-positive rate at the
threshold, lower is better), and once for the test set `test_flagged`, the
share of real test images flagged (about 5 % by construction). The score
with the higher mean AUROC over all sets is the one the gateway uses
(`--ood-score`, default in cifarflow.serving.gateway.monitoring.config).

Writes `bench/results/ood.json` with the machine, and prints the two scores
side by side.
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
sys.path.insert(0, str(REPO))
from bench.machine import machine_info  # noqa: E402
from bench.robustness import (  # noqa: E402
    DEFAULT_ARCHIVE,
    corrupted_sets,
    official_test_split,
    stratified_sample,
)

RESULTS = REPO / "bench" / "results" / "ood.json"
CORRUPTIONS = ("gaussian_noise", "impulse_noise", "defocus_blur", "fog", "contrast", "pixelate")
SEVERITIES = (1, 3, 5)
SYNTHETIC = ("uniform_noise", "smooth_noise", "constant_colour", "gratings", "checkerboard")


def auroc(in_scores: np.ndarray, out_scores: np.ndarray, higher_passes: bool) -> float:
    """Area under the ROC curve for telling `out` from `in` by the score (ties count half).

    The probability that a random out-of-distribution image looks less
    in-distribution than a random in-distribution one (Mann-Whitney U).

    >>> auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2]), higher_passes=True)
    1.0
    >>> auroc(np.array([1.0, 2.0]), np.array([1.0, 2.0]), higher_passes=False)
    0.5
    """
    sign = 1.0 if higher_passes else -1.0  # signed: larger means more in-distribution
    inside = sign * np.asarray(in_scores, np.float64)
    outside = np.sort(sign * np.asarray(out_scores, np.float64))
    below = np.searchsorted(outside, inside, side="left")  # out images strictly below each in image
    equal = np.searchsorted(outside, inside, side="right") - below
    return float((below + 0.5 * equal).sum() / (len(inside) * len(outside)))


def synthetic_images(kind: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` uint8 images `[count, 32, 32, 3]` of one synthetic kind (module docstring)."""
    from PIL import Image

    if kind == "uniform_noise":
        return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    if kind == "constant_colour":
        colours = rng.integers(0, 256, (count, 1, 1, 3), dtype=np.uint8)
        return np.broadcast_to(colours, (count, 32, 32, 3)).copy()
    out = np.empty((count, 32, 32, 3), dtype=np.uint8)
    y, x = np.mgrid[0:32, 0:32].astype(np.float64)
    for i in range(count):
        if kind == "smooth_noise":
            side = int(rng.integers(4, 9))
            small = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            out[i] = np.asarray(Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC))
            continue
        low, high = rng.integers(0, 256, (2, 3)).astype(np.float64)
        if kind == "gratings":
            angle, period = rng.uniform(0, np.pi), rng.uniform(3, 16)
            phase = (x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period
            weight = (0.5 + 0.5 * np.sin(phase))[..., None]
        elif kind == "checkerboard":
            square = int(rng.integers(2, 9))
            weight = (((x // square) + (y // square)) % 2)[..., None]
        else:
            raise ValueError(f"unknown synthetic kind {kind!r}")
        out[i] = np.clip(np.rint(low + (high - low) * weight), 0, 255).astype(np.uint8)
    return out


def score_table(
    logits_in: np.ndarray, sets: dict[str, np.ndarray], thresholds: dict[str, float]
) -> dict[str, dict[str, object]]:
    """Per score: the test set's flagged share, and per OOD set its AUROC and passed share."""
    from cifarflow import ood_scores

    table: dict[str, dict[str, object]] = {}
    for name in ood_scores.SCORES:
        higher = ood_scores.HIGHER_PASSES[name]
        inside = ood_scores.score(name, logits_in)
        threshold = thresholds[name]
        per_set = {}
        for set_name, logits in sets.items():
            outside = ood_scores.score(name, logits)
            per_set[set_name] = {
                "auroc": round(auroc(inside, outside, higher), 4),
                "ood_passed": round(float(ood_scores.passes(name, outside, threshold).mean()), 4),
            }
        aurocs = [v["auroc"] for v in per_set.values()]
        table[name] = {
            "threshold": threshold,
            "test_flagged": round(float(1 - ood_scores.passes(name, inside, threshold).mean()), 4),
            "mean_auroc": round(float(np.mean(aurocs)), 4),
            "mean_auroc_corrupt": _mean(per_set, "corrupt/", "auroc"),
            "mean_auroc_synthetic": _mean(per_set, "synthetic/", "auroc"),
            "mean_ood_passed": round(
                float(np.mean([v["ood_passed"] for v in per_set.values()])), 4
            ),
            "sets": per_set,
        }
    return table


def _mean(per_set: dict[str, dict[str, float]], prefix: str, key: str) -> float | None:
    values = [v[key] for name, v in per_set.items() if name.startswith(prefix)]
    return round(float(np.mean(values)), 4) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="train's output folder (SavedModel + reference.json)"
    )
    parser.add_argument("--data", help="preprocessed data folder holding the test split")
    parser.add_argument(
        "--archive", default=str(DEFAULT_ARCHIVE), help="without --data: the archive"
    )
    parser.add_argument("--images", type=int, default=1000, help="images per OOD set")
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS))
    parser.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be at least 1")

    from cifarflow.components.candidate import read_reference
    from cifarflow.components.pixel_predictions import load_signature, predict_arrays
    from cifarflow.data.splits import load_split

    started = time.monotonic()
    reference = read_reference(args.model)
    if reference is None:
        print(
            f"error: {args.model} has no reference.json (train and evaluate it first)",
            file=sys.stderr,
        )
        return 2
    if args.data:
        split = load_split(args.data, "test", mmap=False)
        images, labels = np.asarray(split.images), np.asarray(split.coarse_labels, np.int64)
    else:
        work = Path(tempfile.gettempdir()) / "cifarflow-bench" / "robustness"
        images, labels = official_test_split(args.archive, work)
    chosen = stratified_sample(labels, args.images, args.seed)
    sets: dict[str, np.ndarray] = {}
    corrupted = corrupted_sets(
        images[chosen], args.corruptions, args.severities, args.seed, args.workers
    )
    for (corruption, severity), pixels in corrupted.items():
        sets[f"corrupt/{corruption}/s{severity}"] = pixels
    rng = np.random.default_rng(args.seed)
    for kind in SYNTHETIC:
        sets[f"synthetic/{kind}"] = synthetic_images(kind, args.images, rng)

    signature = load_signature(args.model)
    logits_in = predict_arrays(signature, images).logits
    logits = {name: predict_arrays(signature, pixels).logits for name, pixels in sets.items()}
    thresholds = {name: ref.threshold for name, ref in reference.scores.scores.items()}
    table = score_table(logits_in, logits, thresholds)
    chosen_score = max(table, key=lambda name: table[name]["mean_auroc"])
    record = {
        "model": str(args.model),
        "in_distribution": f"CIFAR-100 official test set, {len(images)} images",
        "reference": {
            "val_images": reference.scores.images,
            "pass_rate": next(iter(reference.scores.scores.values())).pass_rate,
            "temperature": reference.scores.temperature,
        },
        "ood_images_per_set": args.images,
        "corruption_library": "corrupt-tta (ImageNet-C parameters at 32x32), as bench/robustness.py",
        "seed": args.seed,
        "scores": table,
        "chosen": chosen_score,
        "machine": machine_info(),
        "seconds": round(time.monotonic() - started, 1),
        "note": args.note,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    names = list(table)
    print(f"{'set':<34}" + "".join(f"{n + ' AUROC':>20}{n + ' passed':>20}" for n in names))
    for set_name in sets:
        row = "".join(
            f"{table[n]['sets'][set_name]['auroc']:>20.4f}{table[n]['sets'][set_name]['ood_passed']:>20.4f}"
            for n in names
        )
        print(f"{set_name:<34}{row}")
    for key in (
        "mean_auroc",
        "mean_auroc_corrupt",
        "mean_auroc_synthetic",
        "mean_ood_passed",
        "test_flagged",
    ):
        values = [table[n][key] for n in names]
        ratio = f"  ratio {values[0] / values[1]:.3f}" if values[1] else ""
        print(
            f"{key:<34}"
            + "".join(f"{v:>40}" for v in values)
            + f"   ({names[0]}/{names[1]}{ratio})"
        )
    print(f"chosen: {chosen_score} -> {out} ({record['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
