"""The whole pipeline through kfp.local on the shipped sample: `cifarflow run` as a user runs it."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import io
import json
import os
import types
import uuid
from pathlib import Path

import pytest
import yaml

from cifarflow.cli.main import main
from cifarflow.configs import CONFIG_DIR
from cifarflow.data.sample import SAMPLE_MD5
from cifarflow.defaults import MODEL_NAME
from cifarflow.pipelines.artifact_upload import upload_run
from cifarflow.pipelines.local_run import PipelineFailedError
from cifarflow.serving.store.model_store import ModelStore, open_store

pytestmark = pytest.mark.slow
EPOCHS = 2  # of the quick grid's two trials in `two_runs`


@dataclasses.dataclass
class LocalRuns:
    """What `two_runs` leaves: the runs folder, the S3 store, version 1 downloaded, the consoles."""

    runs: Path
    store: ModelStore
    published: Path
    run_dirs: list[Path]
    results: list[tuple[int, str]]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, s3_server):
    """`cifarflow run --store s3://...` twice from a fresh folder, with the S3_* variables set.

    The first run publishes to the real S3 server (the cluster's kind of store; the
    local-folder default is what tests/system's `make run` journey publishes to); the
    second reuses the cache and meets a champion. `published` is version 1, downloaded.
    The grid is the shipped quick grid at 2 epochs instead of 4: the journey runs the
    default grid as it ships, and nothing here depends on how well the trials learn.
    """
    root = tmp_path_factory.mktemp("local-run")
    runs = root / "runs"
    grid = yaml.safe_load((CONFIG_DIR / "quick.yaml").read_text())
    grid["base"]["epochs"] = EPOCHS
    (root / "quick-short.yaml").write_text(yaml.safe_dump(grid))
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.settings.client().make_bucket(bucket)
    store_uri = f"s3://{bucket}/models"
    results = []
    cwd = os.getcwd()
    with pytest.MonkeyPatch.context() as env:
        for key, value in s3_server.env().items():
            env.setenv(key, value)
        os.chdir(root)
        try:
            for _ in range(2):
                console = io.StringIO()
                with contextlib.redirect_stdout(console):
                    code = main(["run", "--config", "quick-short.yaml", "--store", store_uri])
                results.append((code, console.getvalue()))
        finally:
            os.chdir(cwd)
    store = open_store(store_uri, s3_server.settings)
    published = root / "published"
    if store.versions(MODEL_NAME):
        store.download(MODEL_NAME, 1, published)
    run_dirs = sorted(p for p in runs.iterdir() if p.name.startswith("cifarflow-"))
    return LocalRuns(runs, store, published, run_dirs, results)


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_every_task_succeeds_and_the_model_lands_in_the_store(two_runs):
    run_dirs, results = two_runs.run_dirs, two_runs.results
    assert [code for code, _ in results] == [0, 0] and len(run_dirs) == 2
    assert f"run {run_dirs[0].name}: SUCCEEDED" in results[0][1]
    assert f"{two_runs.store.uri}/{MODEL_NAME}/1" in results[0][1]
    record = _record(run_dirs[0])
    assert record["status"] == "SUCCEEDED"
    tasks = record["tasks"]
    for step in (
        "ingest-component",
        "preprocess-component",
        "eda-component",
        "expand-grid-component",
        "select-best-component",
        "publish-component",
        "record-status-component",
    ):
        assert step in tasks, step
    trials = [t for t in tasks if t.endswith("/train-component")]
    assert len(trials) == 2 and len([t for t in tasks if t.endswith("/evaluate-component")]) == 2
    version = two_runs.published
    assert (version / "saved_model.pb").is_file()
    manifest = json.loads((version / "cifarflow.json").read_text())
    assert manifest["data_checksum"] == SAMPLE_MD5  # the ingested archive's md5
    assert manifest["run_id"]  # the KFP job id placeholder, filled in by the runner
    # The training reference rode along from evaluate through select_best into the store.
    from cifarflow.components.candidate import read_reference

    reference = read_reference(version)
    assert reference is not None and reference.data.split == "train"
    assert reference.scores.images == manifest["metrics"]["val_count"]
    leaderboard = Path(
        tasks["select-best-component"]["artifacts"]["leaderboard"]["uri"]
    ).read_text()
    assert leaderboard.count("\n| 1 |") == 1 and "\n| 2 |" in leaderboard  # both trials ranked


def test_second_run_reuses_the_cache_and_keeps_the_champion(two_runs):
    tasks = _record(two_runs.run_dirs[1])["tasks"]
    assert any(t.startswith("ingest-component (cached") for t in tasks)
    assert any(t.startswith("preprocess-component (cached") for t in tasks)
    # Tasks with Metrics outputs too: kfp.local misses the cache when an output's file is absent.
    assert any(t.startswith("eda-component (cached") for t in tasks)
    assert len([t for t in tasks if "train-component (cached" in t]) == 2
    assert two_runs.store.versions(MODEL_NAME) == [1]
    assert tasks["select-best-component"]["parameters"]["publish"] is False


def test_console_shows_progress_not_kfp_internals(two_runs):
    run_dirs = two_runs.run_dirs
    first, second = (out for _, out in two_runs.results)
    assert f"epoch 1/{EPOCHS}" in first and "Executing task 'train-component'" in first
    assert "cache hit" in second
    for out in (first, second):
        assert "Leaderboard" in out and "artifacts:" in out
        assert "executor_input" not in out and "[KFP Executor" not in out
    assert isinstance(builtins.print, types.BuiltinFunctionType)  # kfp.local's print swap undone
    log = (run_dirs[0] / "run.log").read_text()
    assert (
        "Got executor_input" in log and f"epoch 1/{EPOCHS}" in log
    )  # the full log keeps everything


def test_runs_list_and_compare(two_runs, capsys, tmp_path):
    runs, run_dirs = two_runs.runs, two_runs.run_dirs
    assert main(["runs", "list", "--from", str(runs)]) == 0
    listing = capsys.readouterr().out
    assert all(d.name in listing for d in run_dirs) and "SUCCEEDED" in listing
    page = tmp_path / "compare.html"
    assert (
        main(
            [
                "runs",
                "compare",
                run_dirs[0].name,
                run_dirs[1].name,
                "--from",
                str(runs),
                "--html",
                str(page),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "metric best_val_accuracy" in table and "param grid" in table
    html = page.read_text()
    assert "<svg" in html and "for-loop" in html  # one curve per trial


def test_runs_compare_unknown_run(two_runs, capsys):
    assert main(["runs", "compare", "no-such-run", "--from", str(two_runs.runs)]) == 2
    assert "no run no-such-run" in capsys.readouterr().err


def test_artifacts_uploaded_in_the_kfp_layout_and_listed_from_s3(
    two_runs, s3_server, s3_bucket, monkeypatch, capsys
):
    run_dirs = two_runs.run_dirs
    uri = upload_run(run_dirs[0], f"s3://{s3_bucket}/root", "cifarflow", s3_server.settings)
    assert uri == f"s3://{s3_bucket}/root/cifarflow/{run_dirs[0].name}"
    names = {
        o.object_name
        for o in s3_server.settings.client().list_objects(s3_bucket, prefix="root/", recursive=True)
    }
    prefix = f"root/cifarflow/{run_dirs[0].name}"
    assert f"{prefix}/run.json" in names
    assert f"{prefix}/for-loop-2-iteration-0/train-component/model/saved_model.pb" in names
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    assert main(["runs", "list", "--from", f"s3://{s3_bucket}/root/cifarflow"]) == 0
    assert run_dirs[0].name in capsys.readouterr().out


def test_a_failing_trial_fails_the_run_and_keeps_the_other_trials_results(tmp_path, capsys):
    grid = tmp_path / "one-bad.yaml"
    grid.write_text(
        "name: one-bad\nbase: {architecture: resnet, depth: 8, epochs: 1, mixed_precision: 'off'}\n"
        "trials:\n  - {}\n  - {architecture: densenet121, weights: /nonexistent/weights.h5}\n"
    )
    code = main(
        [
            "run",
            "--config",
            str(grid),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--store",
            str(tmp_path / "store"),
        ]
    )
    assert code == PipelineFailedError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights file /nonexistent/weights.h5 does not exist" in err[0], err
    (run_dir,) = [
        p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")
    ]
    record = _record(run_dir)
    assert record["status"] == "FAILED"
    good = [t for t in record["tasks"] if t.endswith("/train-component")]
    assert (
        good
        and (
            Path(record["tasks"][good[0]]["artifacts"]["model"]["uri"]) / "saved_model.pb"
        ).is_file()
    )
    assert not (tmp_path / "store" / "cifarflow").exists()
    status = Path(
        record["tasks"]["record-status-component"]["artifacts"]["record"]["uri"]
    ).read_text()
    assert "FAILED" in status  # the exit handler ran
