"""Durable checkpoints: a train process that lost its output folder resumes from the store's copy.

On Kubeflow a retried or preempted train pod starts with an empty output
folder. These tests do what the cluster does: a real `cifarflow train`
process is SIGKILLed after an epoch, and a new process with an empty
`--out`, the same run id and the same trial, resumes from the real
SeaweedFS S3 server.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import time

import keras
import pytest
import yaml

from cifarflow.components.candidate import TRAIN_SUMMARY_FILE
from cifarflow.components.train import checkpointing
from cifarflow.components.train.config import TrialConfig
from cifarflow.components.train.durable_checkpoints import MANIFEST, ROOT, trial_key
from cifarflow.components.train.executor import TrainResult, train
from cifarflow.components.train.schedules import WarmupSchedule
from tests.components.train_data import TINY_TRIAL
from tests.support.processes import ServiceProcess, cifarflow_command

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# The resume test's trial (test_train.py), on a slice of the sample: about a second per epoch.
TRIAL = {**TINY_TRIAL, "epochs": 3, "batch_size": 32, "fine_label_weight": 0.0}
TRAIN_IMAGES = 480


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, sample_data):
    from cifarflow.data.splits import load_split, load_stats, write_split, write_stats

    small = tmp_path_factory.mktemp("small_data")
    for name, count in (("train", TRAIN_IMAGES), ("val", 100), ("test", 100)):
        split = load_split(sample_data, name, mmap=False)
        write_split(
            small,
            name,
            type(split)(
                split.images[:count], split.coarse_labels[:count], split.fine_labels[:count]
            ),
        )
    write_stats(small, load_stats(sample_data))
    return small


def _objects(s3_server, bucket: str, prefix: str) -> dict[str, bytes]:
    client = s3_server.settings.client()
    found = {}
    for entry in client.list_objects(bucket, prefix=prefix, recursive=True):
        response = client.get_object(bucket, entry.object_name)
        try:
            found[entry.object_name[len(prefix) :]] = response.read()
        finally:
            response.close()
            response.release_conn()
    return found


def test_a_killed_train_process_resumes_from_the_store_in_a_new_empty_folder(
    tmp_path, small_data, s3_server, s3_bucket
):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "durable", "base": TRIAL}))
    store, run_id = f"s3://{s3_bucket}/models", "run-7f3a"
    prefix = f"models/{ROOT}/{run_id}/trial-{trial_key(TrialConfig.from_dict(TRIAL))}/"
    env = {**s3_server.env(), "TF_CPP_MIN_LOG_LEVEL": "3"}

    def command(out: str) -> list[str]:
        return [
            "train",
            "--data",
            str(small_data),
            "--config",
            str(grid),
            "--trial",
            "0",
            "--out",
            out,
            "--no-tflite",
            "--checkpoint-store",
            store,
            "--run-id",
            run_id,
        ]

    first = ServiceProcess(command(str(tmp_path / "pod-1")), tmp_path / "pod-1.log", env)
    try:
        first.wait_for(r"checkpoint of epoch \d+ uploaded", timeout_s=240)
        first.process.kill()  # SIGKILL, like a preempted node: no cleanup at all
        first.process.wait(timeout=30)
    finally:
        if first.process.poll() is None:
            first.process.kill()
    assert not (tmp_path / "pod-1" / TRAIN_SUMMARY_FILE).exists(), (
        "the first process finished before it was killed"
    )
    durable = _objects(s3_server, s3_bucket, prefix)
    manifest = json.loads(durable[MANIFEST])
    done = manifest["epochs_done"]
    assert 1 <= done < 3
    generation = manifest["generation"]
    for name, info in manifest["files"].items():  # the manifest names exactly what was uploaded
        assert hashlib.sha256(durable[f"{generation}/{name}"]).hexdigest() == info["sha256"]
    saved = json.loads(durable[f"{generation}/{checkpointing.STATE_FILE}"])
    assert saved["epochs_done"] == done and len(saved["history"]) == done

    # A new "pod": an empty output folder, the same run id and trial.
    second = subprocess.run(
        cifarflow_command() + command(str(tmp_path / "pod-2")),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert (
        f"restored the durable checkpoint of epoch {done} from s3://{s3_bucket}/models/{ROOT}/{run_id}/"
        in second.stderr
    )
    assert f"{done} of 3 epochs done" in second.stderr
    assert "epoch 1/3" not in second.stderr  # nothing before the checkpoint was trained again

    out = tmp_path / "pod-2"
    result = TrainResult.load(out)
    assert result.resumed and result.epochs_run == 3
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[:done] == saved["history"]  # the killed process's epochs, carried over
    # The optimizer's step counter came back from the store: every epoch's last
    # learning rate lies on the one schedule of the whole run.
    steps = math.ceil(TRAIN_IMAGES / 32)
    schedule = WarmupSchedule(0.05, total_steps=3 * steps, warmup_steps=steps, kind="cosine")
    for row in history:
        expected = float(keras.ops.convert_to_numpy(schedule(row["epoch"] * steps - 1)))
        assert row["learning_rate"] == pytest.approx(expected, rel=1e-4)
    assert (out / "saved_model.pb").is_file() and not (out / checkpointing.CHECKPOINT_DIR).exists()
    # The trial is finished: its durable copy is gone.
    assert _objects(s3_server, s3_bucket, f"models/{ROOT}/{run_id}/") == {}


def _fake_generation(config: TrialConfig) -> dict[str, bytes]:
    # Claims the whole trial is done: resuming from it would skip training altogether.
    state = checkpointing.TrainingState(
        epochs_done=config.epochs, planned_epochs=config.epochs, trial=config.to_dict()
    )
    return {
        checkpointing.STATE_FILE: json.dumps(state.__dict__).encode(),
        "last.weights.h5": b"not weights",
        "optimizer.npz": b"not an optimizer",
    }


@pytest.mark.parametrize("damage", ["no manifest", "a file the manifest names is missing"])
def test_a_half_uploaded_checkpoint_is_never_resumed_from(
    damage, tmp_path, small_data, s3_server, s3_bucket
):
    import io

    config = TrialConfig.from_dict({**TRIAL, "epochs": 1})
    run_id = "run-half"
    rel = f"models/{ROOT}/{run_id}/trial-{trial_key(config)}"
    generation = "epoch-00001-0badc0de"
    files = _fake_generation(config)
    client = s3_server.settings.client()
    uploaded = (
        files
        if damage == "no manifest"
        else {k: v for k, v in files.items() if k != "optimizer.npz"}
    )
    for name, data in uploaded.items():
        client.put_object(s3_bucket, f"{rel}/{generation}/{name}", io.BytesIO(data), len(data))
    if damage != "no manifest":
        manifest = {
            "format": 1,
            "generation": generation,
            "epochs_done": 1,
            "files": {
                n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                for n, d in files.items()
            },
        }
        data = json.dumps(manifest).encode()
        client.put_object(s3_bucket, f"{rel}/{MANIFEST}", io.BytesIO(data), len(data))

    lines: list[str] = []
    result = train(
        small_data,
        config,
        tmp_path / "out",
        log=lines.append,
        export_tflite=False,
        checkpoint_store=f"s3://{s3_bucket}/models",
        run_id=run_id,
        s3_settings=s3_server.settings,
    )
    assert any("ignoring the durable checkpoint" in line for line in lines), lines
    assert not result.resumed and result.epochs_run == 1
    assert [
        row["epoch"] for row in json.loads((tmp_path / "out" / "history.json").read_text())
    ] == [1]
    assert not any("resuming from" in line for line in lines)
    assert _objects(s3_server, s3_bucket, f"models/{ROOT}/{run_id}/") == {}


class _Crash(Exception):
    pass


def test_a_folder_store_works_too_and_a_crash_still_leaves_the_last_epoch_there(
    tmp_path, small_data
):
    """What `cifarflow run --store DIR` uses: the same copy in a local folder store."""
    config = TrialConfig.from_dict({**TRIAL, "epochs": 2})
    store, run_id = tmp_path / "store", "12345678"  # kfp.local's job ids are 8 digits

    def crash_in_epoch_2(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise _Crash(line)  # a failure in the training thread, after epoch 2's line

    with pytest.raises(_Crash):
        train(
            small_data,
            config,
            tmp_path / "attempt-1",
            log=crash_in_epoch_2,
            export_tflite=False,
            checkpoint_store=str(store),
            run_id=run_id,
        )
    trial_folder = store / ROOT / run_id / f"trial-{trial_key(config)}"
    assert json.loads((trial_folder / MANIFEST).read_text())["epochs_done"] == 1

    lines: list[str] = []
    result = train(
        small_data,
        config,
        tmp_path / "attempt-2",
        log=lines.append,
        export_tflite=False,
        checkpoint_store=str(store),
        run_id=run_id,
    )
    assert any(
        f"restored the durable checkpoint of epoch 1 from {store}" in line for line in lines
    ), lines
    assert result.resumed and result.epochs_run == 2
    assert [
        row["epoch"] for row in json.loads((tmp_path / "attempt-2" / "history.json").read_text())
    ] == [1, 2]
    assert not (store / ROOT).exists()  # removed, with its empty parents


def test_durable_checkpoints_need_a_store_and_a_run_id_that_is_a_path_segment(
    tmp_path, sample_data
):
    from cifarflow.errors import BadInputError

    config = TrialConfig.from_dict(TRIAL)
    with pytest.raises(BadInputError, match="both a checkpoint store and a run id"):
        train(sample_data, config, tmp_path / "out", checkpoint_store=str(tmp_path / "store"))
    with pytest.raises(BadInputError, match="bad run id"):
        train(
            sample_data,
            config,
            tmp_path / "out",
            checkpoint_store=str(tmp_path / "store"),
            run_id="../escape",
        )


def test_an_unreachable_store_never_stops_training_and_the_next_epoch_uploads_again(
    tmp_path, small_data
):
    """The store goes away during epoch 1 and comes back in epoch 2 (its own server: it is stopped)."""
    from tests.support.s3_server import S3Server

    server = S3Server(tmp_path / "s3").start()
    try:
        server.settings.client().make_bucket("flaky")
        config = TrialConfig.from_dict({**TRIAL, "epochs": 2})
        lines: list[str] = []

        def log(line: str) -> None:
            lines.append(line)
            if line.startswith("epoch 1/"):
                server.stop()
            elif line.startswith("epoch 2/"):
                # Back only after epoch 1's upload gave up, so that its failure is certain.
                deadline = time.monotonic() + 60
                while (
                    not any("could not upload the checkpoint of epoch 1" in x for x in lines)
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.1)
                server.start()

        result = train(
            small_data,
            config,
            tmp_path / "out",
            log=log,
            export_tflite=False,
            checkpoint_store="s3://flaky/models",
            run_id="run-flaky",
            s3_settings=server.settings,
        )
        assert result.epochs_run == 2 and (tmp_path / "out" / "saved_model.pb").is_file()
        assert any("could not upload the checkpoint of epoch 1" in line for line in lines), lines
        assert any("checkpoint of epoch 2 uploaded" in line for line in lines), lines
        assert (
            list(
                server.settings.client().list_objects(
                    "flaky", prefix=f"models/{ROOT}/", recursive=True
                )
            )
            == []
        )
    finally:
        server.stop()


def test_the_pipeline_hands_the_train_task_its_run_id_outside_the_cache_key(tmp_path):
    """KFP's cache key holds every input: a run id there would retrain unchanged trials in every run."""
    from kfp import compiler

    from cifarflow.pipelines.cifarflow_pipeline import STORE_SECRET, build_pipeline

    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline(), str(path))
    spec, platform = yaml.safe_load_all(path.read_text())
    (task,) = [
        c["dag"]["tasks"]["train-component"]
        for c in spec["components"].values()
        if "train-component" in c.get("dag", {}).get("tasks", {})
    ]
    assert set(task["inputs"]["parameters"]) == {"trial", "checkpoint_store"}
    assert task["inputs"]["parameters"]["checkpoint_store"] == {
        "componentInputParameter": "pipelinechannel--store"
    }
    assert "pipeline_job_uuid" not in json.dumps(task)
    executor = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-train-component"
    ]
    # The label KFP puts on every pod of a run (backend/src/apiserver/template/v2_template.go:420 at 2.17.0).
    assert {
        "name": "CIFARFLOW_RUN_ID",
        "fieldPath": "metadata.labels['pipeline/runid']",
    } in executor["fieldPathAsEnv"]
    assert executor["secretAsEnv"][0]["secretName"] == STORE_SECRET
