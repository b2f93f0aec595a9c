"""Selection and the McNemar gate: hand-checked statistics, constructed champions, local and S3 stores."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from cifarflow.components.candidate import CandidateMetrics
from cifarflow.components.select_best.champion import find_champion
from cifarflow.components.select_best.executor import SelectConfig, select_best, summary_metrics
from cifarflow.components.select_best.leaderboard import Entry, rank
from cifarflow.components.select_best.mcnemar import (
    challenger_wins,
    chi_square_p,
    exact_binomial_p,
    mcnemar_test,
)
from cifarflow.errors import BadInputError, DataAnomalyError
from cifarflow.serving.store import local_store

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --- the statistics -------------------------------------------------------------------


def test_exact_binomial_p_values_by_hand():
    assert exact_binomial_p(10, 0) == pytest.approx(2 / 1024)
    # 2 * P(X <= 4), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45 + 120 + 210) / 1024
    assert exact_binomial_p(6, 4) == pytest.approx(2 * 386 / 1024)
    assert exact_binomial_p(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert exact_binomial_p(5, 5) == 1.0
    assert exact_binomial_p(0, 0) == 1.0


# Reference values from an independent 60-digit Decimal sum of the Bin(n, 1/2)
# probabilities, built by the recurrence p(i + 1) = p(i) (n - i) / (i + 1)
# starting from p(0) = 2**-n (no binomial coefficients, no floats).
@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (530, 470, 6.202319509836e-2),  # 1,000 pairs
        (600, 400, 2.728464156066e-10),  # 1,000 pairs, far in the tail
        (600, 500, 2.819544991436e-3),  # 1,100 pairs: 2.0**n overflowed from 1,024
        (2550, 2450, 1.614852223974e-1),  # 5,000 pairs
        (2600, 2400, 4.883649737518e-3),  # 5,000 pairs
        (700, 324, 2.015237221922e-32),  # 1,024 pairs, a p-value far below float's epsilon
    ],
)
def test_exact_binomial_p_for_many_discordant_pairs(b, c, expected):
    assert exact_binomial_p(b, c) == pytest.approx(expected, rel=1e-9)
    assert exact_binomial_p(c, b) == exact_binomial_p(b, c)  # two-sided: symmetric


def test_exact_test_runs_at_any_size_and_agrees_with_chi_square_when_large():
    labels, new, old = _paired(b=2600, c=2400, both_right=3000, both_wrong=2000)
    exact = mcnemar_test(labels, new, old, exact_below=10**9)
    assert exact.method == "exact-binomial" and exact.discordant == 5000
    approximate = mcnemar_test(labels, new, old)
    assert approximate.method == "chi-square-corrected"
    # At 5,000 pairs the continuity-corrected chi-square is within a few percent of exact.
    assert approximate.p_value == pytest.approx(exact.p_value, rel=0.05)


def test_chi_square_with_continuity_correction_by_hand():
    statistic, p = chi_square_p(60, 30)
    assert statistic == pytest.approx(29**2 / 90)
    assert p == pytest.approx(math.erfc(math.sqrt(29**2 / 90 / 2)))
    assert p == pytest.approx(0.002237, rel=1e-3)  # chi-square(1) survival at 9.344


def _paired(
    b: int, c: int, both_right: int, both_wrong: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two prediction vectors with exactly these concordance counts."""
    n = b + c + both_right + both_wrong
    labels = np.arange(n) % 20
    wrong = (labels + 1) % 20
    challenger = np.concatenate(
        [
            labels[:b],
            wrong[b : b + c],
            labels[b + c : b + c + both_right],
            wrong[b + c + both_right :],
        ]
    )
    champion = np.concatenate(
        [
            wrong[:b],
            labels[b : b + c],
            labels[b + c : b + c + both_right],
            wrong[b + c + both_right :],
        ]
    )
    return labels, challenger, champion


def test_mcnemar_counts_and_method_on_constructed_predictions():
    labels, new, old = _paired(b=10, c=0, both_right=400, both_wrong=90)
    result = mcnemar_test(labels, new, old)
    assert (
        result.challenger_only,
        result.champion_only,
        result.both_correct,
        result.both_wrong,
    ) == (10, 0, 400, 90)
    assert result.method == "exact-binomial" and result.p_value == pytest.approx(2 / 1024)
    assert challenger_wins(result, alpha=0.05) and not challenger_wins(result, alpha=0.001)

    labels, new, old = _paired(b=60, c=30, both_right=300, both_wrong=110)
    result = mcnemar_test(labels, new, old)
    assert result.method == "chi-square-corrected" and result.p_value == pytest.approx(
        0.002237, rel=1e-3
    )
    assert mcnemar_test(labels, new, old, exact_below=1000).method == "exact-binomial"

    # More right in total is not enough when the difference is noise.
    labels, new, old = _paired(b=6, c=4, both_right=400, both_wrong=90)
    assert not challenger_wins(mcnemar_test(labels, new, old), alpha=0.05)
    # A significant difference the wrong way round never publishes.
    labels, new, old = _paired(b=0, c=10, both_right=400, both_wrong=90)
    assert not challenger_wins(mcnemar_test(labels, new, old), alpha=0.05)
    with pytest.raises(BadInputError, match="differ in length"):
        mcnemar_test(labels, new[:-1], old)


def _entry(index: int, **values: float) -> Entry:
    metrics = {"accuracy": 0.5, "top5_accuracy": 0.9, "macro_f1": 0.5, "confusion_matrix": [[1]]}
    parsed = CandidateMetrics.from_json({**metrics, "class_names": ["a"], **values})
    return Entry(index=index, path=Path(f"c{index}"), metrics=parsed)


def test_ranking_is_deterministic_with_tie_breaks():
    candidates = [
        _entry(0, val_accuracy=0.80, val_macro_f1=0.70, val_loss=0.9),
        _entry(1, val_accuracy=0.82, val_macro_f1=0.60, val_loss=1.0),
        _entry(2, val_accuracy=0.80, val_macro_f1=0.75, val_loss=0.9),
        _entry(3, val_accuracy=0.80, val_macro_f1=0.75, val_loss=0.9),
        _entry(4, val_macro_f1=0.99),  # no val_accuracy: ranked last
    ]
    assert [c.index for c in rank(candidates, "val_accuracy")] == [1, 2, 3, 0, 4]
    assert [c.index for c in rank(list(reversed(candidates)), "val_accuracy")] == [1, 2, 3, 0, 4]
    assert [c.index for c in rank(candidates, "val_loss")][:3] == [2, 3, 0]  # lower loss first


# --- the step on real candidates --------------------------------------------------------


@pytest.fixture(scope="module")
def gated_data(tmp_path_factory) -> Path:
    """The sample through the pipeline's own ingest and preprocess: train, val, gate, test."""
    from cifarflow.components.ingest.executor import ingest
    from cifarflow.components.preprocess.executor import preprocess

    root = tmp_path_factory.mktemp("gated")
    ingest("sample", root / "raw")
    return preprocess(root / "raw", root / "splits").out_dir


@pytest.fixture(scope="module")
def gated(tmp_path_factory, trained_model, gated_data) -> Path:
    """`trained_model` evaluated on `gated_data`: a candidate with gate predictions.

    The model was trained on the test helper's split, so some gate images were
    among its training images; these tests check the gate's pairing and
    decisions, which that does not touch.
    """
    from cifarflow.components.evaluate.executor import evaluate

    out = tmp_path_factory.mktemp("gated-candidate") / "candidate"
    evaluate(trained_model, gated_data, out)
    return out


def _clone(candidate: Path, folder: Path, **metric_overrides) -> Path:
    shutil.copytree(candidate, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.update(metric_overrides)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def _publish_version(
    store: Path,
    version: int,
    source: Path,
    gate_predictions: np.ndarray | None = None,
    complete: bool = True,
) -> Path:
    """A store version the way publish lays it out (files copied verbatim, cifarflow.json last)."""
    folder = store / "cifarflow" / str(version)
    shutil.copytree(source, folder)
    if gate_predictions is not None:
        np.save(folder / "gate_predictions.npy", gate_predictions.astype(np.int64))
    if complete:
        (folder / "cifarflow.json").write_text(json.dumps({"version": version}))
    return folder


def _champion_predictions(
    candidate: Path, better_by: int, worse_by: int, split: str = "gate"
) -> np.ndarray:
    """Champion predictions relative to the candidate's: wrong on `better_by` images the
    candidate gets right, right on `worse_by` images the candidate gets wrong."""
    labels = np.load(candidate / f"{split}_labels.npy")
    own = np.load(candidate / f"{split}_predictions.npy")
    champion = own.copy()
    right = np.flatnonzero(own == labels)
    wrong = np.flatnonzero(own != labels)
    assert len(right) >= better_by and len(wrong) >= worse_by
    champion[right[:better_by]] = (labels[right[:better_by]] + 1) % 20
    champion[wrong[:worse_by]] = labels[wrong[:worse_by]]
    return champion


def test_best_candidate_wins_and_no_store_means_publish(candidate, tmp_path):
    a = _clone(candidate, tmp_path / "a", val_accuracy=0.30)
    b = _clone(candidate, tmp_path / "b", val_accuracy=0.35)
    result = select_best([a, b], tmp_path / "out")
    assert result.winner == 1 and result.publish and result.decision == "publish"
    model = Path(result.model_dir)
    assert json.loads((model / "metrics.json").read_text())["val_accuracy"] == 0.35
    for name in (
        "saved_model.pb",
        "variables",
        "model.keras",
        "test_predictions.npy",
        "test_labels.npy",
    ):
        assert (model / name).exists(), name
    leaderboard = (tmp_path / "out" / "leaderboard.md").read_text()
    rows = [
        line
        for line in leaderboard.splitlines()
        if line.startswith("| ") and not line.startswith("| rank")
    ]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "0"]
    selection = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert selection["publish"] is True and selection["gate"]["reason"].startswith("no model store")
    assert [r["index"] for r in selection["ranking"]] == [1, 0]


def test_gate_against_a_local_champion_on_the_gate_split(gated, tmp_path):
    store = tmp_path / "store"
    assert find_champion(str(store), "cifarflow") is None
    no_champion = select_best([gated], tmp_path / "first", SelectConfig(store=str(store)))
    assert no_champion.publish and "no champion" in no_champion.record["gate"]["reason"]

    _publish_version(store, 1, gated, _champion_predictions(gated, better_by=30, worse_by=0))
    champion_folder = _publish_version(
        store, 2, gated, _champion_predictions(gated, better_by=25, worse_by=0)
    )
    _publish_version(store, 3, gated, complete=False)  # being written: never the champion
    champion = find_champion(str(store), "cifarflow")
    assert champion.version == 2 and champion.location == str(champion_folder)

    clearly_better = select_best([gated], tmp_path / "s1", SelectConfig(store=str(store)))
    gate = clearly_better.record["gate"]
    assert clearly_better.publish and gate["decision"] == "publish" and gate["split"] == "gate"
    assert gate["mcnemar"]["challenger_only"] == 25 and gate["mcnemar"]["champion_only"] == 0
    assert gate["mcnemar"]["images"] == 200  # the gate split, not the 500 test images
    assert gate["mcnemar"]["method"] == "chi-square-corrected" and gate["mcnemar"]["p_value"] < 1e-4
    assert gate["champion"]["version"] == 2
    # The run-summary Metrics the KFP component logs, from the same result.
    summary = summary_metrics(clearly_better)
    assert summary["best_gate_accuracy"] == pytest.approx(gate["mcnemar"]["challenger_accuracy"])
    assert summary["best_accuracy"] == json.loads((gated / "metrics.json").read_text())["accuracy"]
    assert (summary["trials"], summary["publish"]) == (1.0, 1.0)
    assert summary["gate_p_value"] == gate["mcnemar"]["p_value"]

    # Two more right, one fewer: noise. The champion stays unless forced.
    np.save(
        champion_folder / "gate_predictions.npy",
        _champion_predictions(gated, better_by=2, worse_by=1),
    )
    noise = select_best([gated], tmp_path / "s2", SelectConfig(store=str(store)))
    assert not noise.publish and noise.decision == "keep_champion"
    assert noise.record["gate"]["mcnemar"]["method"] == "exact-binomial"
    assert noise.record["gate"]["mcnemar"]["p_value"] == pytest.approx(1.0)
    forced = select_best([gated], tmp_path / "s3", SelectConfig(store=str(store), force=True))
    assert (
        forced.publish
        and forced.record["gate"]["forced"]
        and "forced" in forced.record["gate"]["reason"]
    )
    # A looser alpha does not turn noise into a win.
    assert not select_best(
        [gated], tmp_path / "s4", SelectConfig(store=str(store), alpha=0.5)
    ).publish


def test_the_official_test_set_never_decides(gated, tmp_path):
    """A champion far worse on test but identical on the gate split is kept."""
    store = tmp_path / "store"
    folder = _publish_version(store, 1, gated)
    np.save(
        folder / "test_predictions.npy",
        _champion_predictions(gated, better_by=60, worse_by=0, split="test"),
    )
    result = select_best([gated], tmp_path / "out", SelectConfig(store=str(store)))
    assert not result.publish and result.record["gate"]["mcnemar"]["discordant"] == 0


def test_the_champion_is_the_version_labelled_stable_when_there_is_one(gated, tmp_path):
    store = tmp_path / "store"
    _publish_version(store, 1, gated, _champion_predictions(gated, better_by=30, worse_by=0))
    _publish_version(store, 2, gated, _champion_predictions(gated, better_by=0, worse_by=0))
    # Version 2 was published but rolled back: 1 is what serves, so 1 is what the gate must beat.
    local_store(store).promote("cifarflow", 1, "stable")
    champion = find_champion(str(store), "cifarflow")
    assert (champion.version, champion.label) == (1, "stable")
    result = select_best([gated], tmp_path / "out", SelectConfig(store=str(store)))
    recorded = result.record["gate"]["champion"]
    assert result.publish and (recorded["version"], recorded["label"]) == (1, "stable")
    assert recorded["location"] == str(store / "cifarflow" / "1")
    assert result.record["gate"]["mcnemar"]["challenger_only"] == 30
    # A label pointing at a version that is gone falls back to the newest complete one.
    (store / "cifarflow" / "1" / "cifarflow.json").unlink()
    assert (
        find_champion(str(store), "cifarflow").version,
        find_champion(str(store), "cifarflow").label,
    ) == (2, None)


def test_a_champion_from_other_gate_data_is_rescored_not_trusted(gated, gated_data, tmp_path):
    store = tmp_path / "store"
    folder = _publish_version(
        store, 1, gated, _champion_predictions(gated, better_by=30, worse_by=0)
    )
    # Its recorded predictions say it is far worse, but they were made on another gate split.
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["gate_data_sha256"] = "0" * 64
    (folder / "metrics.json").write_text(json.dumps(metrics))
    blind = select_best([gated], tmp_path / "s1", SelectConfig(store=str(store)))
    assert not blind.publish and "pass --data" in blind.record["gate"]["reason"]
    rerun = select_best(
        [gated], tmp_path / "s2", SelectConfig(store=str(store), data_dir=str(gated_data))
    )
    gate = rerun.record["gate"]
    # Re-scored, it is the same model as the winner: no discordant pair, nothing to replace.
    assert gate["mcnemar"]["champion_predictions"].endswith("re-scored on the gate split")
    assert gate["mcnemar"]["discordant"] == 0 and not rerun.publish


def test_a_champion_without_gate_predictions_is_rescored_from_s3(
    gated, gated_data, tmp_path, s3_server, s3_bucket
):
    client = s3_server.settings.client()
    source = tmp_path / "v7"
    shutil.copytree(gated, source)
    for name in ("gate_predictions.npy", "gate_labels.npy"):  # published before the gate split
        (source / name).unlink()
    (source / "cifarflow.json").write_text("{}")
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        client.fput_object(s3_bucket, f"prod/cifarflow/7/{path.relative_to(source)}", str(path))
    client.fput_object(
        s3_bucket, "prod/cifarflow/9/saved_model.pb", str(source / "saved_model.pb")
    )  # incomplete
    champion = find_champion(f"s3://{s3_bucket}/prod", "cifarflow", s3_server.settings)
    assert champion.version == 7 and champion.location == f"s3://{s3_bucket}/prod/cifarflow/7"
    assert (
        champion.gate is None
        and champion.class_names == json.loads((gated / "metrics.json").read_text())["class_names"]
    )
    config = SelectConfig(
        store=f"s3://{s3_bucket}/prod", s3=s3_server.settings, data_dir=str(gated_data)
    )
    result = select_best([gated], tmp_path / "out", config)
    gate = result.record["gate"]
    assert (
        gate["mcnemar"]["champion_predictions"] == "champion version 7 re-scored on the gate split"
    )
    assert gate["mcnemar"]["images"] == 200 and gate["mcnemar"]["discordant"] == 0


def test_the_gate_refuses_other_data_and_other_classes(gated, tmp_path, sample_raw_for_seed):
    store = tmp_path / "store"
    folder = _publish_version(store, 1, gated)
    (folder / "gate_predictions.npy").unlink()
    with pytest.raises(DataAnomalyError, match="evaluated on another gate split"):
        select_best(
            [gated],
            tmp_path / "o1",
            SelectConfig(store=str(store), data_dir=str(sample_raw_for_seed)),
        )
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["class_names"] = list(reversed(metrics["class_names"]))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(DataAnomalyError, match="champion version 1 has other classes"):
        select_best([gated], tmp_path / "o2", SelectConfig(store=str(store)))
    forced = select_best([gated], tmp_path / "o3", SelectConfig(store=str(store), force=True))
    assert (
        forced.publish
        and "forced (--force) without a comparison" in forced.record["gate"]["reason"]
    )


@pytest.fixture
def sample_raw_for_seed(tmp_path):
    """The sample preprocessed with another seed: other gate images."""
    from cifarflow.components.ingest.executor import ingest
    from cifarflow.components.preprocess.executor import PreprocessConfig, preprocess

    ingest("sample", tmp_path / "raw")
    return preprocess(tmp_path / "raw", tmp_path / "seed1", PreprocessConfig(seed=1)).out_dir


def test_a_winner_without_gate_predictions_keeps_the_champion(candidate, gated, tmp_path):
    store = tmp_path / "store"
    _publish_version(store, 1, gated)
    kept = select_best([candidate], tmp_path / "o1", SelectConfig(store=str(store)))
    assert not kept.publish and "has no gate predictions" in kept.record["gate"]["reason"]
    forced = select_best([candidate], tmp_path / "o2", SelectConfig(store=str(store), force=True))
    assert forced.publish


def test_select_cli(gated, tmp_path, capsys):
    from cifarflow.cli.main import main

    store = tmp_path / "store"
    _publish_version(store, 1, gated, _champion_predictions(gated, better_by=3, worse_by=0))
    args = [
        "select",
        "--candidates",
        str(gated),
        "--out",
        str(tmp_path / "out"),
        "--store",
        str(store),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "decision: keep_champion" in out  # 3 vs 0 discordant: p = 0.25
    assert main(args + ["--alpha", "0.3"]) == 0
    assert "decision: publish" in capsys.readouterr().out
    assert main(["select", "--candidates", str(tmp_path), "--out", str(tmp_path / "o2")]) == 2
    assert "pass folders written by 'cifarflow evaluate'" in capsys.readouterr().err
    assert (
        main(
            [
                "select",
                "--candidates",
                str(gated),
                "--out",
                str(tmp_path / "o3"),
                "--alpha",
                "2",
            ]
        )
        == 2
    )
    capsys.readouterr()
    # A champion with other classes: one line and the data-anomaly exit code, nothing published.
    metrics = json.loads((store / "cifarflow" / "1" / "metrics.json").read_text())
    metrics["class_names"][0] = "whales"
    (store / "cifarflow" / "1" / "metrics.json").write_text(json.dumps(metrics))
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == DataAnomalyError.exit_code and len(err) == 1 and "label 0 is 'whales'" in err[0]
    ), err
