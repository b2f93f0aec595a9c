"""The publish step: executor on the real S3 server, component under kfp.local."""

import subprocess
import sys

import pytest

from cifarflow.components.candidate import CandidateMetrics
from cifarflow.components.publish.executor import publish
from cifarflow.errors import BadInputError
from cifarflow.serving.store import open_store
from tests.serving.fakes import fake_export


def test_publish_records_metrics_and_run_id_on_s3(s3_server, s3_bucket, tmp_path):
    model = fake_export(tmp_path / "model")
    CandidateMetrics(
        test={"accuracy": 0.61, "top5_accuracy": 0.88, "macro_f1": 0.58},
        confusion_matrix=[[3, 1], [1, 3]],
        class_names=["cats", "dogs"],
        gate={"accuracy": 0.6},
        checksums={"gate": "ab" * 32},
    ).write(model)
    uri = f"s3://{s3_bucket}/store"
    outcome = publish(
        model,
        uri,
        "cifar",
        run_id="run-7",
        data_checksum="md5:1",
        artifact_metadata={"top5_accuracy": 0.9, "framework": "keras"},
        s3_settings=s3_server.settings,
    )
    assert outcome.published and outcome.version == 1 and outcome.uri == f"{uri}/cifar/1"
    manifest = open_store(uri, s3_server.settings).manifest("cifar", 1)
    metrics = manifest["metrics"]
    assert (metrics["accuracy"], metrics["macro_f1"], metrics["gate_accuracy"]) == (0.61, 0.58, 0.6)
    assert metrics["top5_accuracy"] == 0.88  # the file wins over the artifact's metadata
    assert metrics["gate_data_sha256"] == "ab" * 32
    assert manifest["class_names"] == ["cats", "dogs"]  # not the store's CIFAR-100 default
    assert manifest["run_id"] == "run-7" and manifest["data_checksum"] == "md5:1"
    assert "metrics.json" in manifest["files"]  # the folder is copied verbatim


def test_cli_publish_records_the_candidate_and_models_list_shows_test_and_gate(tmp_path, capsys):
    from cifarflow.cli.main import main

    model = fake_export(tmp_path / "model")
    CandidateMetrics(
        test={"accuracy": 0.61, "top5_accuracy": 0.88, "macro_f1": 0.58},
        confusion_matrix=[[1]],
        class_names=["cats"],
        gate={"accuracy": 0.625},
    ).write(model)
    store = ["--store", str(tmp_path / "store"), "--model-name", "cifar"]
    assert main(["publish", "--model", str(model), *store, "--run-id", "r9"]) == 0
    assert open_store(str(tmp_path / "store")).manifest("cifar", 1)["class_names"] == ["cats"]
    capsys.readouterr()
    assert main(["models", "list", *store]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[-3:] == ["ACCURACY", "GATE", "RUN"]
    assert row.split()[0] == "1" and row.split()[-3:] == ["0.6100", "0.6250", "r9"]


def test_a_metrics_file_evaluate_did_not_write_is_refused(tmp_path, capsys):
    from cifarflow.cli.main import main

    model = fake_export(tmp_path / "model")
    (model / "metrics.json").write_text('{"accuracy": 0.61}')
    with pytest.raises(BadInputError, match="lacks top5_accuracy, macro_f1"):
        publish(model, str(tmp_path / "store"), "cifar")
    args = ["publish", "--model", str(model), "--store", str(tmp_path / "store")]
    assert main([*args, "--model-name", "cifar"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not written by evaluate" in err[0]
    assert not (tmp_path / "store" / "cifar").exists()


def test_kept_champion_writes_nothing(tmp_path):
    outcome = publish(
        fake_export(tmp_path / "model"),
        str(tmp_path / "store"),
        "cifar",
        approved=False,
        reason="0.50 < champion 0.61",
    )
    assert not outcome.published and outcome.version == 0
    assert "Kept the champion" in outcome.markdown() and "0.61" in outcome.message
    assert not (tmp_path / "store").exists()


_PIPELINE = """
import sys
from kfp import dsl, local
from cifarflow.components.publish.component import publish_component

local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[3])

@dsl.pipeline
def only_publish(uri: str, store: str) -> int:
    imported = dsl.importer(artifact_uri=uri, artifact_class=dsl.Model, reimport=False)
    return publish_component(model=imported.output, store=store, model_name="cifar", run_id="local").outputs["Output"]

print("VERSION", only_publish(uri=sys.argv[1], store=sys.argv[2]).output)
"""


def test_component_runs_under_kfp_local(tmp_path):
    # A subprocess in tmp_path: kfp.local's global state stays out of this process,
    # and the repository root (which pytest puts on sys.path) cannot shadow the
    # optional packages kfp.local probes for (a top-level docker/ folder once did).
    model = fake_export(tmp_path / "model")
    store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-c", _PIPELINE, str(model), str(store), str(tmp_path / "root")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "VERSION 1" in done.stdout
    assert open_store(store).manifest("cifar", 1)["run_id"] == "local"
    assert (store / "cifar" / "1" / "model.keras").read_bytes() == b"keras"
