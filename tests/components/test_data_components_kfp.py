"""The ingest -> preprocess -> eda KFP components, run by kfp.local as a pipeline."""

import json

import pytest
from kfp import dsl, local

from cifarflow.components.eda.component import eda_component
from cifarflow.components.ingest.component import ingest_component
from cifarflow.components.preprocess.component import preprocess_component


@dsl.pipeline(name="data-steps")
def data_steps(source: str = "sample", val_fraction: float = 0.2):
    raw = ingest_component(source=source)
    splits = preprocess_component(
        raw=raw.outputs["dataset"], val_fraction=val_fraction, seed=3, gate_fraction=0.1
    )
    eda_component(splits=splits.outputs["splits"])


def test_components_run_locally_and_pass_artifacts(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    data_steps()
    run_dirs = list(tmp_path.glob("data-steps-*"))
    assert len(run_dirs) == 1
    run = run_dirs[0]
    stats = json.loads((run / "preprocess-component" / "splits" / "stats.json").read_text())
    assert (
        stats["splits"]["val"]["count"] == 400 and stats["seed"] == 3
    )  # parameters reached the step
    report = (run / "eda-component" / "report").read_text()
    assert "aquatic_mammals" in report
    outputs = json.loads((run / "eda-component" / "executor_output.json").read_text())
    metrics = outputs["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["train_images"] == 1400.0  # 2,000 less 20 % val and 10 % gate


def test_a_failing_step_fails_the_local_run(tmp_path):
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path),
        raise_on_error=True,
    )
    with pytest.raises(RuntimeError):
        data_steps(source=str(tmp_path / "missing.tar.gz"))
