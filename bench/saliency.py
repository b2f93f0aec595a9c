"""Does the `explain` map mean something, and what does an explanation cost?

    .venv/bin/python bench/saliency.py --model DIR --data DIR [--images 1000] [--window 8]
                                       [--random-windows 5] [--latency-seconds 20]

`--model` is a SavedModel with the `explain` signature (a train output folder
exported before it existed gets it with `cifarflow train --export-only
--no-tflite --out DIR`, on a copy); `--data` a preprocessed dataset (its
`test` split is used).

1. **masking** (the deletion test of the saliency literature): for a seeded,
   class-stratified sample of test images, `explain` gives the predicted
   class, its probability and the map. The `window`×`window` square with the
   largest sum of the map is replaced by the image's own mean colour, and so
   are `random-windows` uniformly placed squares of the same size, and the
   square with the smallest sum. `predict_pixels` scores each masked image;
   a drop is the predicted class's probability before minus after. A map
   that means something makes the salient drop larger than the random one:
   the record has both means, the paired differences' mean with a 95 %
   bootstrap interval, the share of images where the salient drop is the
   larger, and a Wilcoxon signed-rank test and a paired t-test (scipy).
   Images go to `explain` as PNG, so the model sees exactly the test pixels.
2. **latency**: `explain` against `serving_default` on the same PNG images,
   called in this process in alternating rounds (one image, and a batch of
   32): wall-time p50 and p90 per call, the process's median CPU time per
   call (steadier on a shared machine), and the ratios.

Writes `bench/results/saliency.json` (the machine and its load average, the
model, the figures) and prints them side by side.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "saliency.json"
EXPLAIN_SIGNATURE = "explain"


def window_sums(maps: np.ndarray, window: int) -> np.ndarray:
    """Sum of each map over every `window`×`window` square (stride 1), from an integral image.

    Args:
        maps: float [N, H, W].
        window: the square's side.

    Returns:
        float64 [N, H - window + 1, W - window + 1]; entry (y, x) is the square
        whose top left pixel is (y, x).

    >>> window_sums(np.arange(16, dtype=float).reshape(1, 4, 4), 2)[0]
    array([[10., 14., 18.],
           [26., 30., 34.],
           [42., 46., 50.]])
    """
    integral = np.pad(np.cumsum(np.cumsum(maps.astype(np.float64), 1), 2), ((0, 0), (1, 0), (1, 0)))
    return (
        integral[:, window:, window:]
        - integral[:, :-window, window:]
        - integral[:, window:, :-window]
        + integral[:, :-window, :-window]
    )


def extreme_windows(maps: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Top left corners (y, x) of each map's most and least salient square: two int [N, 2]."""
    sums = window_sums(maps, window)
    flat = sums.reshape(len(sums), -1)
    width = sums.shape[2]
    most, least = flat.argmax(axis=1), flat.argmin(axis=1)
    return np.stack([most // width, most % width], 1), np.stack([least // width, least % width], 1)


def mask_windows(images: np.ndarray, corners: np.ndarray, window: int) -> np.ndarray:
    """Each image with its square (top left `corners[i]`) replaced by the image's mean colour.

    Args:
        images: uint8 [N, H, W, 3].
        corners: int [N, 2], (y, x).
        window: the square's side.
    """
    masked = images.copy()
    means = np.round(images.reshape(len(images), -1, 3).mean(axis=1)).astype(np.uint8)
    for image, (y, x), mean in zip(masked, corners, means, strict=True):
        image[y : y + window, x : x + window] = mean
    return masked


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _predict(signature, images: np.ndarray, batch: int = 256) -> np.ndarray:
    import tensorflow as tf

    return np.concatenate(
        [
            signature(images=tf.constant(images[i : i + batch]))["probabilities"].numpy()
            for i in range(0, len(images), batch)
        ]
    )


def masking_test(loaded, images: np.ndarray, window: int, random_windows: int, seed: int) -> dict:
    """The deletion test on `images` (uint8 [N, 32, 32, 3]); see the module docstring."""
    import tensorflow as tf
    from scipy import stats

    explain = loaded.signatures[EXPLAIN_SIGNATURE]
    pixels = loaded.signatures["predict_pixels"]
    maps, class_ids, before = [], [], []
    for start in range(0, len(images), 64):
        out = explain(image_bytes=tf.constant([_png(p) for p in images[start : start + 64]]))
        maps.append(out["saliency"].numpy())
        class_ids.append(out["class_ids"].numpy())
        before.append(out["probability"].numpy())
    saliency = np.concatenate(maps)
    classes = np.concatenate(class_ids)
    probability = np.concatenate(before).astype(np.float64)
    rows = np.arange(len(images))

    def drop(masked: np.ndarray) -> np.ndarray:
        return probability - _predict(pixels, masked)[rows, classes]

    most, least = extreme_windows(saliency, window)
    salient_drop = drop(mask_windows(images, most, window))
    least_drop = drop(mask_windows(images, least, window))
    rng = np.random.default_rng(seed)
    span = images.shape[1] - window + 1
    random_drop = np.mean(
        [
            drop(mask_windows(images, rng.integers(0, span, size=(len(images), 2)), window))
            for _ in range(random_windows)
        ],
        axis=0,
    )
    difference = salient_drop - random_drop
    boot = rng.integers(0, len(difference), size=(2000, len(difference)))
    low, high = np.percentile(difference[boot].mean(axis=1), [2.5, 97.5])
    wilcoxon = stats.wilcoxon(salient_drop, random_drop, alternative="greater")
    t_test = stats.ttest_rel(salient_drop, random_drop, alternative="greater")
    return {
        "images": len(images),
        "window": window,
        "random_windows_per_image": random_windows,
        "fill": "the image's own mean colour",
        "mean_probability_before": round(float(probability.mean()), 4),
        "mean_drop_salient": round(float(salient_drop.mean()), 4),
        "mean_drop_random": round(float(random_drop.mean()), 4),
        "mean_drop_least_salient": round(float(least_drop.mean()), 4),
        "mean_difference_salient_minus_random": round(float(difference.mean()), 4),
        "difference_95ci_bootstrap": [round(float(low), 4), round(float(high), 4)],
        "share_salient_drop_larger": round(float((difference > 0).mean()), 4),
        "wilcoxon_signed_rank": {
            "alternative": "salient > random",
            "statistic": float(wilcoxon.statistic),
            "p_value": float(wilcoxon.pvalue),
        },
        "paired_t_test": {
            "alternative": "salient > random",
            "t": round(float(t_test.statistic), 3),
            "p_value": float(t_test.pvalue),
        },
    }


def latency(loaded, images: np.ndarray, seconds: float) -> dict:
    """p50/p90 ms per call of serving_default and explain, rounds alternating, same PNG images."""
    import tensorflow as tf

    figures: dict[str, dict] = {}
    for batch in (1, 32):
        encoded = tf.constant([_png(p) for p in images[:batch]])
        calls = {name: loaded.signatures[name] for name in ("serving_default", EXPLAIN_SIGNATURE)}
        times: dict[str, list[float]] = {name: [] for name in calls}
        cpu: dict[str, list[float]] = {name: [] for name in calls}
        for call in calls.values():  # trace and warm up
            call(image_bytes=encoded)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name, call in calls.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                call(image_bytes=encoded)
                times[name].append((time.perf_counter() - started) * 1000)
                cpu[name].append((time.process_time() - cpu_started) * 1000)
        row: dict[str, object] = {"calls_each": len(times["serving_default"])}
        for name, values in times.items():
            row[name] = {
                "p50_ms": round(float(np.percentile(values, 50)), 3),
                "p90_ms": round(float(np.percentile(values, 90)), 3),
                # CPU time of the whole process (all TF threads): steadier than
                # wall time on a machine other work shares.
                "cpu_ms_median": round(float(np.median(cpu[name])), 3),
            }
        default, explained = row["serving_default"], row[EXPLAIN_SIGNATURE]
        row["explain_over_default_p50"] = round(explained["p50_ms"] / default["p50_ms"], 2)  # type: ignore[index]
        row["explain_over_default_cpu"] = round(
            explained["cpu_ms_median"] / max(default["cpu_ms_median"], 1e-9),  # type: ignore[index]
            2,
        )
        figures[f"batch_{batch}"] = row
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="SavedModel folder with the explain signature"
    )
    parser.add_argument("--data", required=True, help="preprocessed dataset folder (test split)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--random-windows", type=int, default=5)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from bench.machine import machine_info
    from bench.robustness import stratified_sample
    from cifarflow.data.splits import load_split

    loaded = tf.saved_model.load(args.model)
    if EXPLAIN_SIGNATURE not in loaded.signatures:
        print(
            f"{args.model} has no {EXPLAIN_SIGNATURE!r} signature: re-export a copy with "
            "`cifarflow train --export-only --no-tflite --out COPY`",
            file=sys.stderr,
        )
        return 2
    test = load_split(args.data, "test")
    picked = stratified_sample(np.asarray(test.coarse_labels), args.images, args.seed)
    images = np.ascontiguousarray(test.images[picked])
    load_before = os.getloadavg()
    masking = masking_test(loaded, images, args.window, args.random_windows, args.seed)
    cost = latency(loaded, images, args.latency_seconds)
    summary_file = Path(args.model) / "train_summary.json"
    record = {
        "machine": machine_info(),
        "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "model": str(args.model),
        "train_summary": json.loads(summary_file.read_text()).get("trial")
        if summary_file.is_file()
        else None,
        "data": str(args.data),
        "seed": args.seed,
        "method": "Grad-CAM on the last convolutional block (components/train/saliency.py)",
        "masking": masking,
        "latency_in_process": cost,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"masking {args.window}x{args.window} on {masking['images']} test images:")
    print(
        f"  mean drop  salient {masking['mean_drop_salient']:.4f}  random {masking['mean_drop_random']:.4f}"
        f"  least salient {masking['mean_drop_least_salient']:.4f}"
        f"  salient/random {masking['mean_drop_salient'] / max(masking['mean_drop_random'], 1e-9):.2f}x"
    )
    print(
        f"  salient - random {masking['mean_difference_salient_minus_random']:.4f} "
        f"(95% CI {masking['difference_95ci_bootstrap']}), larger on "
        f"{100 * masking['share_salient_drop_larger']:.1f}% of images, Wilcoxon p = "
        f"{masking['wilcoxon_signed_rank']['p_value']:.2e}"
    )
    for batch, row in cost.items():
        print(
            f"latency {batch}: serving_default p50 {row['serving_default']['p50_ms']} ms, "
            f"explain p50 {row[EXPLAIN_SIGNATURE]['p50_ms']} ms ({row['explain_over_default_p50']}x); "
            f"CPU per call {row['serving_default']['cpu_ms_median']} vs "
            f"{row[EXPLAIN_SIGNATURE]['cpu_ms_median']} ms ({row['explain_over_default_cpu']}x)"
        )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
