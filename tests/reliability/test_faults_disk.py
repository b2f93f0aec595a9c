"""A full disk while artifacts are written: a clear error, and nothing half-written taken as complete.

Each test writes into a small tmpfs (`small_disk`), filled up first where
the step's output would fit, so the failure comes from the file system
itself (ENOSPC), the way a full volume in a pod fails.
"""

from __future__ import annotations

import errno
import json
import logging
import threading

import pytest

from cifarflow.atomic_files import write_bytes_atomic, write_json_atomic
from cifarflow.cli.main import main
from cifarflow.components.ingest.executor import ingest
from cifarflow.data.splits import STATS_FILE
from cifarflow.errors import StorageError
from cifarflow.serving.store import MANIFEST, local_store, publish_model, verify_files
from cifarflow.serving.sync import SyncConfig, watch
from tests.reliability.conftest import fill, hidden_leftovers, one_error_line, tree_digest, until

pytestmark = pytest.mark.timeout(120)

MODEL = "cifarflow"
NO_SPACE = "No space left on device"


def test_publish_onto_a_full_local_store_fails_clearly_and_keeps_the_store_consistent(
    small_disk, exported_model, capsys
):
    store = small_disk / "store"
    assert (
        main(
            [
                "publish",
                "--model",
                str(exported_model),
                "--store",
                str(store),
                "--model-name",
                MODEL,
            ]
        )
        == 0
    )
    capsys.readouterr()
    filler = fill(small_disk, leave_bytes=64 * 1024)  # less than the model's variables
    code = main(
        ["publish", "--model", str(exported_model), "--store", str(store), "--model-name", MODEL]
    )
    line = one_error_line(capsys, "publish")
    assert code == StorageError.exit_code and NO_SPACE in line and str(store / MODEL) in line
    versions = local_store(store)
    assert versions.versions(MODEL) == [1] and hidden_leftovers(store) == []
    verify_files(
        store / MODEL / "1", versions.manifest(MODEL, 1)
    )  # the earlier version is untouched
    filler.unlink()  # space again: the next publish just works
    assert (
        main(
            [
                "publish",
                "--model",
                str(exported_model),
                "--store",
                str(store),
                "--model-name",
                MODEL,
            ]
        )
        == 0
    )
    assert versions.versions(MODEL) == [1, 2] and (store / MODEL / "2" / MANIFEST).is_file()


def test_ingest_onto_a_full_disk_leaves_no_record_and_no_staging(small_disk, capsys):
    out = small_disk / "raw"
    code = main(["ingest", "--source", "sample", "--out", str(out)])
    line = one_error_line(capsys, "ingest")
    assert code == StorageError.exit_code and NO_SPACE in line and str(out) in line
    assert not (out / "ingest.json").exists() and list(out.iterdir()) == []


def test_preprocess_onto_a_full_disk_writes_no_stats_marker(small_disk, tmp_path, capsys):
    raw = tmp_path / "raw"
    ingest("sample", raw)
    capsys.readouterr()  # ingest's progress line; the step's error line is what is checked
    out = small_disk / "splits"
    out.mkdir()
    (out / STATS_FILE).write_text("{}")  # an earlier run's marker: must not survive a failed re-run
    code = main(["preprocess", "--raw", str(raw), "--out", str(out)])
    line = one_error_line(capsys, "preprocess")
    assert code == StorageError.exit_code and NO_SPACE in line and str(out) in line
    assert not (out / STATS_FILE).exists()
    assert hidden_leftovers(out) == []  # no .partial files eating the space that is left


def test_atomic_writers_keep_the_old_content_when_the_disk_is_full(small_disk):
    marker = small_disk / "metrics.json"
    write_json_atomic(marker, {"accuracy": 0.5})
    fill(small_disk)
    with pytest.raises(OSError) as raised:
        write_json_atomic(marker, {"accuracy": 0.9, "padding": "x" * 100_000})
    assert raised.value.errno == errno.ENOSPC
    assert json.loads(marker.read_text()) == {"accuracy": 0.5}  # the old content, whole
    with pytest.raises(OSError):
        write_bytes_atomic(small_disk / "model.tflite", b"\1" * 100_000)
    assert not (small_disk / "model.tflite").exists()
    assert hidden_leftovers(small_disk) == []


def test_sync_onto_a_full_disk_keeps_serving_the_old_version_and_catches_up_when_space_returns(
    small_disk, exported_model, favour7_model, tmp_path, caplog
):
    source = tmp_path / "store"
    served = small_disk / "served"
    publish_model(exported_model, source, MODEL, {})
    stop = threading.Event()
    passes = threading.Semaphore(0)
    sidecar = threading.Thread(
        target=watch,
        args=(local_store(source), served, SyncConfig(interval_s=0.1), stop),
        kwargs={"after_pass": passes.release},
        daemon=True,
    )
    caplog.set_level(logging.ERROR, logger="cifarflow.serving.sync")
    sidecar.start()
    try:
        assert passes.acquire(timeout=30)
        before = tree_digest(served)
        filler = fill(small_disk, leave_bytes=64 * 1024)
        publish_model(favour7_model, source, MODEL, {})  # version 2 does not fit
        until(
            lambda: any("No space left" in r.getMessage() for r in caplog.records),
            30,
            "a failed sync pass",
        )
        assert (
            sidecar.is_alive() and tree_digest(served) == before
        )  # version 1 whole, no half version 2
        assert hidden_leftovers(served) == []
        filler.unlink()
        until(lambda: (served / MODEL / "2" / MANIFEST).is_file(), 30, "version 2 synced")
    finally:
        stop.set()
        sidecar.join(10)
