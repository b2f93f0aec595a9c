"""The drift monitor's per-image features, measured a batch at a time, on real CIFAR-100 images.

The gateway queues each checked image and measures `FLUSH_IMAGES` of them
together (monitor.py); these tests pin that the batch gives every image
exactly the count vector the reference's own definitions give it
(image_statistics), and that queued images reach the window.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from cifarflow import image_statistics as stats
from cifarflow.serving.gateway.monitoring import features
from cifarflow.serving.gateway.monitoring.config import MonitorConfig
from cifarflow.serving.gateway.monitoring.monitor import FLUSH_IMAGES, GatewayMonitor


def expected_vector(image: np.ndarray) -> np.ndarray:
    """One image's vector from the reference's definitions, one feature at a time."""
    vector = np.zeros(features.VECTOR_BINS, dtype=np.int64)
    batch = image[None]
    measured = (stats.brightness(batch), stats.contrast(batch), stats.saturation(batch))
    for name, values in zip(features.IMAGE_FEATURES, measured, strict=True):
        vector[features.LAYOUT[name].start + stats.bin_index(values, features.EDGES[name])[0]] = 1
    for name, channel in zip(features.PIXEL_FEATURES, range(3), strict=True):
        segment = features.LAYOUT[name]
        vector[segment.start : segment.stop] = np.histogram(
            image[..., channel], bins=stats.PIXEL_EDGES
        )[0]
    return vector


def test_a_batch_gives_each_real_image_the_reference_definitions_vector(cifar):
    images = cifar[0][:100]
    batch = features.images_features(images)
    assert batch.shape == (100, features.VECTOR_BINS)
    for image, vector in zip(images, batch, strict=True):
        np.testing.assert_array_equal(vector, expected_vector(image))
    # Darkened copies land in lower brightness bins: the vectors follow the pixels.
    dark = features.images_features((images * 0.3).astype(np.uint8))
    segment = features.LAYOUT["brightness"]
    assert (
        dark[:, segment.start : segment.stop].argmax(1)
        <= batch[:, segment.start : segment.stop].argmax(1)
    ).all()


def test_a_batch_too_large_for_one_bincount_is_split_and_still_exact(cifar):
    images = np.concatenate([cifar[0]] * (700 // len(cifar[0]) + 1))[:700]
    batch = features.images_features(images)
    np.testing.assert_array_equal(batch[::97], [expected_vector(i) for i in images[::97]])


def test_queued_images_reach_the_window_at_flush_images_or_on_flush(cifar):
    monitor = GatewayMonitor(MonitorConfig(window=200), "cifar", CollectorRegistry())
    images = list(cifar[0][: FLUSH_IMAGES + 5])
    for image in images[: FLUSH_IMAGES - 1]:
        monitor.observe_images([image])
    assert monitor.windows.images.filled == 0  # queued, not yet measured
    monitor.observe_images([images[FLUSH_IMAGES - 1]])
    assert monitor.windows.images.filled == FLUSH_IMAGES
    # Images of another size (a thumbnail of a larger upload) are measured in their own batch.
    monitor.observe_images([np.kron(i, np.ones((2, 2, 1), dtype=np.uint8)) for i in images[-5:]])
    monitor.flush()
    assert monitor.windows.images.filled == FLUSH_IMAGES + 5
    expected = sum(expected_vector(i) for i in images[:FLUSH_IMAGES])
    expected += sum(expected_vector(np.kron(i, np.ones((2, 2, 1), np.uint8))) for i in images[-5:])
    np.testing.assert_array_equal(monitor.windows.images.counts, expected)
