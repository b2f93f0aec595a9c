"""bench/robustness.py: the sample it scores, the corruptions it applies, and a two-model run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import robustness
from cifarflow.classes import COARSE_CLASS_NAMES


@pytest.fixture(scope="module")
def sample_test_split(tmp_path_factory):
    return robustness.official_test_split("sample", tmp_path_factory.mktemp("robustness-data"))


def test_the_sample_keeps_each_class_share_and_the_same_seed_picks_the_same_images():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    picked = robustness.stratified_sample(labels, 40, seed=3)
    assert np.array_equal(picked, robustness.stratified_sample(labels, 40, seed=3))
    assert not np.array_equal(picked, robustness.stratified_sample(labels, 40, seed=4))
    assert np.array_equal(picked, np.unique(picked))
    assert np.bincount(labels[picked]).tolist() == [20, 10, 6, 4]
    assert np.array_equal(robustness.stratified_sample(labels, 1000, seed=0), np.arange(200))


def test_a_corruption_is_repeatable_and_grows_with_its_severity(sample_test_split):
    images = sample_test_split[0][:16]
    mild = robustness.corrupt_images(images, "gaussian_noise", 1, seed=7)
    harsh = robustness.corrupt_images(images, "gaussian_noise", 5, seed=7)
    assert mild.dtype == np.uint8 and mild.shape == images.shape
    assert np.array_equal(harsh, robustness.corrupt_images(images, "gaussian_noise", 5, seed=7))

    def distance(corrupted):
        return float(np.abs(corrupted.astype(int) - images.astype(int)).mean())

    assert 0 < distance(mild) < distance(harsh)


def test_family_figures_are_the_mean_over_corruptions_and_severities():
    by_corruption = {
        "gaussian_noise": {1: 0.6, 5: 0.2},
        "shot_noise": {1: 0.5, 5: 0.3},
        "brightness": {1: 0.8, 5: 0.6},
    }
    summary = robustness.family_summary(0.8, by_corruption)
    assert set(summary) == {"noise", "digital"}
    assert summary["noise"] == {"accuracy": 0.4, "relative_drop": 0.5}
    assert summary["digital"] == {"accuracy": 0.7, "relative_drop": 0.125}


@pytest.mark.slow
def test_two_models_are_scored_on_the_same_images_in_one_run(
    exported_model, favour7_model, sample_test_split, tmp_path
):
    from cifarflow.components.pixel_predictions import predict_arrays

    results = tmp_path / "robustness.json"
    code = robustness.main(
        [
            *("--model", str(exported_model), "--model", str(favour7_model)),
            *("--label", "linear", "--label", "insects"),
            *("--archive", "sample", "--work", str(tmp_path / "work"), "--images", "60"),
            *("--corruptions", "gaussian_noise", "brightness", "--severities", "1", "5"),
            *("--serving-images", "20", "--serving-sizes", "96", "--serving-qualities", "90"),
            *("--workers", "1", "--results", str(results)),
        ]
    )
    assert code == 0
    linear, insects = json.loads(results.read_text())
    assert linear["run_id"] == insects["run_id"] and linear["images"] == 60

    all_images, all_labels = sample_test_split
    chosen = robustness.stratified_sample(all_labels, 60, seed=0)
    images, labels = all_images[chosen], all_labels[chosen]
    expected = np.mean(predict_arrays(exported_model, images).class_ids == labels)
    assert linear["clean_accuracy"] == round(float(expected), 4)

    # The second model answers "insects" whatever it sees: its accuracy is that
    # class's share, clean, corrupted and through the JPEG serving path alike.
    insects_share = round(float(np.mean(labels == COARSE_CLASS_NAMES.index("insects"))), 4)
    assert insects["clean_accuracy"] == insects_share
    assert insects["corruptions"] == {
        name: {"1": insects_share, "5": insects_share} for name in ("gaussian_noise", "brightness")
    }
    served = robustness.stratified_sample(labels, 20, seed=1)
    served_share = round(float(np.mean(labels[served] == 7)), 4)
    assert insects["serving_path"] == {
        "clean_pixels_accuracy": served_share,
        "jpeg_96px_q90": served_share,
        "jpeg_96px_q90_noise8": served_share,
    }

    every = [acc for by_severity in linear["corruptions"].values() for acc in by_severity.values()]
    assert linear["mean_corruption_accuracy"] == round(float(np.mean(every)), 4)
    assert set(linear["families"]) == {"noise", "digital"}
