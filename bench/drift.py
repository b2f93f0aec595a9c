"""Drift benchmark: the gateway's drift windows on real CIFAR-100 test traffic, clean and shifted.

    .venv/bin/python bench/drift.py --model DIR --data DIR [--window 500] [--repeats 5]

Runs the gateway's own monitor code (cifarflow.serving.gateway.monitoring:
the per-image features, the sliding windows, the PSI against the model's
reference.json) over image streams, evaluating every `update_every` images
as the gateway does:

1. **false alarms**: the official test set (in-distribution: the same
   distribution as the training data the reference was taken from, but
   other images) in `--repeats` random orders. An alarm is an evaluation
   with any feature's PSI above `--threshold`; the false-alarm rate is
   alarms per evaluation. The highest PSI each feature reached is recorded.
2. **detection**: a full window of clean test images, then other test
   images darkened (pixel values times 0.8, 0.6, 0.4), blurred (Gaussian,
   radius 0.5, 1, 1.5 pixels at 32x32) or turned to grayscale (BT.601 luma
   in all three channels), fed one by one: how many shifted images until
   the first alarm, and which feature raised it (median over the repeats;
   none within two windows is recorded as null).

The class window is fed the model's predicted class of each image
(`predict_pixels`), as the gateway feeds it the answers. Writes
`bench/results/drift.json` with the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import machine_info  # noqa: E402

RESULTS = REPO / "bench" / "results" / "drift.json"


def darken(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    def apply(images: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(images * factor), 0, 255).astype(np.uint8)

    return apply


def blur(radius: float) -> Callable[[np.ndarray], np.ndarray]:
    def apply(images: np.ndarray) -> np.ndarray:
        from PIL import Image, ImageFilter

        return np.stack(
            [
                np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(radius)))
                for i in images
            ]
        )

    return apply


def grayscale(images: np.ndarray) -> np.ndarray:
    luma = np.clip(np.rint(images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])), 0, 255)
    return np.repeat(luma.astype(np.uint8)[..., None], 3, axis=-1)


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "darken_0.8": darken(0.8),
    "darken_0.6": darken(0.6),
    "darken_0.4": darken(0.4),
    "blur_0.5": blur(0.5),
    "blur_1.0": blur(1.0),
    "blur_1.5": blur(1.5),
    "grayscale": grayscale,
}


class Stream:
    """The gateway's windows fed image by image, evaluated every `update_every` images."""

    def __init__(self, reference, window: int, update_every: int, threshold: float) -> None:
        from cifarflow.serving.gateway.monitoring.monitor import DriftWindows

        self.reference = reference
        self.windows = DriftWindows(window, len(reference.class_names))
        self.update_every = update_every
        self.threshold = threshold
        self.fed = 0

    def feed(self, vector: np.ndarray, class_id: int) -> dict[str, float] | None:
        """Adds one image; the PSI per feature when this is an evaluation with a full window."""
        self.windows.images.add(vector)
        self.windows.classes.add(class_id)
        self.fed += 1
        if self.fed % self.update_every:
            return None
        return self.windows.psi(self.reference) or None


def feature_vectors(images: np.ndarray) -> np.ndarray:
    """The gateway's count vector of each image, measured as its monitor does: in batches."""
    from cifarflow.serving.gateway.monitoring.features import images_features
    from cifarflow.serving.gateway.monitoring.monitor import FLUSH_IMAGES

    return np.concatenate(
        [
            images_features(images[start : start + FLUSH_IMAGES])
            for start in range(0, len(images), FLUSH_IMAGES)
        ]
    )


def false_alarms(reference, vectors, classes, args, rng) -> dict[str, object]:
    evaluations = alarms = streams_alarmed = 0
    highest: dict[str, float] = {}
    for _ in range(args.repeats):
        stream = Stream(reference, args.window, args.update_every, args.threshold)
        alarmed = False
        for index in rng.permutation(len(vectors)):
            psi = stream.feed(vectors[index], int(classes[index]))
            if psi is None:
                continue
            evaluations += 1
            for name, value in psi.items():
                highest[name] = max(highest.get(name, 0.0), value)
            if max(psi.values()) > args.threshold:
                alarms += 1
                alarmed = True
        streams_alarmed += alarmed
    return {
        "streams": args.repeats,
        "images_per_stream": len(vectors),
        "evaluations": evaluations,
        "alarms": alarms,
        "false_alarm_rate": round(alarms / max(1, evaluations), 5),
        "streams_with_any_alarm": streams_alarmed,
        "highest_psi": {name: round(value, 4) for name, value in sorted(highest.items())},
    }


def detection(reference, images, vectors, classes, predict, shift, args, rng) -> dict[str, object]:
    took, first_features = [], []
    for _ in range(args.repeats):
        order = rng.permutation(len(images))
        clean, shifted_index = order[: args.window], order[args.window : 3 * args.window]
        stream = Stream(reference, args.window, args.update_every, args.threshold)
        for index in clean:
            stream.feed(vectors[index], int(classes[index]))
        shifted = shift(images[shifted_index])
        shifted_vectors = feature_vectors(shifted)
        shifted_classes = predict(shifted)
        found = None
        for count, (vector, class_id) in enumerate(
            zip(shifted_vectors, shifted_classes, strict=True), 1
        ):
            psi = stream.feed(vector, int(class_id))
            if psi and max(psi.values()) > args.threshold:
                found = (count, max(psi, key=lambda name: psi[name]))
                break
        took.append(found[0] if found else None)
        first_features.append(found[1] if found else None)
    detected = [t for t in took if t is not None]
    return {
        "images_until_alarm": took,
        "median_images_until_alarm": int(np.median(detected))
        if len(detected) == len(took)
        else None,
        "feature": max(set(first_features), key=first_features.count),
    }


def main(argv: list[str] | None = None) -> int:
    from cifarflow.serving.gateway.monitoring.config import (
        DEFAULT_DRIFT_THRESHOLD,
        DEFAULT_WINDOW,
        MonitorConfig,
    )

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="train's output folder (SavedModel + reference.json)"
    )
    parser.add_argument(
        "--data", required=True, help="preprocessed data folder holding the test split"
    )
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--threshold", type=float, default=DEFAULT_DRIFT_THRESHOLD)
    parser.add_argument("--update-every", type=int, default=MonitorConfig().update_every)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)

    from cifarflow.components.candidate import read_reference
    from cifarflow.components.pixel_predictions import load_signature, predict_arrays
    from cifarflow.data.splits import load_split

    started = time.monotonic()
    reference = read_reference(args.model)
    if reference is None:
        print(f"error: {args.model} has no reference.json", file=sys.stderr)
        return 2
    images = np.asarray(load_split(args.data, "test", mmap=False).images)
    signature = load_signature(args.model)

    def predict(pixels: np.ndarray) -> np.ndarray:
        return predict_arrays(signature, pixels).class_ids

    classes = predict(images)
    vectors = feature_vectors(images)
    rng = np.random.default_rng(args.seed)
    record: dict[str, object] = {
        "model": str(args.model),
        "traffic": f"CIFAR-100 official test set ({len(images)} images) as 32x32 pixels",
        "reference": f"{reference.data.split} ({reference.data.images} images); classes: "
        f"{reference.scores.split} predictions ({reference.scores.images})",
        "window": args.window,
        "update_every": args.update_every,
        "threshold": args.threshold,
        "false_alarms": false_alarms(reference, vectors, classes, args, rng),
        "detection": {
            name: detection(reference, images, vectors, classes, predict, shift, args, rng)
            for name, shift in SHIFTS.items()
        },
        "machine": machine_info(),
        "note": args.note,
    }
    record["seconds"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    alarms = record["false_alarms"]
    print(json.dumps(alarms))
    for name, found in record["detection"].items():
        print(f"{name:<12} images until alarm: {found['images_until_alarm']} ({found['feature']})")
    print(f"-> {out} ({record['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
