"""The per-image statistics the drift monitor compares with the training reference.

The same definitions and histogram edges as the reference
(`cifarflow.image_statistics`), on the image as the model sees it: RGB, at
about the training size. Each image becomes one count vector over all the
features' bins laid end to end (`LAYOUT`): a one in the bin of its
brightness, of its contrast and of its saturation, then its pixel
histogram per channel. The window adds these vectors up.
"""

from __future__ import annotations

import bisect
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
# Value v falls in pixel bin v // PIXEL_STEP (PIXEL_EDGES are 32 equal steps over 0..256).
PIXEL_STEP = 256 // PIXEL_BINS
_CHANNEL_OFFSETS = (np.arange(len(stats.CHANNELS)) * PIXEL_BINS).astype(np.uint8)
# Python lists for bisect: a search in 33 floats costs less than one NumPy call.
_EDGE_LISTS = {name: [float(e) for e in EDGES[name]] for name in IMAGE_FEATURES}


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


def bin_of(value: float, edges: list[float]) -> int:
    """`image_statistics.bin_index` for one value: half-open bins, outliers in the end bins."""
    return min(max(bisect.bisect_right(edges, value) - 1, 0), len(edges) - 2)


def image_features(pixels: np.ndarray) -> np.ndarray:
    """One uint8 RGB image `[H, W, 3]` as a count vector `[VECTOR_BINS]` (int64).

    >>> gray = np.full((32, 32, 3), 130, dtype=np.uint8)
    >>> vector = image_features(gray)
    >>> [int(np.argmax(vector[s.start : s.stop])) for s in LAYOUT.values()]
    [16, 0, 0, 16, 16, 16]
    >>> int(vector[LAYOUT["pixels_R"].start + 16])
    1024
    """
    values = stats.one_image(pixels)
    vector = np.zeros(VECTOR_BINS, dtype=np.int64)
    for name, value in zip(IMAGE_FEATURES, values, strict=True):
        vector[LAYOUT[name].start + bin_of(value, _EDGE_LISTS[name])] = 1
    # One bincount for the three channels: channel c's bins are offset by c * PIXEL_BINS.
    binned = np.asarray(pixels).reshape(-1, 3) // PIXEL_STEP + _CHANNEL_OFFSETS
    vector[_PIXELS_START:] = np.bincount(binned.ravel(), minlength=len(PIXEL_FEATURES) * PIXEL_BINS)
    return vector
