"""Image statistics for drift monitoring: one definition, shared by training and serving.

Pure NumPy, no project imports, so the pipeline (which records the training
reference) and the gateway (which computes the same numbers on live traffic)
call the very same functions. Every statistic is defined on RGB images as
uint8 arrays `[N, H, W, 3]` with values 0..255:

- luma `Y = 0.299 R + 0.587 G + 0.114 B` per pixel (ITU-R BT.601), in 0..255;
- brightness: the mean of Y over the image's pixels, in 0..255;
- contrast: the standard deviation (population, ddof 0) of Y over the
  image's pixels, in 0..127.5;
- saturation: the mean over the image's pixels of the HSV saturation
  `(max(R,G,B) - min(R,G,B)) / max(R,G,B)` (0 for a black pixel), in 0..1.

Histograms use fixed edges (the `*_EDGES` constants), so a histogram of
live traffic lines up bin for bin with the reference. Bins are half-open
`[e_i, e_i+1)`; the first and last bins also take every value below or above
the range, so counts always sum to the number of values.
"""

from __future__ import annotations

import numpy as np

# Luma weights of ITU-R BT.601, the convention of JPEG and of most image libraries.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
CHANNELS = ("R", "G", "B")

# Pixel intensities: 32 bins of 8 values over 0..255 per channel.
PIXEL_EDGES = np.linspace(0.0, 256.0, 33)
# Brightness (mean luma): 32 bins of 8 over 0..256.
BRIGHTNESS_EDGES = np.linspace(0.0, 256.0, 33)
# Contrast (std of luma, at most 127.5): 32 bins of 4 over 0..128.
CONTRAST_EDGES = np.linspace(0.0, 128.0, 33)
# Saturation (mean HSV saturation): 20 bins of 0.05 over 0..1.
SATURATION_EDGES = np.linspace(0.0, 1.0, 21)

# Images per chunk: bounds the float64 temporaries (~25 MB at 32x32).
_CHUNK = 1024


def luma(images: np.ndarray) -> np.ndarray:
    """Per-pixel luma Y, float64 `[N, H, W]` in 0..255."""
    return np.asarray(images, dtype=np.float64) @ LUMA_WEIGHTS


def brightness(images: np.ndarray) -> np.ndarray:
    """Per-image mean luma, float64 `[N]` in 0..255."""
    return _per_chunk(images, lambda chunk: luma(chunk).mean(axis=(1, 2)))


def contrast(images: np.ndarray) -> np.ndarray:
    """Per-image standard deviation of luma (ddof 0), float64 `[N]` in 0..127.5."""
    return _per_chunk(images, lambda chunk: luma(chunk).std(axis=(1, 2)))


def saturation(images: np.ndarray) -> np.ndarray:
    """Per-image mean HSV saturation, float64 `[N]` in 0..1 (a black pixel counts 0)."""

    def mean_saturation(chunk: np.ndarray) -> np.ndarray:
        # Elementwise max/min of the three channel planes: a reduction over an axis of
        # length 3 is several times slower in NumPy.
        red, green, blue = chunk[..., 0], chunk[..., 1], chunk[..., 2]
        high = np.maximum(np.maximum(red, green), blue).astype(np.float64)
        low = np.minimum(np.minimum(red, green), blue).astype(np.float64)
        per_pixel = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
        return per_pixel.mean(axis=(1, 2))

    return _per_chunk(images, mean_saturation)


def per_image(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brightness, contrast and saturation of each uint8 image `[N, H, W, 3]`: float64 `[N]` each.

    The same definitions as `brightness`, `contrast` and `saturation`, in
    fewer passes over the pixels and without their chunking: what the
    gateway computes on live traffic, a few dozen images at a time.

    >>> images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    >>> batch = (brightness(images), contrast(images), saturation(images))
    >>> all(np.allclose(a, b) for a, b in zip(per_image(images), batch))
    True
    """
    flat = np.asarray(images).reshape(len(images), -1, 3)
    y = flat @ LUMA_WEIGHTS
    count = y.shape[1]
    mean = y.sum(axis=1) / count
    # E[y^2] - mean^2 with one product per image: several times faster than y.std(),
    # and exact enough for values in 0..255 in float64.
    variance = np.maximum(np.einsum("ij,ij->i", y, y) / count - mean * mean, 0.0)
    red, green, blue = flat[..., 0], flat[..., 1], flat[..., 2]
    high = np.maximum(np.maximum(red, green), blue)
    spread = (high - np.minimum(np.minimum(red, green), blue)).astype(np.float64)
    per_pixel = np.divide(spread, high, out=np.zeros_like(spread), where=high > 0)
    return mean, np.sqrt(variance), per_pixel.sum(axis=1) / count


def pixel_value_counts(images: np.ndarray) -> np.ndarray:
    """Exact counts of each value 0..255 per channel: int64 `[3, 256]`."""
    counts = np.zeros((len(CHANNELS), 256), dtype=np.int64)
    for start in range(0, len(images), _CHUNK):
        flat = np.asarray(images[start : start + _CHUNK], dtype=np.uint8).reshape(-1, 3)
        for channel in range(len(CHANNELS)):
            counts[channel] += np.bincount(flat[:, channel], minlength=256)
    return counts


def pixel_histograms(images: np.ndarray, edges: np.ndarray = PIXEL_EDGES) -> np.ndarray:
    """Pixel-value counts per channel over `edges`: int64 `[3, len(edges) - 1]`.

    Each row sums to N * H * W (every pixel of every image, once per channel).
    """
    # Bin the 256 possible values once, then add up their exact counts: no per-pixel search.
    value_bin = bin_index(np.arange(256), edges)
    exact = pixel_value_counts(images)
    return np.stack(
        [np.bincount(value_bin, weights=row, minlength=len(edges) - 1) for row in exact]
    ).astype(np.int64)


def channel_moments(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (ddof 0) of the pixel values, in 0..255."""
    exact = pixel_value_counts(images)
    values = np.arange(256, dtype=np.float64)
    total = exact.sum(axis=1)
    mean = (exact * values).sum(axis=1) / total
    var = (exact * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    return mean.tolist(), np.sqrt(var).tolist()


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value: half-open bins, out-of-range values in the end bins."""
    edges = np.asarray(edges, dtype=np.float64)
    index = np.searchsorted(edges, np.asarray(values, dtype=np.float64).ravel(), side="right") - 1
    return np.clip(index, 0, len(edges) - 2)


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of `values` in the half-open bins of `edges`, out-of-range values in the end bins.

    Returns:
        int64 `[len(edges) - 1]`, summing to `len(values)`.
    """
    return np.bincount(bin_index(values, edges), minlength=len(edges) - 1).astype(np.int64)


def _per_chunk(images: np.ndarray, fn) -> np.ndarray:
    if len(images) == 0:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate(
        [fn(np.asarray(images[start : start + _CHUNK])) for start in range(0, len(images), _CHUNK)]
    )
