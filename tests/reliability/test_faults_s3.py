"""The S3 server going away during publish and during sync.

Each test runs its own SeaweedFS server (`own_s3`) and stops, kills or
restarts it on the same port and data folder; the session's shared server
is never touched. A failed S3 call takes ~6 s: the minio client's urllib3
retries (5, with backoff) come first.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cifarflow.cli.main import main
from cifarflow.errors import RemoteError
from cifarflow.serving.store import MANIFEST, open_store, publish_model
from cifarflow.serving.store.backends import S3Backend
from cifarflow.serving.sync import SYNC_PREFIX, SyncConfig, sync_once
from tests.reliability.conftest import one_error_line, tree_digest, until
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.timeout(120)

MODEL = "cifarflow"


@pytest.fixture
def bucket(own_s3) -> str:
    own_s3.settings.client().make_bucket("models")
    return "models"


@pytest.fixture
def s3_env(own_s3, monkeypatch) -> dict[str, str]:
    for key, value in own_s3.env().items():
        monkeypatch.setenv(key, value)
    return own_s3.env()


def test_with_s3_down_publish_fails_in_one_line_and_a_starting_sync_sidecar_waits_for_it(
    own_s3, bucket, s3_env, exported_model, capsys, tmp_path
):
    store_uri = f"s3://{bucket}/store"
    publish_model(exported_model, store_uri, MODEL, {}, own_s3.settings)
    own_s3.kill()
    # A sidecar that starts before the store is reachable (a cluster coming up) must wait, not crash-loop.
    served = tmp_path / "served"
    sync = ServiceProcess(
        [
            "serve",
            "sync",
            "--from",
            store_uri,
            "--to",
            str(served),
            "--model-name",
            MODEL,
            "--watch",
            "--interval",
            "0.3",
        ],
        tmp_path / "sync.log",
        env=own_s3.env(),
    )
    try:
        code = main(
            ["publish", "--model", str(exported_model), "--store", store_uri, "--model-name", MODEL]
        )
        line = one_error_line(capsys, "publish")
        assert code == RemoteError.exit_code == 5
        assert (
            line.startswith("cifarflow publish: error: cannot reach S3") and own_s3.endpoint in line
        )
        assert "Connection refused" in line
        sync.wait_for(r"sync pass failed", 30)
        assert sync.process.poll() is None
        own_s3.start()
        assert open_store(store_uri, own_s3.settings).versions(MODEL) == [
            1
        ]  # the failed publish left nothing
        until(lambda: (served / MODEL / "1" / MANIFEST).is_file(), 30, "version 1 synced")
    finally:
        sync.stop()


def test_publish_to_a_hung_s3_gives_up_after_its_timeout(
    own_s3, bucket, s3_env, exported_model, monkeypatch, capsys
):
    """A frozen server accepts connections and never answers: the client must not wait forever."""
    store_uri = f"s3://{bucket}/store"
    monkeypatch.setenv("S3_TIMEOUT", "0.5")
    own_s3.freeze()
    try:
        started = time.monotonic()
        code = main(
            ["publish", "--model", str(exported_model), "--store", store_uri, "--model-name", MODEL]
        )
        elapsed = time.monotonic() - started
    finally:
        own_s3.thaw()
    line = one_error_line(capsys, "publish")
    assert code == 5 and "Read timed out" in line and own_s3.endpoint in line
    assert (
        elapsed < 30
    )  # 6 tries of 0.5 s plus backoff; minio's own default waits 5 minutes per try
    assert open_store(store_uri, own_s3.settings).versions(MODEL) == []


def test_s3_killed_half_way_through_a_publish_leaves_no_version_anyone_lists_or_syncs(
    own_s3, bucket, s3_env, exported_model, monkeypatch, capsys, tmp_path
):
    store_uri = f"s3://{bucket}/store"
    store = open_store(store_uri, own_s3.settings)
    uploaded = []
    upload = S3Backend.upload_file

    def upload_then_die(self, rel, path):
        if len(uploaded) == 2:
            own_s3.kill()  # mid-publish: some files are up, the manifest is not
        upload(self, rel, path)
        uploaded.append(rel)

    monkeypatch.setattr(S3Backend, "upload_file", upload_then_die)
    code = main(
        ["publish", "--model", str(exported_model), "--store", store_uri, "--model-name", MODEL]
    )
    monkeypatch.setattr(S3Backend, "upload_file", upload)
    line = one_error_line(capsys, "publish")
    assert (
        code == 5 and "cannot reach S3" in line and f"{MODEL}/1/" in line
    )  # names the object it was writing
    own_s3.start()
    assert len(uploaded) == 2 and store.backend.versions_present(MODEL) == [
        1
    ]  # the half version is there...
    assert (
        store.versions(MODEL) == [] and store.models() == []
    )  # ...and nobody takes it for a version
    served = tmp_path / "served"
    assert sync_once(store, served).added == [] and not (served / MODEL / "1").exists()
    # The next publish works and skips the half version's number.
    assert (
        until(
            lambda: _publish_when_writable(exported_model, store_uri, own_s3.settings),
            30,
            "published",
        )
        == 2
    )
    assert store.versions(MODEL) == [2]
    assert sync_once(store, served).added == [(MODEL, 2)]


def _publish_when_writable(model: Path, store_uri: str, settings) -> int | None:
    """Publishes; None while the restarted server is not taking writes yet."""
    try:
        return publish_model(model, store_uri, MODEL, {}, settings).version
    except RemoteError:
        return None


def test_s3_lost_in_the_middle_of_a_sync_leaves_the_served_folder_as_it_was(
    own_s3, bucket, exported_model, favour7_model, monkeypatch, tmp_path
):
    store_uri = f"s3://{bucket}/store"
    store = open_store(store_uri, own_s3.settings)
    publish_model(exported_model, store_uri, MODEL, {}, own_s3.settings)
    served = tmp_path / "served"
    assert sync_once(store, served).added == [(MODEL, 1)]
    before = tree_digest(served)
    publish_model(favour7_model, store_uri, MODEL, {}, own_s3.settings)
    fetched = []
    fget = store.backend.client.fget_object

    def fget_then_die(*args, **kwargs):
        if fetched:
            own_s3.kill()  # version 2 is half downloaded
        fetched.append(args[1])
        return fget(*args, **kwargs)

    monkeypatch.setattr(store.backend.client, "fget_object", fget_then_die)
    with pytest.raises(RemoteError, match="cannot reach S3"):
        sync_once(store, served, SyncConfig(models=(MODEL,)))
    monkeypatch.setattr(store.backend.client, "fget_object", fget)
    assert len(fetched) == 2
    assert tree_digest(served) == before  # no version 2 folder, no half copy, no leftovers
    own_s3.start()
    assert until(lambda: _sync_when_readable(store, served), 30, "synced") == [(MODEL, 2)]
    assert (served / MODEL / "2" / MANIFEST).is_file()


def _sync_when_readable(store, served: Path):
    try:
        return sync_once(store, served, SyncConfig(models=(MODEL,))).added
    except RemoteError:
        return None


def test_sync_watch_rides_out_an_s3_outage_and_catches_up_by_itself(
    own_s3, bucket, exported_model, favour7_model, tmp_path
):
    store_uri = f"s3://{bucket}/store"
    publish_model(exported_model, store_uri, MODEL, {}, own_s3.settings)
    served = tmp_path / "served"
    sync = ServiceProcess(
        [
            "serve",
            "sync",
            "--from",
            store_uri,
            "--to",
            str(served),
            "--model-name",
            MODEL,
            "--watch",
            "--interval",
            "0.3",
        ],
        tmp_path / "sync.log",
        env=own_s3.env(),
    )
    try:
        sync.wait_for(r"added cifarflow/1", 60)
        before = tree_digest(served)
        own_s3.kill()
        sync.wait_for(r"sync pass failed", 30)  # at least one whole pass against the dead server
        assert sync.process.poll() is None, "the sidecar must outlive the outage"
        assert tree_digest(served) == before
        own_s3.start()
        until(
            lambda: _publish_when_writable(favour7_model, store_uri, own_s3.settings),
            30,
            "published",
        )
        until(lambda: (served / MODEL / "2" / MANIFEST).is_file(), 30, "version 2 synced")
        assert sync.process.poll() is None
        assert sorted(
            p.name for p in (served / MODEL).iterdir() if not p.name.startswith(SYNC_PREFIX)
        ) == ["1", "2"]
    finally:
        sync.stop()
