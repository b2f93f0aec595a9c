"""A copy of each epoch's checkpoint in the model store, so a new pod resumes the trial.

On Kubeflow the train step's output folder is pod-local scratch that the
launcher uploads only after the step succeeded: a retried or preempted
train pod starts with an empty folder, and `<out>/checkpoint/` alone would
send it back to epoch 0. So, when asked, every finished epoch's checkpoint
(whatever `checkpointing` wrote: weights, optimizer variables, the loop's
state with its history and time budget) is also uploaded to

    <store>/.checkpoints/<run_id>/trial-<key>/
        manifest.json                    written last: names the generation to resume
        epoch-<NNNNN>-<hex>/             one generation: the checkpoint files

`<key>` is a hash of the trial's hyper-parameters: the KFP component gets a
trial's dict, not its place in the grid, and a hash also makes resuming
another trial's checkpoint impossible. The leading dot keeps the folder out
of the model listing and out of `serve sync` (model names never start with
a dot). The run id is the pipeline's job id, which a retried task keeps.

Atomicity: a generation's files are uploaded under a new name, then the
small manifest (one PUT, or a rename in a folder store) switches to it, then
older generations are deleted. A kill at any point leaves the previous
manifest and its files, or the new ones; a generation without a manifest
naming it is never read. On resume every file is checked against the
manifest's sizes and SHA-256, so even a copy that lost files (a deletion cut
short) is ignored rather than resumed from.

Uploads run on a background thread from a hard-linked snapshot of the
checkpoint folder, so training does not wait for the network; only the
newest waiting snapshot is kept. A failed upload is logged and never stops
training: the local checkpoint stays, and the next epoch uploads again.

After the trial finished, the durable copy is deleted: the output folder
now holds the model, and keeping every trial's weights of every run would
grow the bucket without bound. A failed run's copies stay (a "retry run"
resumes from them); remove `.checkpoints/<run_id>/` by hand or with a bucket
lifecycle rule.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cifarflow.components.train import checkpointing
from cifarflow.components.train.config import TrialConfig
from cifarflow.errors import BadInputError
from cifarflow.s3 import S3Settings
from cifarflow.serving.store.backends import Backend, LocalBackend, S3Backend, open_backend

ROOT = ".checkpoints"
MANIFEST = "manifest.json"
FORMAT = 1
_GENERATION = "epoch-"
# Local helper folders inside `<out>/checkpoint/`: removed with it at the end.
_SNAPSHOT = ".upload-"
_DOWNLOAD = ".download-"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

Log = Callable[[str], None]


def trial_key(config: TrialConfig) -> str:
    """A short, stable name for a trial's hyper-parameters (the same from the CLI and from KFP)."""
    canonical = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def open_durable(
    store: str | None,
    run_id: str | None,
    config: TrialConfig,
    log: Log,
    s3_settings: S3Settings | None = None,
) -> DurableCheckpoints | Disabled:
    """The durable copy for this run and trial, or a no-op when no store was given.

    Args:
        store: the model store (`s3://bucket/prefix` or a folder), or None/"" for none.
        run_id: the pipeline run's id; required with a store.
        config: the trial, which names the copy.
        log: where progress and warnings go.
        s3_settings: S3 endpoint and keys (default: the S3_* environment variables).

    Raises:
        BadInputError: a store without a run id (or the reverse), a run id
            that cannot be a path segment, or an unusable store URI.
    """
    if not store and not run_id:
        return Disabled()
    if not store or not run_id:
        raise BadInputError("durable checkpoints need both a checkpoint store and a run id")
    if not _RUN_ID.match(run_id):
        raise BadInputError(
            f"bad run id {run_id!r}: use letters, digits, '_', '-', '.' (not leading), at most 128"
        )
    backend = open_backend(store, s3_settings)
    return DurableCheckpoints(backend, f"{ROOT}/{run_id}/trial-{trial_key(config)}", log)


class Disabled:
    """Stands in when no store was given, so the training loop needs no branches."""

    uri = ""

    def restore(self, local: Path) -> bool:
        return False

    def save(self, local: Path, epochs_done: int) -> None:
        pass

    def close(self) -> None:
        pass

    def remove(self) -> None:
        pass


class DurableCheckpoints:
    """One trial's durable checkpoint copy (see the module docstring)."""

    def __init__(self, backend: Backend, rel: str, log: Log) -> None:
        self.backend = backend
        self.rel = rel
        self.uri = f"{backend.uri}/{rel}"
        self.log = log
        self._cond = threading.Condition()
        self._pending: tuple[Path, int] | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- resume ---------------------------------------------------------------

    def restore(self, local: Path) -> bool:
        """Fills an empty local checkpoint folder from the durable copy.

        A local checkpoint always wins: it comes from this machine and is at
        least as new as the copy, which lags it by one upload.

        Returns:
            True when a checkpoint was downloaded into `local`.

        Raises:
            RemoteError, BadInputError: the store cannot be read. Training
                from scratch instead would silently throw the copy away; the
                task's retry (with backoff) is the better answer.
        """
        for leftover in local.glob(f"{_SNAPSHOT}*"):  # from a killed process
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in local.glob(f"{_DOWNLOAD}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if checkpointing.load_state(local) is not None:
            return False
        raw = self.backend.read_bytes(f"{self.rel}/{MANIFEST}")
        if raw is None:
            if any(n.startswith(_GENERATION) for n in self.backend.list_children(self.rel)):
                self.log(
                    f"ignoring the durable checkpoint files under {self.uri}: no manifest names them (an upload cut short)"
                )
            return False
        try:
            manifest = json.loads(raw)
            generation, files = str(manifest["generation"]), dict(manifest["files"])
        except (ValueError, KeyError, TypeError) as exc:
            self.log(f"ignoring the durable checkpoint at {self.uri}: unreadable manifest ({exc})")
            return False
        local.mkdir(parents=True, exist_ok=True)
        download = local / f"{_DOWNLOAD}{uuid.uuid4().hex[:8]}"
        try:
            try:
                self.backend.download_tree(f"{self.rel}/{generation}", download)
            except (
                FileNotFoundError
            ):  # a folder store whose generation is gone: caught by the check below
                download.mkdir(exist_ok=True)
            problem = _check_files(download, files)
            if problem:
                self.log(f"ignoring the durable checkpoint at {self.uri}: {problem}")
                return False
            # state.json last: until it is in place the folder holds no checkpoint.
            for name in sorted(files, key=lambda n: n == checkpointing.STATE_FILE):
                os.replace(download / name, local / name)
        finally:
            shutil.rmtree(download, ignore_errors=True)
        self.log(
            f"restored the durable checkpoint of epoch {manifest.get('epochs_done', '?')} from {self.uri}"
        )
        return True

    # -- upload ---------------------------------------------------------------

    def save(self, local: Path, epochs_done: int) -> None:
        """Queues an upload of the checkpoint `checkpointing.save_checkpoint` just wrote."""
        snapshot = _snapshot(local, epochs_done)
        with self._cond:
            if self._closed:
                shutil.rmtree(snapshot, ignore_errors=True)
                return
            if self._pending is not None:  # superseded before it was sent: the newer one is enough
                shutil.rmtree(self._pending[0], ignore_errors=True)
            self._pending = (snapshot, epochs_done)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="durable-checkpoints", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def close(self) -> None:
        """Waits until the newest queued checkpoint is uploaded (or its upload failed)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def remove(self) -> None:
        """Drops queued uploads, waits for one in flight, then deletes the durable copy.

        Called once the trial is finished; a failure is only logged, the
        trial's outputs are what matters now.
        """
        with self._cond:
            if self._pending is not None:
                shutil.rmtree(self._pending[0], ignore_errors=True)
                self._pending = None
        self.close()
        try:
            self.backend.delete_tree(self.rel)
        except Exception as exc:  # noqa: BLE001 - leftover files cost storage, not correctness
            self.log(f"warning: could not delete the durable checkpoint {self.uri}: {exc}")
            return
        if isinstance(self.backend, LocalBackend):
            # Empty parents of a folder store; rmdir refuses a non-empty folder,
            # so a trial of the same run still training keeps its own.
            run_folder = self.backend.root / self.rel.rsplit("/", 1)[0]
            for folder in (run_folder, run_folder.parent):
                try:
                    folder.rmdir()
                except OSError:
                    break

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                (snapshot, epochs_done), self._pending = self._pending, None
            try:
                self._upload(snapshot, epochs_done)
            except Exception as exc:  # noqa: BLE001 - an upload must never stop training
                self.log(
                    f"warning: could not upload the checkpoint of epoch {epochs_done} to {self.uri}: {exc}"
                )
            finally:
                shutil.rmtree(snapshot, ignore_errors=True)

    def _upload(self, snapshot: Path, epochs_done: int) -> None:
        generation = f"{_GENERATION}{epochs_done:05d}-{uuid.uuid4().hex[:8]}"
        files: dict[str, dict[str, Any]] = {}
        for path in sorted(snapshot.iterdir()):
            files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
            _put_file(self.backend, f"{self.rel}/{generation}/{path.name}", path)
        manifest = {
            "format": FORMAT,
            "generation": generation,
            "epochs_done": epochs_done,
            "files": files,
            "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        # Last: from here on a new process resumes from this generation.
        self.backend.write_bytes(f"{self.rel}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
        for name in self.backend.list_children(self.rel):
            if name.startswith(_GENERATION) and name != generation:
                self.backend.delete_tree(f"{self.rel}/{name}")
        self.log(f"checkpoint of epoch {epochs_done} uploaded to {self.uri}")


def _snapshot(local: Path, epochs_done: int) -> Path:
    """A frozen view of the checkpoint's files for the upload thread.

    Hard links cost nothing, and `save_checkpoint` replaces files by renaming
    new ones into place, so the linked files never change under the upload.
    """
    folder = local / f"{_SNAPSHOT}{epochs_done}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    for path in local.iterdir():
        if path.is_file() and not path.name.startswith("."):
            try:
                os.link(path, folder / path.name)
            except OSError:  # a file system without hard links
                shutil.copy2(path, folder / path.name)
    return folder


def _put_file(backend: Backend, rel: str, path: Path) -> None:
    if isinstance(backend, S3Backend):
        backend.upload_file(rel, path)  # streamed: large weights never sit in memory
    else:
        backend.write_bytes(rel, path.read_bytes())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_files(folder: Path, files: dict[str, Any]) -> str | None:
    """What is wrong with a downloaded generation, or None when every file matches the manifest."""
    if checkpointing.STATE_FILE not in files:
        return f"the manifest lists no {checkpointing.STATE_FILE}"
    for name, info in files.items():
        path = folder / name
        if "/" in name or name.startswith("."):  # names become local paths: nothing may escape
            return f"the manifest names an unsafe file {name!r}"
        if not path.is_file():
            return f"{name} is missing"
        try:
            size, sha256 = int(info["size"]), str(info["sha256"])
        except (KeyError, TypeError, ValueError):
            return f"the manifest's entry for {name} is unreadable"
        if path.stat().st_size != size or _sha256(path) != sha256:
            return f"{name} does not match the manifest"
    return None
