"""The EDA report on the real sample."""

from __future__ import annotations

import json
import re

import pytest

from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.components.eda.executor import eda
from cifarflow.components.ingest.executor import ingest
from cifarflow.components.preprocess.executor import preprocess


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("eda")
    ingest("sample", root / "raw")
    preprocess(root / "raw", root / "splits")
    result = eda(root / "splits", root / "eda")
    return result, (root / "eda" / "report.html").read_text()


def test_report_names_every_class_with_its_samples(report):
    _, html = report
    for name in COARSE_CLASS_NAMES:
        assert f"alt='samples of {name}'" in html
    assert "dolphin" in html  # fine classes are listed under their coarse class


def test_report_is_self_contained(report):
    _, html = report
    images = re.findall(r"src='([^']*)'", html)
    assert len(images) >= 40 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=['\"]https?://", html)
    assert html.count("<svg") == 2  # class distribution and pixel histogram
    section = html.split("<h2>Image statistics</h2>")[1].split("<h2>")[0]
    assert section.count("<tr><td>") == 4  # train, val, gate, test


def test_metrics_and_summary(report, tmp_path_factory):
    result, _ = report
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    assert (
        metrics["train_images"] == 1600
        and metrics["val_images"] == 200
        and metrics["gate_images"] == 200
        and metrics["test_images"] == 500
    )
    assert metrics["classes"] == 20 and metrics["train_class_imbalance"] == 1.0
    assert 100 < metrics["train_mean_r"] < 160
    # The data side of the training reference, computed by the shared functions on train.
    from cifarflow import image_statistics
    from cifarflow.data.splits import load_split

    train = load_split(result.out_dir.parent / "splits", "train")
    assert metrics["train_brightness_mean"] == pytest.approx(
        image_statistics.brightness(train.images).mean(), abs=1e-4
    )
    assert 0 < metrics["train_saturation_mean"] < 1 and metrics["train_contrast_mean"] > 0
    summary = (result.out_dir / "summary.md").read_text()
    assert "| vehicles_2 | 80 | 10 | 10 | 25 |" in summary  # train, val, gate, test


def test_eda_on_a_folder_that_is_not_preprocessed(tmp_path):
    from cifarflow.errors import BadInputError

    with pytest.raises(BadInputError, match="run 'cifarflow preprocess' first"):
        eda(tmp_path, tmp_path / "out")
