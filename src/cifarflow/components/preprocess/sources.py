"""Readers that turn a raw dataset folder into labelled uint8 image arrays.

Two layouts are understood:

* the official CIFAR-100 python files (`cifar-100-python/{train,test,meta}`,
  as `cifarflow ingest` writes them, or those three files directly);
* an image folder, `root/<class_name>/*.jpg|png|...` (any sizes), optionally
  already split as `root/train/<class_name>/...` and `root/test/<class_name>/...`.
  Each file becomes 32×32 pixels by `cifarflow.photo_pixels.photo_to_pixels`,
  the served model's own decode (EXIF orientation, crop, resize), so training
  on a folder sees what serving that photo would.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cifarflow.data import cifar_pickle, official
from cifarflow.data.splits import Split
from cifarflow.errors import BadInputError, DataAnomalyError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}


@dataclasses.dataclass
class RawDataset:
    """Labelled images before the val split: `test` is None when not given."""

    kind: str
    train: Split
    test: Split | None
    class_names: list[str]
    fine_class_names: list[str]


def find_cifar_dir(raw: Path) -> Path | None:
    for candidate in (raw / official.ARCHIVE_DIR, raw):
        if all((candidate / name).is_file() for name in official.MEMBERS):
            return candidate
    return None


def read_raw(raw: Path) -> RawDataset:
    """Reads `raw` as official CIFAR files if present, else as an image folder."""
    if not raw.is_dir():
        raise BadInputError(f"raw dataset folder {raw} does not exist")
    cifar_dir = find_cifar_dir(raw)
    if cifar_dir is not None:
        return read_cifar(cifar_dir)
    return read_image_folder(raw)


def read_cifar(folder: Path) -> RawDataset:
    meta = _load(folder / "meta")
    train = _batch_to_split(_load(folder / "train"), folder / "train")
    test = _batch_to_split(_load(folder / "test"), folder / "test")
    return RawDataset(
        kind="cifar-100-python",
        train=train,
        test=test,
        class_names=[str(n) for n in meta["coarse_label_names"]],
        fine_class_names=[str(n) for n in meta["fine_label_names"]],
    )


def _load(path: Path) -> dict:
    with open(path, "rb") as f:
        batch = cifar_pickle.load_pickle(f, source=str(path))
    if not isinstance(batch, dict):
        raise DataAnomalyError(f"{path}: expected a dict, found {type(batch).__name__}")
    return batch


def _batch_to_split(batch: dict, path: Path) -> Split:
    for key in ("data", "coarse_labels", "fine_labels"):
        if key not in batch:
            raise DataAnomalyError(f"{path}: missing key {key!r}")
    data = batch["data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        raise DataAnomalyError(
            f"{path}: 'data' must be uint8 [N, 3072], found {getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}"
        )
    # Official rows are planar (1024 R, 1024 G, 1024 B); models want HWC.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return Split(
        images=images,
        coarse_labels=_labels(batch["coarse_labels"], path, "coarse_labels"),
        fine_labels=_labels(batch["fine_labels"], path, "fine_labels"),
    )


def _labels(values, path: Path, key: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataAnomalyError(f"{path}: {key!r} must be a list of integers")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise DataAnomalyError(f"{path}: {key!r} has values outside 0..255")
    return array.astype(np.uint8)


def read_image_folder(root: Path) -> RawDataset:
    """Reads `root/<class>/*` (or `root/{train,test}/<class>/*`) into arrays."""
    split_roots = {name: root / name for name in ("train", "test") if (root / name).is_dir()}
    if "train" in split_roots:
        class_names = _class_folders(split_roots["train"])
        train = _read_classes(split_roots["train"], class_names)
        test = _read_classes(split_roots["test"], class_names) if "test" in split_roots else None
    else:
        class_names = _class_folders(root)
        train, test = _read_classes(root, class_names), None
    return RawDataset("image-folder", train, test, class_names, list(class_names))


def _class_folders(root: Path) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise BadInputError(
            f"{root} is neither CIFAR-100 python files nor an image folder with at least two "
            "class subfolders (root/<class_name>/*.jpg)"
        )
    return names


def _read_classes(root: Path, class_names: list[str]) -> Split:
    import tensorflow as tf

    from cifarflow.photo_pixels import photo_to_pixels

    images, labels = [], []
    for label, name in enumerate(class_names):
        folder = root / name
        files = (
            sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if folder.is_dir()
            else []
        )
        for path in files:
            try:
                images.append(photo_to_pixels(_served_bytes(path)))
            except (tf.errors.OpError, OSError, ValueError) as exc:
                reason = next((s for s in str(exc).splitlines() if s.strip()), type(exc).__name__)
                raise DataAnomalyError(f"cannot decode image {path}: {reason.strip()}") from None
            labels.append(label)
    if not images:
        raise BadInputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    coarse = np.asarray(labels, dtype=np.uint8)
    return Split(np.stack(images), coarse, coarse.copy())


# The formats the serving graph decodes itself, by their first bytes.
_GRAPH_DECODED_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def _served_bytes(path: Path) -> bytes:
    """The file's bytes if the serving graph decodes them; others (WebP) as an upright RGB PNG."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    data = path.read_bytes()
    if data.startswith(_GRAPH_DECODED_MAGIC):
        return data
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except UnidentifiedImageError as exc:
        raise ValueError(str(exc)) from None
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG")
    return buffer.getvalue()
