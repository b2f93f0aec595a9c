"""The shared image statistics and OOD scores against hand-computed values on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cifarflow import image_statistics as stats
from cifarflow import ood_scores

# One 2x2 image: pure red, green, blue and a black pixel.
PRIMARIES = np.array([[[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 0, 0]]]], dtype=np.uint8)
# One 2x2 grey image, and one whose pixels are all (200, 100, 50).
GREY = np.full((1, 2, 2, 3), 128, dtype=np.uint8)
ORANGE = np.tile(np.array([200, 100, 50], dtype=np.uint8), (1, 2, 2, 1))


def test_brightness_contrast_saturation_by_hand():
    images = np.concatenate([PRIMARIES, GREY, ORANGE])
    # Luma of the primaries: 0.299*255, 0.587*255, 0.114*255 and 0.
    lumas = [76.245, 149.685, 29.07, 0.0]
    mean = sum(lumas) / 4
    std = math.sqrt(sum((y - mean) ** 2 for y in lumas) / 4)
    orange_luma = 0.299 * 200 + 0.587 * 100 + 0.114 * 50
    np.testing.assert_allclose(stats.brightness(images), [63.75, 128.0, orange_luma])
    np.testing.assert_allclose(stats.contrast(images), [std, 0.0, 0.0], atol=1e-9)
    # Pure colours have saturation 1, black 0; (200, 100, 50): (200 - 50) / 200.
    np.testing.assert_allclose(stats.saturation(images), [0.75, 0.0, 0.75])
    assert stats.brightness(images[:0]).shape == (0,)


def test_statistics_do_not_depend_on_the_chunking(monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)
    whole = (stats.brightness(images), stats.saturation(images), stats.pixel_histograms(images))
    monkeypatch.setattr(stats, "_CHUNK", 7)
    chunked = (stats.brightness(images), stats.saturation(images), stats.pixel_histograms(images))
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a, b)


def test_pixel_histograms_use_the_fixed_32_bins():
    images = np.concatenate([PRIMARIES, GREY])
    counts = stats.pixel_histograms(images)
    assert counts.shape == (3, 32) and len(stats.PIXEL_EDGES) == 33
    assert counts.sum(axis=1).tolist() == [8, 8, 8]  # 2 images x 4 pixels, per channel
    # Red: 255 (bin 31) once, 0 (bin 0) three times, 128 (bin 16) four times.
    assert counts[0, 31] == 1 and counts[0, 0] == 3 and counts[0, 16] == 4
    edge_values = np.array([[[[7, 8, 255]]]], dtype=np.uint8)  # 7 | 8 is a bin edge
    assert np.flatnonzero(stats.pixel_histograms(edge_values)).tolist() == [0, 33, 95]


def test_channel_moments_by_hand():
    means, stds = stats.channel_moments(np.concatenate([PRIMARIES, GREY]))
    # Red over 8 pixels: 255 once, 0 three times, 128 four times.
    red = [255, 0, 0, 0, 128, 128, 128, 128]
    assert means[0] == pytest.approx(np.mean(red)) and stds[0] == pytest.approx(np.std(red))
    assert means == pytest.approx([np.mean(red)] * 3)  # symmetric in the channels


def test_bin_counts_half_open_bins_and_open_end_bins():
    values = np.array([-5.0, 0.0, 0.05, 0.0499, 0.999, 1.0, 3.0])
    counts = stats.bin_counts(values, stats.SATURATION_EDGES)
    assert counts.sum() == len(values) and len(counts) == 20
    assert counts[0] == 3  # -5 (below the range), 0 and 0.0499
    assert counts[1] == 1  # 0.05 opens the second bin
    assert counts[19] == 3  # 0.999, 1.0 (the top edge) and 3 (above the range)


def test_energy_and_max_softmax_by_hand():
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0], [1000.0, 0.0]])
    np.testing.assert_allclose(ood_scores.energy(logits), [-math.log(2), -math.log(4), -1000.0])
    np.testing.assert_allclose(ood_scores.max_softmax(logits), [0.5, 0.75, 1.0])
    assert ood_scores.score("energy", logits)[1] == pytest.approx(-math.log(4))
    with pytest.raises(ValueError, match="unknown OOD score"):
        ood_scores.score("entropy", logits)


@pytest.mark.parametrize("count", [7, 20, 199, 200, 201, 1000])
def test_the_threshold_passes_the_asked_share_in_each_direction(count):
    scores = np.random.default_rng(count).permutation(np.arange(1.0, count + 1))
    expected = math.ceil(0.95 * count - 1e-9)
    for name in ood_scores.SCORES:
        higher = ood_scores.HIGHER_PASSES[name]
        threshold = ood_scores.pass_threshold(scores, 0.95, higher)
        passed = int(ood_scores.passes(name, scores, threshold).sum())
        assert passed == expected, (name, threshold)
    # 200 scores 1..200: max-softmax-like keeps 11..200, energy-like keeps 1..190.
    if count == 200:
        assert ood_scores.pass_threshold(scores, 0.95, True) == 11.0
        assert ood_scores.pass_threshold(scores, 0.95, False) == 190.0


def test_threshold_rejects_what_it_cannot_answer():
    with pytest.raises(ValueError, match="at least one"):
        ood_scores.pass_threshold(np.zeros(0), 0.95, True)
    with pytest.raises(ValueError, match="pass_rate"):
        ood_scores.pass_threshold(np.ones(3), 0.0, True)
