"""Real CIFAR-100 test images (from the shipped sample) encoded the ways clients send them."""

from __future__ import annotations

import functools
import io
import tarfile

import numpy as np
from PIL import Image

from cifarflow.data.cifar_pickle import load_pickle
from cifarflow.data.sample import SAMPLE_ARCHIVE


@functools.lru_cache(maxsize=1)
def cifar_test_images() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 32, 32, 3], coarse labels [N]) of the sample's test split."""
    with tarfile.open(SAMPLE_ARCHIVE) as tar:
        batch = load_pickle(tar.extractfile("cifar-100-python/test").read(), "sample test")
    data = np.asarray(batch["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(data), np.asarray(batch["coarse_labels"])


def encode(
    pixels: np.ndarray, fmt: str = "PNG", size: int | None = None, mode: str = "RGB", **save_args
) -> bytes:
    """One image as file bytes: optionally upscaled to size x size and converted to `mode`."""
    image = Image.fromarray(pixels)
    if size and size != 32:
        image = image.resize((size, size), Image.BICUBIC)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def exif_rotated_jpeg(pixels: np.ndarray, size: int = 64) -> bytes:
    """A JPEG whose pixels are stored rotated, with EXIF orientation 6 saying how to show it upright.

    A viewer that honours EXIF shows the original image; one that ignores it
    shows it on its side.
    """
    image = (
        Image.fromarray(pixels)
        .resize((size, size), Image.BICUBIC)
        .transpose(Image.Transpose.ROTATE_90)
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()
