"""The KFP wrappers of train, evaluate and select: they compile, and their bodies chain on real data.

The bodies run in-process with real KFP artifact objects (what kfp.local and
a cluster pod hand them), trial values arriving as floats the way KFP
delivers them; the full pipeline run through kfp.local is the pipeline's test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kfp import compiler
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Markdown, Metrics, Model

from cifarflow.components.evaluate.component import evaluate_component
from cifarflow.components.select_best.component import select_best_component
from cifarflow.components.train.component import train_component
from cifarflow.images import cpu_image, gpu_image
from tests.components.train_data import TINY_TRIAL

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize(
    ("component", "image", "inputs", "outputs"),
    [
        (
            train_component,
            gpu_image(),
            {"data", "trial", "checkpoint_store", "run_id"},
            {"model", "metrics", "curves"},
        ),
        (
            evaluate_component,
            cpu_image(),
            {"data", "model"},
            {"candidate", "metrics", "confusion", "report"},
        ),
        (
            select_best_component,
            cpu_image(),
            {"candidates", "data", "metric", "store", "model_name", "alpha", "force"},
            {"best", "leaderboard", "summary", "selection", "publish", "decision"},
        ),
    ],
)
def test_components_compile_with_typed_artifacts(component, image, inputs, outputs, tmp_path):
    path = tmp_path / "component.yaml"
    compiler.Compiler().compile(component, str(path))
    spec = yaml.safe_load(path.read_text())
    definition = next(iter(spec["components"].values()))
    declared_in = set(definition["inputDefinitions"].get("artifacts", {})) | set(
        definition["inputDefinitions"].get("parameters", {})
    )
    declared_out = set(definition["outputDefinitions"].get("artifacts", {})) | set(
        definition["outputDefinitions"].get("parameters", {})
    )
    assert declared_in == inputs and declared_out == outputs
    executor = next(iter(spec["deploymentSpec"]["executors"].values()))
    assert executor["container"]["image"] == image
    # The project image carries kfp and cifarflow: nothing is pip-installed at run time.
    assert "pip install" not in " ".join(executor["container"]["command"])


def _artifact(kind, folder: Path, name: str):
    artifact = kind(uri=str(folder / name), name=name)
    return artifact


def test_component_bodies_chain_train_evaluate_select(sample_data, tmp_path, monkeypatch, capfd):
    data = _artifact(Dataset, tmp_path, "data")
    data.path = str(sample_data)
    trial = {
        k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in {**TINY_TRIAL, "epochs": 2}.items()
    }
    model, metrics, curves = (
        _artifact(Model, tmp_path, "model"),
        _artifact(Metrics, tmp_path, "m"),
        _artifact(HTML, tmp_path, "curves.html"),
    )
    # The run id as the pipeline hands it over on a cluster (from the pod's label); a folder store.
    monkeypatch.setenv("CIFARFLOW_RUN_ID", "0f1e2d3c-run")
    store = tmp_path / "store"
    train_component.python_func(
        data=data,
        trial=trial,
        model=model,
        metrics=metrics,
        curves=curves,
        checkpoint_store=str(store),
    )
    assert (Path(model.path) / "saved_model.pb").is_file()
    assert f"uploaded to {store}/.checkpoints/0f1e2d3c-run/trial-" in capfd.readouterr().err
    assert not (store / ".checkpoints").exists()  # the finished trial removed its copy
    assert metrics.metadata["epochs_run"] == 2.0 and 0.0 <= metrics.metadata["val_accuracy"] <= 1.0
    assert (
        model.metadata["architecture"] == "resnet"
        and "data:image/png;base64," in Path(curves.path).read_text()
    )

    candidate = _artifact(Model, tmp_path, "candidate")
    evaluation = _artifact(Metrics, tmp_path, "em")
    confusion = _artifact(ClassificationMetrics, tmp_path, "confusion")
    report = _artifact(HTML, tmp_path, "report.html")
    evaluate_component.python_func(
        data=data,
        model=model,
        candidate=candidate,
        metrics=evaluation,
        confusion=confusion,
        report=report,
    )
    assert set(evaluation.metadata) >= {"accuracy", "top5_accuracy", "macro_f1", "val_accuracy"}
    matrix = confusion.metadata["confusionMatrix"]
    assert [c["displayName"] for c in matrix["annotationSpecs"]][:2] == ["aquatic_mammals", "fish"]
    assert sum(sum(row["row"]) for row in matrix["rows"]) == 500
    assert (
        "<html>" in Path(report.path).read_text()[:200].lower()
        or "<!doctype html>" in Path(report.path).read_text()[:50]
    )

    best, leaderboard = (
        _artifact(Model, tmp_path, "best"),
        _artifact(Markdown, tmp_path, "leaderboard.md"),
    )
    summary, selection = (
        _artifact(Metrics, tmp_path, "summary"),
        _artifact(Artifact, tmp_path, "selection.json"),
    )
    outputs = select_best_component.python_func(
        candidates=[candidate],
        best=best,
        leaderboard=leaderboard,
        summary=summary,
        selection=selection,
        store=str(tmp_path / "store"),
        model_name="cifarflow",
        alpha=0.05,
    )
    assert outputs.publish is True and outputs.decision == "publish"
    assert (Path(best.path) / "saved_model.pb").is_file() and (
        Path(best.path) / "test_predictions.npy"
    ).is_file()
    assert summary.metadata["trials"] == 1.0 and summary.metadata["publish"] == 1.0
    assert summary.metadata["best_accuracy"] == pytest.approx(evaluation.metadata["accuracy"])
    assert json.loads(Path(selection.path).read_text())["gate"]["decision"] == "publish"
    assert Path(leaderboard.path).read_text().startswith("# Leaderboard (1 trials")
