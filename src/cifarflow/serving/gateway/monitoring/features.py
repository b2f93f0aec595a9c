"""The per-image statistics the drift monitor compares with the training reference.

The same definitions and histogram edges as the reference
(`cifarflow.image_statistics`), on the image as the model sees it: RGB, at
about the training size. Each image becomes one count vector over all the
features' bins laid end to end (`LAYOUT`): a one in the bin of its
brightness, of its contrast and of its saturation, then its pixel
histogram per channel. The window adds these vectors up.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cifarflow import image_statistics as stats

# The side of the images the model was trained on (the SavedModel contract's 32x32).
MODEL_INPUT_SIDE = 32
IMAGE_FEATURES = ("brightness", "contrast", "saturation")
PIXEL_FEATURES = tuple(f"pixels_{channel}" for channel in stats.CHANNELS)
CLASS_FEATURE = "predicted_class"
EDGES = {
    "brightness": stats.BRIGHTNESS_EDGES,
    "contrast": stats.CONTRAST_EDGES,
    "saturation": stats.SATURATION_EDGES,
    **{name: stats.PIXEL_EDGES for name in PIXEL_FEATURES},
}
PIXEL_BINS = len(stats.PIXEL_EDGES) - 1
# Value v falls in pixel bin v >> PIXEL_SHIFT (PIXEL_EDGES are 32 equal steps over 0..256).
PIXEL_SHIFT = int(np.log2(256 // PIXEL_BINS))
_UINT16_MAX = int(np.iinfo(np.uint16).max)
_PIXEL_VECTOR_BINS = len(PIXEL_FEATURES) * PIXEL_BINS  # one image's pixel histograms


@dataclasses.dataclass(frozen=True)
class Segment:
    """Where one feature's bins sit in an image's count vector."""

    start: int
    bins: int

    @property
    def stop(self) -> int:
        return self.start + self.bins


def _layout() -> dict[str, Segment]:
    layout, start = {}, 0
    for name in (*IMAGE_FEATURES, *PIXEL_FEATURES):
        layout[name] = Segment(start, len(EDGES[name]) - 1)
        start += layout[name].bins
    return layout


LAYOUT = _layout()
VECTOR_BINS = sum(segment.bins for segment in LAYOUT.values())
_PIXELS_START = LAYOUT[PIXEL_FEATURES[0]].start


def image_features(pixels: np.ndarray) -> np.ndarray:
    """One uint8 RGB image `[H, W, 3]` as a count vector `[VECTOR_BINS]` (int64).

    >>> gray = np.full((32, 32, 3), 130, dtype=np.uint8)
    >>> vector = image_features(gray)
    >>> [int(np.argmax(vector[s.start : s.stop])) for s in LAYOUT.values()]
    [16, 0, 0, 16, 16, 16]
    >>> int(vector[LAYOUT["pixels_R"].start + 16])
    1024
    """
    return images_features(np.asarray(pixels)[None])[0]


def images_features(images: np.ndarray) -> np.ndarray:
    """N same-sized uint8 RGB images `[N, H, W, 3]` as count vectors `[N, VECTOR_BINS]` (int64).

    One NumPy call per step for all N images: at 32x32 a call costs more
    than its arithmetic, so images are measured a batch at a time.
    """
    images = np.asarray(images, dtype=np.uint8)
    count = len(images)
    if count * _PIXEL_VECTOR_BINS > _UINT16_MAX:  # more than 682 images: halves, before any work
        return np.concatenate([images_features(half) for half in np.array_split(images, 2)])
    vectors = np.zeros((count, VECTOR_BINS), dtype=np.int64)
    rows = np.arange(count)
    for name, values in zip(IMAGE_FEATURES, stats.per_image(images), strict=True):
        vectors[rows, LAYOUT[name].start + stats.bin_index(values, EDGES[name])] = 1
    # One bincount for every image and channel: value v of channel c of image i
    # counts in bin i * 96 + c * 32 + v // 8 (uint16 holds it for 682 images).
    binned = np.empty((count, images[0].size // 3, 3), dtype=np.uint16)
    np.right_shift(images.reshape(binned.shape), PIXEL_SHIFT, out=binned)
    binned += _pixel_offsets(count)
    counts = np.bincount(binned.reshape(-1), minlength=count * _PIXEL_VECTOR_BINS)
    vectors[:, _PIXELS_START:] = counts.reshape(count, _PIXEL_VECTOR_BINS)
    return vectors


def _pixel_offsets(count: int) -> np.ndarray:
    """uint16 `[count, 1, 3]`: where image i's channel c's bins start in a batch's bincount."""
    image = np.arange(count, dtype=np.uint16)[:, None, None] * _PIXEL_VECTOR_BINS
    return image + np.arange(len(stats.CHANNELS), dtype=np.uint16)[None, None, :] * PIXEL_BINS
