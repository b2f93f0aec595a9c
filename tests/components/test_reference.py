"""The training reference on a real trained model and the real sample, through to the store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cifarflow import image_statistics as stats
from cifarflow import ood_scores
from cifarflow.components.candidate import REFERENCE_FILE, read_reference, write_reference
from cifarflow.components.pixel_predictions import predict_arrays
from cifarflow.components.preprocess.statistics import channel_histograms, moments
from cifarflow.data.splits import load_split, split_checksum
from cifarflow.errors import BadInputError
from cifarflow.serving.store import open_store
from cifarflow.training_reference import TrainingReference

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def reference(candidate) -> TrainingReference:
    found = read_reference(candidate)
    assert found is not None, "evaluate wrote no reference.json"
    return found


def test_the_data_side_describes_the_train_split(reference, sample_data):
    train = load_split(sample_data, "train")
    data = reference.data
    assert (data.split, data.images, data.data_sha256) == ("train", 1800, split_checksum(train))
    assert (data.input.height, data.input.width, data.input.aspect_ratio) == (32, 32, 1.0)
    # The class prior is the train labels' counts.
    assert data.class_counts == np.bincount(train.coarse_labels, minlength=20).tolist()
    assert sum(data.class_prior) == pytest.approx(1.0)
    # Channel moments agree with preprocess's own (independent) implementation.
    means, stds = moments(channel_histograms(train.images))
    assert [data.channels[c].mean for c in "RGB"] == pytest.approx(means, abs=1e-4)
    assert [data.channels[c].std for c in "RGB"] == pytest.approx(stds, abs=1e-4)
    for channel in data.channels.values():
        assert channel.histogram.edges == stats.PIXEL_EDGES.tolist()
        assert sum(channel.histogram.counts) == 1800 * 32 * 32
    for feature, edges in (
        (data.brightness, stats.BRIGHTNESS_EDGES),
        (data.contrast, stats.CONTRAST_EDGES),
        (data.saturation, stats.SATURATION_EDGES),
    ):
        assert feature.histogram.edges == edges.tolist()
        assert sum(feature.histogram.counts) == feature.count == 1800
        assert feature.min <= feature.quantile(0.5) <= feature.max
    # Real photographs: neither black nor flat nor grey on average.
    assert 60 < data.brightness.mean < 200 and 20 < data.contrast.mean < 100
    assert 0.1 < data.saturation.mean < 0.6
    assert data.brightness.mean == pytest.approx(stats.brightness(train.images).mean())


def test_the_95_percent_threshold_passes_95_percent_of_val(reference, candidate, sample_data):
    val = load_split(sample_data, "val")
    logits = predict_arrays(candidate, val.images).logits  # the served graph, again
    scores = reference.scores
    assert (scores.split, scores.images, scores.data_sha256) == ("val", 200, split_checksum(val))
    assert set(scores.scores) == {"energy", "max_softmax"}
    assert sum(scores.predicted_class_counts) == 200
    for name, recorded in scores.scores.items():
        values = ood_scores.score(name, logits)
        passed = int(ood_scores.passes(name, values, recorded.threshold).sum())
        assert abs(passed - 0.95 * 200) <= 1, (name, passed)
        assert recorded.passed == passed and recorded.pass_rate == 0.95
        assert sum(recorded.distribution.histogram.counts) == 200
        assert recorded.distribution.histogram.edges == ood_scores.SCORE_EDGES[name].tolist()
        assert recorded.distribution.mean == pytest.approx(values.mean(), rel=1e-5)
    # Directions: max-softmax passes above its threshold, energy below.
    assert scores.scores["max_softmax"].higher_passes and not scores.scores["energy"].higher_passes
    assert 1 / 20 <= scores.scores["max_softmax"].threshold <= 1.0
    assert math.isfinite(scores.scores["energy"].threshold)


def test_reference_json_round_trips_through_the_contract(reference, candidate, tmp_path):
    raw = json.loads((candidate / REFERENCE_FILE).read_text())
    assert raw["schema_version"] == 1
    assert TrainingReference.from_json(raw) == reference
    write_reference(tmp_path, reference)
    assert read_reference(tmp_path) == reference
    assert read_reference(tmp_path / "nothing-here") is None
    raw["schema_version"] = 2
    (tmp_path / REFERENCE_FILE).write_text(json.dumps(raw))
    with pytest.raises(BadInputError, match="schema_version 2"):
        read_reference(tmp_path)
    del raw["data"]
    raw["schema_version"] = 1
    (tmp_path / REFERENCE_FILE).write_text(json.dumps(raw))
    with pytest.raises(BadInputError, match="not a training reference"):
        read_reference(tmp_path)
    brief = reference.brief()
    assert brief["ood_thresholds"]["max_softmax"]["pass_when"] == ">="
    assert brief["ood_thresholds"]["energy"]["passed"] == reference.scores.scores["energy"].passed


def test_a_published_version_carries_the_reference_local_and_s3(
    candidate, reference, tmp_path, s3_server, s3_bucket
):
    from cifarflow.components.publish.executor import publish

    local = publish(candidate, str(tmp_path / "store"), "cifar", run_id="r1")
    assert read_reference(tmp_path / "store" / "cifar" / str(local.version)) == reference
    uri = f"s3://{s3_bucket}/models"
    remote = publish(candidate, uri, "cifar", s3_settings=s3_server.settings)
    store = open_store(uri, s3_server.settings)
    assert REFERENCE_FILE in store.manifest("cifar", remote.version)["files"]
    store.download("cifar", remote.version, tmp_path / "downloaded")  # checked against the manifest
    assert read_reference(tmp_path / "downloaded") == reference


def test_models_show_summarises_the_reference(candidate, reference, tmp_path, capsys):
    from cifarflow.cli.main import main
    from cifarflow.components.publish.executor import publish

    publish(candidate, str(tmp_path / "store"), "cifar")
    capsys.readouterr()
    args = ["models", "show", "--store", str(tmp_path / "store"), "--model-name", "cifar"]
    assert main(args) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["reference"] == json.loads(json.dumps(reference.brief()))
    assert shown["reference"]["data"] == "train, 1800 images"
