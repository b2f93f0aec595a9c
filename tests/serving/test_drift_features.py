"""The drift monitor's per-image features, measured a batch at a time, on real CIFAR-100 images.

The gateway queues each checked image and measures `FLUSH_IMAGES` of them
together (monitor.py); these tests pin that the batch gives every image
exactly the count vector the reference's own definitions give it
(image_statistics), and that queued images reach the window.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from cifarflow import image_statistics as stats
from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.components.candidate import write_reference
from cifarflow.ood_scores import energy
from cifarflow.serving.gateway.monitoring import features
from cifarflow.serving.gateway.monitoring.config import DEFAULT_DRIFT_THRESHOLD, MonitorConfig
from cifarflow.serving.gateway.monitoring.monitor import FLUSH_IMAGES, DriftWindows, GatewayMonitor
from cifarflow.serving.gateway.monitoring.psi import population_stability_index
from cifarflow.training_reference import data_reference, score_reference, training_reference
from tests.serving.model_factory import reference_logits
from tests.serving.monitoring_support import sample_train_images


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


def test_queued_thumbnails_reach_the_window_at_flush_images_or_on_flush(cifar):
    monitor = GatewayMonitor(MonitorConfig(window=200), "cifar", CollectorRegistry())
    images = list(cifar[0][: FLUSH_IMAGES + 5])
    for image in images[: FLUSH_IMAGES - 1]:
        monitor.observe_images([Image.fromarray(image)])
    assert monitor.windows.images.filled == 0  # queued, not yet measured
    monitor.observe_images([Image.fromarray(images[FLUSH_IMAGES - 1])])
    assert monitor.windows.images.filled == FLUSH_IMAGES
    # Thumbnails of another size (a larger upload) are measured in their own batch,
    # and a grayscale one in RGB, as the model decodes it (three equal channels).
    larger = [np.kron(i, np.ones((2, 2, 1), dtype=np.uint8)) for i in images[-5:-1]]
    gray = images[-1][..., 0]
    monitor.observe_images([Image.fromarray(i) for i in larger] + [Image.fromarray(gray, "L")])
    monitor.flush()
    assert monitor.windows.images.filled == FLUSH_IMAGES + 5
    expected = sum(expected_vector(i) for i in images[:FLUSH_IMAGES])
    expected += sum(expected_vector(i) for i in larger)
    expected += expected_vector(np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(monitor.windows.images.counts, expected)


def test_the_windows_psi_equals_each_features_own_psi_against_a_real_reference(cifar):
    images, labels = sample_train_images()
    reference = training_reference(
        COARSE_CLASS_NAMES,
        data_reference(images, labels, len(COARSE_CLASS_NAMES)),
        score_reference(reference_logits(images[-400:]), temperature=1.0),
    )
    windows = DriftWindows(size=300, num_classes=len(COARSE_CLASS_NAMES))
    assert windows.psi(reference) == {}  # nothing full yet: nothing compared
    test_images = (cifar[0][:300] * 0.6).astype(np.uint8)  # darker: some features drift
    for vector in features.images_features(test_images):
        windows.images.add(vector)
    for class_id in cifar[1][:300]:
        windows.classes.add(int(class_id))
    got = windows.psi(reference)
    expected_counts = windows.reference_counts(reference)
    live = {
        name: windows.images.counts[segment.start : segment.stop]
        for name, segment in features.LAYOUT.items()
    }
    live[features.CLASS_FEATURE] = windows.classes.counts
    assert set(got) == set(live)
    for name, counts in live.items():
        own = population_stability_index(np.asarray(expected_counts[name]), counts)
        assert got[name] == pytest.approx(own, rel=1e-12, abs=1e-15), name
    assert got["brightness"] > DEFAULT_DRIFT_THRESHOLD  # the darkening shows
    assert windows.psi(reference) == got  # the reference side, computed once, is reused


def test_answers_reach_the_windows_and_counters_at_the_flush_that_a_scrape_makes(tmp_path, cifar):
    images, labels = sample_train_images()
    reference = training_reference(
        COARSE_CLASS_NAMES,
        data_reference(images, labels, len(COARSE_CLASS_NAMES)),
        score_reference(reference_logits(images[-400:]), temperature=1.0),
    )
    (tmp_path / "cifar" / "1").mkdir(parents=True)
    write_reference(tmp_path / "cifar" / "1", reference)
    registry = CollectorRegistry()
    monitor = GatewayMonitor(MonitorConfig(store=str(tmp_path), window=200), "cifar", registry)
    logits = reference_logits(cifar[0][:12]).astype(np.float64)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)

    verdicts = asyncio.run(monitor.judge(1, probabilities, logits))

    threshold = reference.scores.scores["energy"].threshold
    passed = [bool(value <= threshold) for value in energy(logits)]
    assert [v.in_distribution for v in verdicts] == passed  # on the answer at once
    assert 0 < sum(passed) < len(passed)  # both verdicts occur: the counts below mean something

    def counted(verdict: str) -> float | None:
        return registry.get_sample_value(
            "cifarflow_gateway_ood_answers_total", {"verdict": verdict}
        )

    assert monitor.windows.classes.filled == 0 and counted("in") == 0.0  # queued, not counted
    monitor.flush(update=True)  # what a /metrics scrape does first
    assert (counted("in"), counted("out")) == (sum(passed), len(passed) - sum(passed))
    np.testing.assert_array_equal(
        monitor.windows.classes.counts,
        np.bincount(probabilities.argmax(1), minlength=len(COARSE_CLASS_NAMES)),
    )
    assert registry.get_sample_value("cifarflow_gateway_ood_rate") == pytest.approx(
        1 - sum(passed) / len(passed)
    )
