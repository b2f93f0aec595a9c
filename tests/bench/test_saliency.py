"""bench/saliency.py: the windows it picks and how it masks them (the figures need a trained model)."""

from __future__ import annotations

import numpy as np

from bench import saliency


def test_window_sums_match_a_brute_force_sum():
    maps = np.random.default_rng(0).random((3, 12, 10))
    sums = saliency.window_sums(maps, 4)
    assert sums.shape == (3, 9, 7)
    for n, y, x in [(0, 0, 0), (1, 8, 6), (2, 3, 5)]:
        assert np.isclose(sums[n, y, x], maps[n, y : y + 4, x : x + 4].sum())


def test_the_most_and_least_salient_windows_are_found_and_masked_with_the_images_mean():
    maps = np.zeros((2, 32, 32))
    maps[0, 20:28, 3:11] = 1.0  # a bright 8x8 square at (20, 3)
    maps[1, :, :] = 1.0
    maps[1, 0:8, 24:32] = 0.0  # a dark one at (0, 24)
    most, least = saliency.extreme_windows(maps, 8)
    assert most[0].tolist() == [20, 3] and least[1].tolist() == [0, 24]
    images = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    masked = saliency.mask_windows(images, most, 8)
    mean = np.round(images[0].reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    assert (masked[0, 20:28, 3:11] == mean).all()
    outside = np.ones((32, 32), bool)
    outside[20:28, 3:11] = False
    assert np.array_equal(masked[0][outside], images[0][outside])
    assert masked.dtype == np.uint8 and not np.shares_memory(masked, images)
