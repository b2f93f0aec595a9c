"""Serving pre-processing chosen by measurement: how a large photo becomes 32x32.

    .venv/bin/python bench/serving_preprocess.py --model DIR --data DIR [--images 1000]

The model's pixel predictions do not depend on how the pixels were made, so
every candidate pre-processing (`cifarflow.photo_pixels.PhotoPreprocessing`:
centre crop fraction, resize method, antialiasing) is scored around the same
loaded `predict_pixels` signature, on the same images:

- **photo cases**, as the serving-path part of bench/robustness.py makes them:
  each image upsampled (bicubic) to SIZE x SIZE and encoded as JPEG at
  QUALITY, decoded once with the serving graph's decoder, then resized by
  each candidate; each also with sensor-like noise (`--noise-sigmas`)
  added at the photo's size. An upsampled 32 px image has no detail finer
  than 32 px, which real photos always have: without the noise, a resize
  that only samples (bilinear without antialiasing) looks best, because
  there is nothing for it to alias;
- **native**: the 32x32 pixels themselves (what a PNG thumbnail gives);
- **EXIF**: the photo stored sideways with EXIF orientation 6, as phones
  write portrait photos, decoded with and without the orientation applied.

Each is measured on a stratified sample of val (where the choice is made)
and of test (reported, not used to choose). The winner is the best mean
val accuracy over the photo cases; a tie keeps the current choice. Results
are appended to `bench/results/serving_preprocess.json` with the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "serving_preprocess.json"
sys.path.insert(0, str(REPO / "bench"))

from robustness import (  # noqa: E402
    PHOTO_NOISE_SIGMAS,
    jpeg_photos,
    photo_case,
    stratified_sample,
)

from cifarflow.photo_pixels import SERVING, PhotoPreprocessing  # noqa: E402

_RESIZES = (
    PhotoPreprocessing(method="bilinear"),
    PhotoPreprocessing(method="bilinear", antialias=False),
    PhotoPreprocessing(method="area"),
    PhotoPreprocessing(method="bicubic"),
    PhotoPreprocessing(method="lanczos3"),
)
CANDIDATES: tuple[PhotoPreprocessing, ...] = (
    SERVING,
    *(resize for resize in _RESIZES if resize != SERVING),
    dataclasses.replace(SERVING, crop_fraction=0.875),
    dataclasses.replace(SERVING, crop_fraction=0.75),
)
_RESIZE_BATCH = 16
_DECODE_CHUNK = 64


def sideways_exif_jpegs(images: np.ndarray, size: int, quality: int) -> list[bytes]:
    """Each image upsampled to `size`, stored rotated 90° counter-clockwise with EXIF orientation 6.

    A viewer that honours the tag (rotate 90° clockwise to display) shows the
    image upright, as a phone's portrait photo.
    """
    from PIL import Image

    photos = []
    for image in images:
        big = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
        exif = Image.Exif()
        exif[0x0112] = 6
        buffer = io.BytesIO()
        big.transpose(Image.Transpose.ROTATE_90).save(
            buffer, format="JPEG", quality=quality, exif=exif.tobytes()
        )
        photos.append(buffer.getvalue())
    return photos


_decoders: dict[bool, Callable] = {}


def decoded(photos: Sequence[bytes], exif: bool) -> np.ndarray:
    """The photos decoded by the serving graph's decoder: uint8 [N, H, W, 3] (all one size)."""
    import tensorflow as tf

    from cifarflow.photo_pixels import decode_rgb

    decode = _decoders.get(exif)
    if decode is None:
        decode = tf.function(
            lambda data: decode_rgb(data, exif), input_signature=[tf.TensorSpec([], tf.string)]
        )
        _decoders[exif] = decode
    return np.stack([decode(tf.constant(photo)).numpy() for photo in photos])


def resized(images: np.ndarray, preprocessing: PhotoPreprocessing) -> np.ndarray:
    """`images` uint8 [N, H, W, 3] -> the candidate's uint8 [N, 32, 32, 3]."""
    import tensorflow as tf

    from cifarflow.photo_pixels import resize_rgb

    out = [
        resize_rgb(tf.constant(images[start : start + _RESIZE_BATCH]), preprocessing).numpy()
        for start in range(0, len(images), _RESIZE_BATCH)
    ]
    return np.concatenate(out).astype(np.uint8)


def candidate_pixels(
    photos: Sequence[bytes], candidates: Sequence[PhotoPreprocessing], exif: bool = True
) -> dict[str, np.ndarray]:
    """{candidate name: uint8 [N, 32, 32, 3]}: each photo decoded once, resized by every candidate.

    A chunk at a time: a thousand decoded 1024px photos would take 3 GB.
    """
    out: dict[str, list[np.ndarray]] = {c.name: [] for c in candidates}
    for start in range(0, len(photos), _DECODE_CHUNK):
        full_size = decoded(photos[start : start + _DECODE_CHUNK], exif)
        for candidate in candidates:
            out[candidate.name].append(resized(full_size, candidate))
    return {name: np.concatenate(chunks) for name, chunks in out.items()}


def score_split(
    accuracy: Callable[[np.ndarray], float],
    images: np.ndarray,
    sizes: Sequence[int],
    qualities: Sequence[int],
    log: Callable[[str], None],
    noise_sigmas: Sequence[float] = (0.0,),
) -> dict[str, dict[str, float]]:
    """{case: {candidate name: accuracy}} for one split's images."""
    cases: dict[str, dict[str, float]] = {
        "native_32px": {c.name: accuracy(resized(images, c)) for c in CANDIDATES}
    }
    for size in sizes:
        for quality in qualities:
            for sigma in noise_sigmas:
                started = time.monotonic()
                case = photo_case(size, quality, sigma)
                photos = jpeg_photos(images, size, quality, noise_sigma=sigma, seed=size + quality)
                cases[case] = {
                    name: accuracy(pixels)
                    for name, pixels in candidate_pixels(photos, CANDIDATES).items()
                }
                log(f"{case}: {time.monotonic() - started:.0f}s")
    size, quality = sizes[0], qualities[0]
    sideways = sideways_exif_jpegs(images, size, quality)
    cases[f"exif6_jpeg_{size}px_q{quality}"] = {
        dataclasses.replace(SERVING, exif_orientation=exif).name: accuracy(
            candidate_pixels(sideways, [SERVING], exif)[SERVING.name]
        )
        for exif in (True, False)
    }
    return cases


def photo_means(cases: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each candidate's mean accuracy over the JPEG photo cases.

    >>> photo_means({"native_32px": {"a": 1.0}, "jpeg_224px_q90": {"a": 0.5}, "jpeg_1024px_q50": {"a": 0.7}})
    {'a': 0.6}
    """
    photo = [scores for case, scores in cases.items() if case.startswith("jpeg_")]
    return {name: round(float(np.mean([s[name] for s in photo])), 4) for name in photo[0]}


def pick_winner(val_means: dict[str, float], current: str) -> str:
    """The best mean val accuracy; the current choice unless another is strictly better.

    >>> pick_winner({"old": 0.70, "new": 0.70}, "old"), pick_winner({"old": 0.70, "new": 0.71}, "old")
    ('old', 'new')
    """
    best = max(val_means.values())
    return current if val_means[current] == best else max(val_means, key=val_means.__getitem__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="a SavedModel folder (train's output)")
    parser.add_argument("--data", required=True, help="preprocess's output folder (val and test)")
    parser.add_argument("--images", type=int, default=1000, help="images per split (stratified)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 1024])
    parser.add_argument("--qualities", nargs="+", type=int, default=[90, 50])
    parser.add_argument(
        "--noise-sigmas",
        nargs="+",
        type=float,
        default=list(PHOTO_NOISE_SIGMAS),
        help="sensor-like Gaussian noise added at the photo's size, in 0..255 levels (0: none)",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["val", "test"],
        choices=["val", "test"],
        help="val is where the choice is made; test is only reported",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--note", default="", help="free text stored with the record")
    args = parser.parse_args(argv)
    if "val" not in args.splits:
        parser.error("--splits must include val: the choice is made there")
    if args.images < 20:
        parser.error("--images must be at least 20 (one per class)")

    from machine import machine_info
    from records import append_records

    from cifarflow.components.pixel_predictions import load_signature, predict_arrays
    from cifarflow.data.splits import load_split

    started = time.monotonic()
    signature = load_signature(args.model)

    def log(line: str) -> None:
        print(f"{line} ({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)

    splits = {}
    for split_name in args.splits:
        split = load_split(args.data, split_name, mmap=False)
        labels = np.asarray(split.coarse_labels, dtype=np.int64)
        chosen = stratified_sample(labels, args.images, args.seed)
        images, truth = np.asarray(split.images)[chosen], labels[chosen]

        def accuracy(pixels: np.ndarray, truth: np.ndarray = truth) -> float:
            predicted = predict_arrays(signature, pixels, args.batch_size).class_ids
            return round(float(np.mean(predicted == truth)), 4)

        log(f"{split_name}: {len(images)} images")
        cases = score_split(accuracy, images, args.sizes, args.qualities, log, args.noise_sigmas)
        splits[split_name] = {
            "images": int(len(images)),
            "cases": cases,
            "photo_mean": photo_means(cases),
        }
    winner = pick_winner(splits["val"]["photo_mean"], SERVING.name)
    record = {
        "model": str(args.model),
        "current": SERVING.name,
        "winner_on_val": winner,
        "candidates": [dataclasses.asdict(c) for c in CANDIDATES],
        "splits": splits,
        "jpeg": "bicubic upsample of the 32x32 image, Pillow JPEG at each quality",
        "noise_sigmas": list(args.noise_sigmas),
        "seed": args.seed,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine_info(),
        "note": args.note,
    }
    base = SERVING.name
    for split_name, split_record in splits.items():
        print(f"{split_name} ({split_record['images']} images), accuracy and ratio to {base}:")
        for case, scores in [
            *split_record["cases"].items(),
            ("photo mean", split_record["photo_mean"]),
        ]:
            print(f"  {case}")
            for name, acc in scores.items():
                ref = scores.get(base, split_record["cases"]["native_32px"][base])
                ratio = acc / ref if ref else float("nan")
                print(f"    {name:32s} {acc:.4f}  x{ratio:.3f}")
    print(f"winner on val: {winner} (current: {base})")
    results = Path(args.results)
    append_records(results, [record])
    print(f"record -> {results} ({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
