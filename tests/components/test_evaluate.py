"""Evaluation metrics against hand-computed values, and the evaluate step on a real trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifarflow.calibration import (
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from cifarflow.components.candidate import Candidate, CandidateMetrics
from cifarflow.components.evaluate.metrics import (
    classification_report,
    confusion_matrix,
    per_class_scores,
    top_k_accuracy,
)
from cifarflow.data.splits import load_split, split_checksum

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_metrics_match_a_hand_computed_confusion_matrix():
    # 3 classes, 10 images. Rows: true class, columns: predicted.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    predicted = np.array([0, 0, 0, 1, 1, 1, 2, 0, 2, 2])
    matrix = confusion_matrix(labels, predicted, 3)
    assert matrix.tolist() == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    scores = per_class_scores(matrix)
    # precision = column diagonal share, recall = row diagonal share
    np.testing.assert_allclose(scores["precision"], [3 / 4, 2 / 3, 2 / 3])
    np.testing.assert_allclose(scores["recall"], [3 / 4, 2 / 3, 2 / 3])
    np.testing.assert_allclose(scores["f1"], [3 / 4, 2 / 3, 2 / 3])
    assert scores["support"].tolist() == [4, 3, 3]

    # One-hot-ish scores whose argmax is `predicted`.
    logits = np.full((10, 3), -2.0)
    logits[np.arange(10), predicted] = 2.0
    report = classification_report(
        labels, logits, softmax(logits), softmax(logits), ["a", "b", "c"]
    )
    assert report["accuracy"] == pytest.approx(0.7)
    assert report["macro_f1"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert report["confusion_matrix"] == matrix.tolist()
    assert [row["class"] for row in report["per_class"]] == ["a", "b", "c"]


def test_a_class_never_predicted_counts_as_zero_in_the_macro_average():
    matrix = confusion_matrix(np.array([0, 1, 2]), np.array([0, 1, 1]), 3)
    scores = per_class_scores(matrix)
    assert scores["precision"].tolist() == [1.0, 0.5, 0.0]
    assert scores["f1"][2] == 0.0


def test_top_k_accuracy():
    scores = np.array([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([2, 2, 0])
    assert top_k_accuracy(scores, labels, 1) == 0.0
    assert top_k_accuracy(scores, labels, 2) == pytest.approx(1 / 3)
    assert top_k_accuracy(scores, labels, 3) == 1.0
    assert top_k_accuracy(scores, labels, 5) == 1.0  # k larger than the class count


def test_expected_calibration_error_by_hand():
    # Two bins used: confidence 0.9 (2 images, 1 right) and 0.6 (2 images, 2 right).
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(expected)
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 0.0


def test_temperature_fit_recovers_a_known_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0.0, 1.5, size=(20_000, 20))
    probabilities = softmax(true_logits)
    labels = np.array([rng.choice(20, p=p) for p in probabilities])
    overconfident = 3.0 * true_logits
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.08)
    before = expected_calibration_error(softmax(overconfident), labels)
    after = expected_calibration_error(softmax(overconfident / temperature), labels)
    assert after < before / 3


def test_evaluate_writes_a_complete_candidate(candidate, trained_model, sample_data):
    metrics = json.loads((candidate / "metrics.json").read_text())
    test = load_split(sample_data, "test")
    labels = np.asarray(test.coarse_labels, dtype=np.int64)
    predictions = np.load(candidate / "test_predictions.npy")
    assert predictions.dtype == np.int64 and predictions.shape == (500,)
    np.testing.assert_array_equal(np.load(candidate / "test_labels.npy"), labels)
    # The stored numbers are those of the stored predictions.
    assert metrics["accuracy"] == pytest.approx(float((predictions == labels).mean()))
    assert metrics["confusion_matrix"] == confusion_matrix(labels, predictions, 20).tolist()
    assert sum(map(sum, metrics["confusion_matrix"])) == 500
    for key in (
        "accuracy",
        "top5_accuracy",
        "macro_f1",
        "macro_precision",
        "macro_recall",
        "ece",
        "ece_uncalibrated",
        "val_accuracy",
        "val_macro_f1",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert (
        metrics["top5_accuracy"] >= metrics["accuracy"] > 0.05
    )  # better than chance on real images
    assert metrics["splits"]["val"]["count"] == 200 and metrics["splits"]["test"]["count"] == 500
    assert len(metrics["splits"]["test"]["per_class"]) == 20 and len(metrics["class_names"]) == 20
    assert metrics["test_data_sha256"] == split_checksum(test)
    # sample_data predates the gate split: no gate predictions, and the record says so.
    assert not (candidate / "gate_predictions.npy").exists() and "gate_accuracy" not in metrics
    assert Candidate.open(candidate).predictions("gate") is None
    # The candidate carries the model too: it is what select and publish take.
    assert (candidate / "saved_model.pb").is_file() and (candidate / "model.keras").is_file()
    report = (candidate / "evaluation.html").read_text()
    assert "large_man-made_outdoor_things" in report and report.count("data:image/png;base64,") == 2
    # Evaluating twice gives the same numbers (nothing random at inference).
    assert metrics["val_accuracy"] == pytest.approx(
        json.loads((trained_model / "train_summary.json").read_text())["best_val_accuracy"],
        abs=0.011,
    )


def test_evaluate_cli_in_place_and_its_errors(trained_model, sample_data, tmp_path, capsys):
    import shutil

    from cifarflow.cli.main import main

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    assert (
        main(["evaluate", "--model", str(model), "--data", str(sample_data), "--out", str(model)])
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("test: accuracy ") and (model / "metrics.json").is_file()
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path),
                "--data",
                str(sample_data),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "has no saved_model.pb" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model),
                "--data",
                str(tmp_path / "nowhere"),
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )


@pytest.fixture(scope="module")
def gated_data(tmp_path_factory):
    """The sample through the pipeline's own ingest and preprocess: train, val, gate, test."""
    from cifarflow.components.ingest.executor import ingest
    from cifarflow.components.preprocess.executor import preprocess

    root = tmp_path_factory.mktemp("gated")
    ingest("sample", root / "raw")
    return preprocess(root / "raw", root / "splits").out_dir


def test_evaluate_records_paired_gate_predictions(trained_model, gated_data, sample_data, tmp_path):
    from cifarflow.components.evaluate.executor import candidate_metadata, evaluate, logged_metrics

    result = evaluate(trained_model, gated_data, tmp_path / "c")
    gate = load_split(gated_data, "gate")
    recorded = Candidate.open(tmp_path / "c").predictions("gate")
    assert recorded is not None and len(recorded) == len(gate) == 200
    np.testing.assert_array_equal(recorded.labels, gate.coarse_labels.astype(np.int64))
    assert (
        recorded.checksum == split_checksum(gate) != split_checksum(load_split(gated_data, "test"))
    )
    metrics = CandidateMetrics.read(tmp_path / "c")
    assert metrics == result.metrics  # what was written is what was returned
    assert metrics.value("gate_accuracy") == pytest.approx(recorded.accuracy)
    assert metrics.counts == {"val": 200, "gate": 200, "test": 500}
    # What the KFP component logs and attaches to its candidate artifact.
    assert logged_metrics(metrics)["gate_accuracy"] == metrics.value("gate_accuracy")
    assert candidate_metadata(metrics)["gate_accuracy"] == metrics.value("gate_accuracy")
    assert (tmp_path / "c" / "evaluation.html").read_text().count("data:image/png;base64,") == 3
    # Re-evaluated in place on data without a gate split: no stale gate predictions stay behind.
    evaluate(tmp_path / "c", sample_data, tmp_path / "c")
    assert not (tmp_path / "c" / "gate_predictions.npy").exists()
    assert Candidate.open(tmp_path / "c").predictions("gate") is None


def test_metrics_json_round_trips_and_names_what_is_missing(candidate, tmp_path):
    from cifarflow.errors import BadInputError

    metrics = CandidateMetrics.read(candidate)
    assert CandidateMetrics.from_json(metrics.to_json()) == metrics
    values = metrics.to_json()
    del values["confusion_matrix"], values["class_names"]
    (tmp_path / "metrics.json").write_text(json.dumps(values))
    with pytest.raises(BadInputError, match="lacks confusion_matrix, class_names"):
        CandidateMetrics.read(tmp_path)


def test_the_train_summary_contract_reads_what_train_writes(trained_model, tmp_path):
    from cifarflow.components.candidate import TrainSummary, write_train_summary

    summary = TrainSummary.read(trained_model)  # written by the real train step
    written = json.loads((trained_model / "train_summary.json").read_text())
    assert summary == TrainSummary(written["trial"], written["class_names"], written["temperature"])
    assert TrainSummary.read(tmp_path) is None  # a model from elsewhere has none
    write_train_summary(tmp_path, written)  # what train can switch to
    assert TrainSummary.read(tmp_path) == summary
