"""bench/accuracy.py --smoke: the benchmark's own code path, on the shipped sample."""

from __future__ import annotations

import json

import pytest

from bench import accuracy

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_smoke_run_preprocesses_like_the_pipeline_and_reports_val_gate_and_test(tmp_path):
    recorded = accuracy.RESULTS.read_bytes() if accuracy.RESULTS.is_file() else None
    assert accuracy.main(["--smoke", "--work", str(tmp_path)]) == 0
    (record,) = json.loads((tmp_path / "accuracy.json").read_text())
    # The pipeline's own preprocess made the splits: its stats.json and its gate split.
    stats = json.loads((tmp_path / "data" / "stats.json").read_text())
    assert stats["checks"] and stats["gate_fraction"] == 0.1
    assert (record["val_count"], record["gate_count"], record["test_count"]) == (200, 200, 500)
    for key in ("accuracy", "val_accuracy", "gate_accuracy", "macro_f1", "gate_macro_f1"):
        assert 0.0 <= record[key] <= 1.0, key
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert record["gate_accuracy"] == round(metrics["gate_accuracy"], 4)
    assert record["epochs"] == 1 and record["smoke"] is True and record["split"] == "test"
    # A smoke run never touches the recorded results.
    assert (accuracy.RESULTS.read_bytes() if accuracy.RESULTS.is_file() else None) == recorded
