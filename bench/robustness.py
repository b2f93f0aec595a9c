"""Robustness benchmark: accuracy under standard image corruptions and through the serving path.

    .venv/bin/python bench/robustness.py --model DIR [--model DIR ...] [--images 2000]

Every model given is scored on the same images in one run, so two models
(today's and a candidate) are compared side by side:

1. **clean**: `predict_pixels` on a seeded, class-stratified sample of the
   official test set, split by the pipeline's own ingest and preprocess.
2. **corruptions**: the 15 ImageNet-C/CIFAR-C corruptions in four families
   (noise, blur, weather, digital) at severities 1-5, from `corrupt-tta` (a
   maintained fork of `imagecorruptions` that runs on NumPy 2). Its
   parameters are ImageNet-C's, applied to the 32x32 images, so blur and
   weather are harsher than in the published CIFAR-100-C files; the numbers
   compare models with each other, not with papers. Per corruption and
   severity: accuracy; per family: mean accuracy and the drop relative to
   clean; overall: the mean corruption accuracy.
3. **serving path**: each image upsampled (bicubic) to a photo-like size and
   encoded as JPEG at several qualities, then sent through `serving_default`,
   so the in-graph decode and resize are part of what is measured; each also
   with sensor-like noise at the photo's size (`--serving-noise-sigmas`).

Results are appended to `bench/results/robustness.json`, one record per model,
with the machine and a run id shared by the models of one run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "robustness.json"
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar-100-python.tar.gz"

FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog"),
    "digital": ("brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
CORRUPTIONS = tuple(name for names in FAMILIES.values() for name in names)
SEVERITIES = (1, 2, 3, 4, 5)
# Photos with and without sensor-like noise (sigma in 0..255 levels): the
# noise gives a photo detail finer than 32 px, as real photos have.
PHOTO_NOISE_SIGMAS = (0.0, 8.0)


def stratified_sample(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of `count` images (all when fewer), the classes in their dataset proportions.

    Args:
        labels: class ids of the whole set.
        count: how many to pick.
        seed: the same seed picks the same images.

    Returns:
        Sorted indices into `labels`.
    """
    if count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    classes = np.unique(labels)
    for label in classes:
        members = np.flatnonzero(labels == label)
        share = round(count * len(members) / len(labels))
        picked.append(rng.choice(members, size=min(share, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def corrupt_images(images: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """`images` (uint8 [N, 32, 32, 3]) under one corruption, rounded back to uint8.

    The random corruptions (noise, snow, ...) draw from NumPy's global
    generator, which `corrupt-tta` uses; seeding it here makes a run repeatable.
    """
    from corrupt_tta import corrupt

    np.random.seed(seed)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        corrupted = np.asarray(corrupt(image, severity=severity, corruption_name=corruption))
        out[i] = np.clip(np.rint(corrupted), 0, 255).astype(np.uint8)
    return out


def _corrupt_job(args: tuple[np.ndarray, str, int, int]) -> np.ndarray:
    return corrupt_images(*args)


def corrupted_sets(
    images: np.ndarray,
    corruptions: Sequence[str],
    severities: Sequence[int],
    seed: int,
    workers: int,
) -> dict[tuple[str, int], np.ndarray]:
    """Every (corruption, severity) version of `images`, made once for all models."""
    jobs = [
        (corruption, severity, seed + 1000 * index + severity)
        for index, corruption in enumerate(corruptions)
        for severity in severities
    ]
    started = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        made = pool.map(_corrupt_job, [(images, c, s, job_seed) for c, s, job_seed in jobs])
        sets = {}
        for (corruption, severity, _), result in zip(jobs, made, strict=True):
            sets[(corruption, severity)] = result
            print(
                f"corrupted: {corruption} severity {severity} "
                f"({len(sets)}/{len(jobs)}, {time.monotonic() - started:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
    return sets


def photo_case(size: int, quality: int, noise_sigma: float) -> str:
    """The name a photo case is recorded under, e.g. `jpeg_224px_q75_noise8`."""
    return f"jpeg_{size}px_q{quality}" + (f"_noise{noise_sigma:g}" if noise_sigma else "")


def jpeg_photos(
    images: np.ndarray, size: int, quality: int, noise_sigma: float = 0.0, seed: int = 0
) -> list[bytes]:
    """Each image upsampled (bicubic) to `size` x `size` and encoded as a JPEG at `quality`.

    With `noise_sigma` (in 0..255 levels), Gaussian noise is added at the
    photo's own resolution before encoding, as a camera sensor adds it: detail
    finer than 32 px that an upsampled 32 px image otherwise lacks, and that a
    resize to 32 px must average away rather than sample.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = []
    for image in images:
        big = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
        if noise_sigma > 0:
            noisy = np.asarray(big, np.float32) + rng.normal(0.0, noise_sigma, (size, size, 3))
            big = Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        big.save(buffer, format="JPEG", quality=quality)
        photos.append(buffer.getvalue())
    return photos


def serving_default_class_ids(serve, photos: Sequence[bytes], batch: int) -> np.ndarray:
    """Class ids from `serving_default` (decode and resize in the graph)."""
    import tensorflow as tf

    ids = []
    for start in range(0, len(photos), batch):
        chunk = tf.constant(list(photos[start : start + batch]), dtype=tf.string)
        ids.append(serve(image_bytes=chunk)["class_ids"].numpy())
    return np.concatenate(ids).astype(np.int64)


def family_summary(
    clean_accuracy: float, by_corruption: dict[str, dict[int, float]]
) -> dict[str, dict[str, float]]:
    """Mean accuracy per family over its corruptions and severities, and its drop relative to clean."""
    summary = {}
    for family, names in FAMILIES.items():
        scores = [
            acc for name in names if name in by_corruption for acc in by_corruption[name].values()
        ]
        if not scores:
            continue
        mean = float(np.mean(scores))
        drop = (clean_accuracy - mean) / clean_accuracy if clean_accuracy > 0 else float("nan")
        summary[family] = {"accuracy": round(mean, 4), "relative_drop": round(drop, 4)}
    return summary


def default_work(source: str) -> Path:
    """The split cache for `source`: one folder per archive, so another archive never reuses it."""
    key = "sample" if source == "sample" else str(Path(source).resolve())
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "cifarflow-bench" / f"robustness-{digest}"


def official_test_split(source: str, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """The official test split's pixels and coarse labels, via the pipeline's ingest and preprocess.

    Args:
        source: what `cifarflow ingest --source` takes: the archive's path, or `sample`.
        work: cache folder; a second run reuses the split.
    """
    from cifarflow.components.ingest.executor import ingest
    from cifarflow.components.preprocess.executor import preprocess
    from cifarflow.data.splits import has_split, load_split

    data = work / "data"
    if not has_split(data, "test"):
        ingest(source, work / "raw", cache_dir=work / "cache")
        preprocess(work / "raw", data)
    split = load_split(data, "test", mmap=False)
    return np.asarray(split.images), np.asarray(split.coarse_labels, dtype=np.int64)


def score_model(
    model_dir: str,
    images: np.ndarray,
    labels: np.ndarray,
    corrupted: dict[tuple[str, int], np.ndarray],
    serving: dict[str, list[bytes]],
    serving_index: np.ndarray,
    batch: int,
) -> dict[str, object]:
    """One model's record: clean, per-corruption, per-family and serving-path accuracy."""
    from cifarflow.components.pixel_predictions import load_signature, predict_arrays

    signature = load_signature(model_dir)

    def accuracy(pixels: np.ndarray, truth: np.ndarray) -> float:
        predicted = predict_arrays(signature, pixels, batch).class_ids
        return round(float(np.mean(predicted == truth)), 4)

    clean = accuracy(images, labels)
    by_corruption: dict[str, dict[int, float]] = {}
    for (corruption, severity), pixels in corrupted.items():
        by_corruption.setdefault(corruption, {})[severity] = accuracy(pixels, labels)
    every = [acc for severities in by_corruption.values() for acc in severities.values()]
    serving_truth = labels[serving_index]
    serve = load_signature(model_dir, "serving_default") if serving else None
    serving_path = {
        case: round(
            float(np.mean(serving_default_class_ids(serve, photos, batch) == serving_truth)), 4
        )
        for case, photos in serving.items()
    }
    return {
        "model": str(model_dir),
        "clean_accuracy": clean,
        "mean_corruption_accuracy": round(float(np.mean(every)), 4) if every else None,
        "families": family_summary(clean, by_corruption),
        "corruptions": {name: dict(sorted(s.items())) for name, s in by_corruption.items()},
        "serving_path": {
            "clean_pixels_accuracy": accuracy(images[serving_index], serving_truth),
            **serving_path,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="DIR",
        help="a SavedModel folder (train's output or a store version); repeat to compare models",
    )
    parser.add_argument("--label", action="append", default=[], help="a name per --model, in order")
    parser.add_argument(
        "--archive",
        default=str(DEFAULT_ARCHIVE),
        help="official-format archive, or 'sample' for the one shipped in the package",
    )
    parser.add_argument(
        "--work",
        default=None,
        help="where the split data is cached (default: a folder per archive under the temp dir)",
    )
    parser.add_argument("--images", type=int, default=2000, help="test images scored (stratified)")
    parser.add_argument("--seed", type=int, default=0, help="picks the images and the noise")
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=CORRUPTIONS)
    parser.add_argument(
        "--severities", nargs="+", type=int, default=list(SEVERITIES), choices=SEVERITIES
    )
    parser.add_argument("--serving-images", type=int, default=500, help="images sent as photos")
    parser.add_argument("--serving-sizes", nargs="+", type=int, default=[224, 512, 1024])
    parser.add_argument("--serving-qualities", nargs="+", type=int, default=[95, 75, 40])
    parser.add_argument(
        "--serving-noise-sigmas",
        nargs="+",
        type=float,
        default=list(PHOTO_NOISE_SIGMAS),
        help="sensor-like noise added to the photos at their size, in 0..255 levels (0: none)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument(
        "--results", default=str(RESULTS), help="JSON list the records are appended to"
    )
    parser.add_argument("--note", default="", help="free text stored with each record")
    args = parser.parse_args(argv)
    if args.label and len(args.label) != len(args.model):
        parser.error("give one --label per --model, or none")
    if args.images < 1 or args.serving_images < 0:
        parser.error("--images must be at least 1 and --serving-images at least 0")

    sys.path.insert(0, str(REPO / "bench"))
    from machine import machine_info
    from records import append_records

    started = time.monotonic()
    work = Path(args.work or default_work(args.archive))
    all_images, all_labels = official_test_split(args.archive, work)
    chosen = stratified_sample(all_labels, args.images, args.seed)
    images, labels = all_images[chosen], all_labels[chosen]
    corrupted = corrupted_sets(images, args.corruptions, args.severities, args.seed, args.workers)
    serving_index = stratified_sample(labels, args.serving_images, args.seed + 1)
    serving = (
        {}
        if len(serving_index) == 0
        else {
            photo_case(size, quality, sigma): jpeg_photos(
                images[serving_index], size, quality, noise_sigma=sigma, seed=args.seed
            )
            for size in args.serving_sizes
            for quality in args.serving_qualities
            for sigma in args.serving_noise_sigmas
        }
    )
    run_id = uuid.uuid4().hex[:12]
    machine = machine_info()
    records = []
    for index, model_dir in enumerate(args.model):
        record = {
            "run_id": run_id,
            "label": args.label[index] if args.label else Path(model_dir).name,
            **score_model(
                model_dir, images, labels, corrupted, serving, serving_index, args.batch_size
            ),
            "images": int(len(images)),
            "serving_images": int(len(serving_index)),
            "severities": list(args.severities),
            "library": "corrupt-tta 0.1.7 (ImageNet-C parameters at 32x32)",
            "seed": args.seed,
            "machine": machine,
            "note": args.note,
        }
        records.append(record)
        print(
            json.dumps(
                {k: record[k] for k in ("label", "clean_accuracy", "mean_corruption_accuracy")}
            )
        )
    if len(records) > 1:
        base = records[0]
        for other in records[1:]:
            gain = other["mean_corruption_accuracy"] - base["mean_corruption_accuracy"]
            print(f"{other['label']} vs {base['label']}: mean corruption accuracy {gain:+.4f}")
    results = Path(args.results)
    append_records(results, records)
    print(f"{len(records)} record(s) -> {results} ({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
