"""Model store and publish, on a local folder and on the real S3 server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cifarflow.errors import BadInputError
from cifarflow.serving.store import MANIFEST, open_store, publish_model
from cifarflow.serving.store.model_store import complete_versions
from cifarflow.serving.sync import SyncConfig, sync_once
from tests.serving.fakes import fake_export

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    server = request.getfixturevalue("s3_server")
    for key, value in server.env().items():
        request.getfixturevalue("monkeypatch").setenv(key, value)
    return f"s3://{bucket}/models"


def test_publish_copies_folder_verbatim_and_writes_manifest(store_uri, tmp_path):
    src = fake_export(tmp_path / "export")
    meta = {"metrics": {"accuracy": 0.5}, "run_id": "run-1", "data_checksum": "abc"}
    first = publish_model(src, store_uri, "cifar", meta)
    second = publish_model(src, store_uri, "cifar", meta)
    assert (first.version, second.version) == (1, 2)
    store = open_store(store_uri)
    assert store.versions("cifar") == [1, 2]
    manifest = store.manifest("cifar", 2)
    assert manifest["run_id"] == "run-1" and manifest["metrics"]["accuracy"] == 0.5
    assert manifest["class_names"][0] == "aquatic_mammals" and len(manifest["class_names"]) == 20
    assert set(manifest["files"]) == {
        "saved_model.pb",
        "variables/variables.index",
        "variables/variables.data-00000-of-00001",
        "model.keras",
        "test_predictions.npy",
    }
    out = tmp_path / "copy"
    store.download("cifar", 2, out)
    for name in manifest["files"]:
        assert (out / name).read_bytes() == (src / name).read_bytes()
    assert json.loads((out / MANIFEST).read_text())["data_checksum"] == "abc"


def test_publish_refuses_what_is_not_a_saved_model(store_uri, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="saved_model.pb"):
        publish_model(tmp_path / "empty", store_uri, "cifar", {})
    with pytest.raises(BadInputError, match="model name"):
        publish_model(fake_export(tmp_path / "e"), store_uri, "../evil", {})


def test_racing_publishers_get_distinct_complete_versions(store_uri, tmp_path):
    sources = [fake_export(tmp_path / f"export{i}", tag=str(i)) for i in range(6)]
    results, errors = [], []
    start = threading.Barrier(len(sources))

    def publish(src: Path) -> None:
        try:
            start.wait()
            results.append(
                (publish_model(src, store_uri, "race", {"run_id": src.name}).version, src.name)
            )
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    versions = sorted(v for v, _ in results)
    assert len(set(versions)) == 6 and versions[0] >= 1
    store = open_store(store_uri)
    assert store.versions("race") == versions
    for version, name in results:  # each version holds exactly its publisher's files
        manifest = store.manifest("race", version)
        assert manifest["run_id"] == name
        out = tmp_path / f"check{version}"
        store.download("race", version, out)
        assert (out / "saved_model.pb").read_bytes() == b"pb-" + name[len("export") :].encode()


def test_labels_promote_and_rollback(store_uri, tmp_path):
    src = fake_export(tmp_path / "export")
    for _ in range(3):
        publish_model(src, store_uri, "cifar", {})
    store = open_store(store_uri)
    assert store.promote("cifar", 1) == {"stable": 1}
    store.promote("cifar", 3)
    store.promote("cifar", 2, label="canary")
    assert store.labels("cifar") == {"stable": 3, "canary": 2}
    assert store.info("cifar", 3).labels == ("stable",)
    assert store.rollback("cifar") == {"stable": 1, "canary": 2}
    with pytest.raises(BadInputError, match="nothing to roll back"):
        store.rollback("cifar")
    with pytest.raises(BadInputError, match="no such complete version"):
        store.promote("cifar", 9)
    assert store.resolve("cifar", label="canary") == 2
    assert store.resolve("cifar") == 3


_CRASHING_PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from cifarflow.serving.store import backends, publish_model

    original = backends.S3Backend.upload_file
    def slow_upload(self, rel, path):
        original(self, rel, path)
        print("uploaded", rel, flush=True)
        time.sleep(30)  # the parent kills us here, half-way through the version
    backends.S3Backend.upload_file = slow_upload
    publish_model(sys.argv[1], sys.argv[2], "crash", {})
    """
)


def test_publish_killed_half_way_leaves_nothing_visible(
    s3_server, s3_bucket, tmp_path, monkeypatch
):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{s3_bucket}/models"
    src = fake_export(tmp_path / "export")
    assert publish_model(src, uri, "crash", {}).version == 1
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_PUBLISHER, str(src), uri],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **s3_server.env()},
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("uploaded crash/2/"), line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    store = open_store(uri)
    assert store.backend.read_bytes(line.split()[1]) is not None  # half a version is there...
    assert store.versions("crash") == [1]  # ...but nobody sees it
    dest = tmp_path / "synced"
    sync_once(store, dest, SyncConfig(keep=5))
    assert complete_versions(dest, "crash") == [1]
    assert sorted(p.name for p in (dest / "crash").iterdir()) == ["1"]
    assert publish_model(src, uri, "crash", {}).version == 3  # the dead number is skipped
    assert store.versions("crash") == [1, 3]


def test_an_s3_publish_deletes_what_a_dead_publisher_uploaded_but_never_reuses_its_number(
    s3_server, s3_bucket, tmp_path, monkeypatch
):
    import cifarflow.serving.store.backends as backends

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{s3_bucket}/models"
    src = fake_export(tmp_path / "export")
    store = open_store(uri)
    assert publish_model(src, uri, "m", {}).version == 1
    # What a publisher killed half-way leaves: its claim on 2 and part of the files, no manifest.
    half = store.backend.claim_version("m", 1)
    store.backend.upload_file(f"m/{half}/saved_model.pb", src / "saved_model.pb")
    left_behind = f"m/{half}/saved_model.pb"
    assert publish_model(src, uri, "m", {}).version == 3
    assert (
        store.backend.read_bytes(left_behind) is not None
    )  # written just now: its publisher may be alive
    monkeypatch.setattr(backends, "ABANDONED_AFTER_S", 0.5)
    time.sleep(1.0)
    assert publish_model(src, uri, "m", {}).version == 4  # 2 stays taken: its claim is kept
    assert store.backend.read_bytes(left_behind) is None
    assert store.versions("m") == [1, 3, 4]  # complete versions are never touched, however old
    for version in (1, 3, 4):
        assert (
            store.backend.read_bytes(f"m/{version}/saved_model.pb")
            == (src / "saved_model.pb").read_bytes()
        )
    assert half in [int(n) for n in store.backend.list_children("m/.claims")]


def test_local_publish_interrupted_leaves_only_a_hidden_folder(tmp_path, monkeypatch):
    store_dir = tmp_path / "store"
    src = fake_export(tmp_path / "export")
    publish_model(src, store_dir, "m", {})
    import cifarflow.serving.store.backends as backends

    def explode(fd):
        raise KeyboardInterrupt  # as if the process were stopped between copy and rename

    monkeypatch.setattr(backends.os, "fsync", explode)
    with pytest.raises(KeyboardInterrupt):
        publish_model(src, store_dir, "m", {})
    monkeypatch.undo()
    assert sorted(p.name for p in (store_dir / "m").iterdir()) == ["1"]
    assert publish_model(src, store_dir, "m", {}).version == 2


def test_a_publish_removes_what_killed_publishers_left_and_nothing_of_live_ones(
    tmp_path, monkeypatch
):
    host = "publish-job-7f9c4-x2pq"  # pod names are full of dashes
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    store_dir = tmp_path / "store"
    src = fake_export(tmp_path / "export")
    publish_model(src, store_dir, "m", {})
    exited = subprocess.Popen(["true"])
    exited.wait()
    leftovers = {
        f".staging-{'a' * 32}-{exited.pid}@{host}": False,  # its publisher was killed: removed
        f".staging-{'b' * 32}-{os.getpid()}@{host}": True,  # a live publisher's: kept
        f".staging-{'c' * 32}-123@another-host": True,  # cannot be checked, and recent: kept
        f".staging-{'d' * 32}-123@another-host": False,  # cannot be checked, but two days old: removed
        f".trash-1-{'e' * 32}": False,  # a deletion that was cut short: removed
    }
    for name in leftovers:
        (store_dir / "m" / name / "variables").mkdir(parents=True)
        (store_dir / "m" / name / "variables" / "variables.index").write_bytes(b"x" * 1000)
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(
        store_dir / "m" / f".staging-{'d' * 32}-123@another-host", (two_days_ago, two_days_ago)
    )
    assert publish_model(src, store_dir, "m", {}).version == 2
    left = {p.name for p in (store_dir / "m").iterdir()}
    assert left == {"1", "2", *(name for name, kept in leftovers.items() if kept)}


def test_sync_keeps_newest_and_labelled_versions_and_is_idempotent(
    s3_server, s3_bucket, tmp_path, monkeypatch
):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{s3_bucket}/p"
    src = fake_export(tmp_path / "export", big=300_000)
    for _ in range(4):
        publish_model(src, uri, "cifar", {})
    publish_model(src, uri, "other", {})
    store = open_store(uri)
    store.promote("cifar", 1)
    dest = tmp_path / "models"
    report = sync_once(store, dest, SyncConfig(keep=2))
    assert sorted(report.added) == [("cifar", 1), ("cifar", 3), ("cifar", 4), ("other", 1)]
    assert complete_versions(dest, "cifar") == [1, 3, 4]
    assert (
        dest / "cifar" / "4" / "variables" / "variables.data-00000-of-00001"
    ).stat().st_size == 300_000
    assert json.loads((dest / "cifar" / "labels.json").read_text())["labels"] == {"stable": 1}
    assert sync_once(store, dest, SyncConfig(keep=2)).added == []
    publish_model(src, uri, "cifar", {})
    store.promote("cifar", 5)
    report = sync_once(store, dest, SyncConfig(models=("cifar",), keep=1))
    assert report.added == [("cifar", 5)] and sorted(report.removed) == [
        ("cifar", 1),
        ("cifar", 3),
        ("cifar", 4),
    ]
    assert sorted(p.name for p in (dest / "cifar").iterdir()) == ["5", "labels.json"]


def test_sync_cli_and_models_cli(s3_server, s3_bucket, tmp_path):
    env = {**os.environ, **s3_server.env()}
    uri = f"s3://{s3_bucket}/cli"
    src = fake_export(tmp_path / "export")
    cli = [sys.executable, "-m", "cifarflow.cli.main"]

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess:
        done = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == code, done.stderr
        return done

    out = run(
        "publish", "--model", str(src), "--store", uri, "--model-name", "cifar", "--run-id", "r1"
    )
    assert "version 1" in out.stdout
    run("publish", "--model", str(src), "--store", uri, "--model-name", "cifar")
    listing = run("models", "list", "--store", uri, "--model-name", "cifar").stdout
    assert listing.splitlines()[1].split()[0] == "1" and "r1" in listing
    run("models", "promote", "--store", uri, "--model-name", "cifar", "--version", "2")
    shown = json.loads(
        run("models", "show", "--store", uri, "--model-name", "cifar", "--label", "stable").stdout
    )
    assert shown["version"] == 2 and shown["labels"] == ["stable"]
    err = run("models", "rollback", "--store", uri, "--model-name", "cifar", code=2).stderr
    assert "nothing to roll back" in err and len(err.strip().splitlines()) == 1
    config = tmp_path / "models.config"
    synced = run(
        "serve",
        "sync",
        "--from",
        uri,
        "--to",
        str(tmp_path / "synced"),
        "--tf-serving-config",
        str(config),
        "--tf-serving-base-path",
        "/models",
    ).stdout
    assert complete_versions(tmp_path / "synced", "cifar") == [1, 2]
    assert (
        "added cifar/2" in synced
        and 'version_labels { key: "stable" value: 2 }' in config.read_text()
    )
    bad = subprocess.run(
        [*cli, "publish", "--model", str(src), "--store", uri, "--model-name", "cifar"],
        env={**env, "S3_SECRET_KEY": "wrong"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 5 and "credentials" in bad.stderr and "wrong" not in bad.stderr


def test_sync_writes_tf_serving_config_with_store_labels(tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from cifarflow.serving.sync import write_tf_serving_config

    store_dir, dest = tmp_path / "store", tmp_path / "models"
    src = fake_export(tmp_path / "export")
    for _ in range(3):
        publish_model(src, store_dir, "cifar", {})
    publish_model(src, store_dir, "plain", {})
    store = open_store(store_dir)
    store.promote("cifar", 1)
    store.promote("cifar", 2, "canary")
    sync_once(store, dest, SyncConfig(keep=1))
    config_path = tmp_path / "models.config"
    assert write_tf_serving_config(dest, ["cifar", "plain"], config_path, "/models")
    assert not write_tf_serving_config(
        dest, ["cifar", "plain"], config_path, "/models"
    )  # unchanged: not rewritten
    parsed = text_format.Parse(config_path.read_text(), model_server_config_pb2.ModelServerConfig())
    cifar, plain = parsed.model_config_list.config
    assert (cifar.name, cifar.base_path, cifar.model_platform) == (
        "cifar",
        "/models/cifar",
        "tensorflow",
    )
    assert list(cifar.model_version_policy.specific.versions) == [1, 2, 3]
    assert dict(cifar.version_labels) == {"stable": 1, "canary": 2}
    assert plain.model_version_policy.latest.num_versions == 1 and not plain.version_labels


def test_sync_killed_at_any_moment_never_leaves_half_a_version(s3_server, s3_bucket, tmp_path):
    from cifarflow.serving.store import verify_files

    env = {**os.environ, **s3_server.env()}
    uri = f"s3://{s3_bucket}/kill"
    src = fake_export(tmp_path / "export", big=8 * 1024 * 1024)
    publish_model(src, uri, "cifar", {}, s3_server.settings)
    publish_model(src, uri, "cifar", {}, s3_server.settings)
    dest = tmp_path / "models"
    command = [
        sys.executable,
        "-m",
        "cifarflow.cli.main",
        "serve",
        "sync",
        "--from",
        uri,
        "--to",
        str(dest),
        "--watch",
    ]
    for delay in (0.3, 0.6, 0.9, 1.2):  # wherever the kill lands, the invariant below holds
        child = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        for folder in (dest / "cifar").iterdir() if (dest / "cifar").is_dir() else ():
            if folder.name.isdigit():  # what TF Serving would load: always whole
                verify_files(folder, json.loads((folder / MANIFEST).read_text()))
    done = subprocess.run(command[:-1], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert complete_versions(dest, "cifar") == [1, 2]
