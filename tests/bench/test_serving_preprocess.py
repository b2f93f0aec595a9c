"""bench/serving_preprocess.py: every candidate scored on the same images, the record, and the pick."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from bench import robustness, serving_preprocess
from cifarflow.photo_pixels import SERVING
from tests.serving.images import cifar_test_images


@pytest.fixture(scope="module")
def sample_splits(tmp_path_factory):
    """The shipped sample through the pipeline's ingest and preprocess (val and test)."""
    work = tmp_path_factory.mktemp("serving-preprocess")
    robustness.official_test_split("sample", work)
    return work / "data"


def test_a_run_scores_every_candidate_and_records_the_pick(
    exported_model, favour7_model, sample_splits, tmp_path
):
    from cifarflow.components.pixel_predictions import predict_arrays
    from cifarflow.data.splits import load_split

    args = ["--data", str(sample_splits), "--images", "40", "--sizes", "96", "--qualities", "90"]
    results = tmp_path / "serving_preprocess.json"
    assert (
        serving_preprocess.main(["--model", str(exported_model), *args, "--results", str(results)])
        == 0
    )
    assert (
        serving_preprocess.main(["--model", str(favour7_model), *args, "--results", str(results)])
        == 0
    )
    linear, insects = json.loads(results.read_text())

    names = {c.name for c in serving_preprocess.CANDIDATES}
    cases = linear["splits"]["val"]["cases"]
    assert set(cases) == {
        "native_32px",
        "jpeg_96px_q90",
        "jpeg_96px_q90_noise8",
        "exif6_jpeg_96px_q90",
    }
    assert set(cases["native_32px"]) == set(cases["jpeg_96px_q90_noise8"]) == names
    assert linear["winner_on_val"] in names and linear["current"] == SERVING.name

    # 32x32 in, 32x32 out, whole frame: the pixels are the model's own.
    val = load_split(sample_splits, "val", mmap=False)
    labels = np.asarray(val.coarse_labels, dtype=np.int64)
    chosen = robustness.stratified_sample(labels, 40, seed=0)
    expected = np.mean(
        predict_arrays(exported_model, val.images[chosen]).class_ids == labels[chosen]
    )
    assert cases["native_32px"][SERVING.name] == round(float(expected), 4)

    # A model that always answers "insects" scores that class's share, whatever the pixels.
    share = round(float(np.mean(labels[chosen] == 7)), 4)
    for scores in insects["splits"]["val"]["cases"].values():
        assert set(scores.values()) == {share}
    assert insects["winner_on_val"] == SERVING.name  # a tie keeps the current choice


def test_sensor_noise_is_added_at_the_photo_size_and_averaged_away_by_an_area_resize():
    from PIL import Image

    from cifarflow.photo_pixels import PhotoPreprocessing

    images = cifar_test_images()[0][:8]
    clean = robustness.jpeg_photos(images, 256, 95)
    noisy = robustness.jpeg_photos(images, 256, 95, noise_sigma=8.0, seed=1)
    assert noisy != robustness.jpeg_photos(images, 256, 95, noise_sigma=8.0, seed=2)

    def decoded(photo: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"), np.float32)

    full = np.std([decoded(n) - decoded(c) for n, c in zip(noisy, clean, strict=True)])
    assert 5.0 < full < 9.0  # sigma 8, a little of it smoothed by the JPEG

    def at_32(photos, method: str, antialias: bool) -> np.ndarray:
        candidate = PhotoPreprocessing(method=method, antialias=antialias)
        return serving_preprocess.candidate_pixels(photos, [candidate])[candidate.name]

    area = np.std(at_32(noisy, "area", True).astype(float) - at_32(clean, "area", True))
    sampled = np.std(
        at_32(noisy, "bilinear", False).astype(float) - at_32(clean, "bilinear", False)
    )
    # 64 photo pixels averaged per output pixel (sigma / 8, plus rounding), against 4 sampled
    assert area < 1.5 < 2.5 < sampled
