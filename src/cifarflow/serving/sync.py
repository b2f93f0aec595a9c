"""`cifarflow serve sync`: mirror complete versions from a store into a local folder.

This runs next to TensorFlow Serving (an init container, then a sidecar with
`--watch`), because TensorFlow Serving no longer reads `s3://` itself. Each
version is downloaded into a hidden `.sync-*` folder, checked against its
manifest, and renamed to `<model>/<version>` in one step, so TensorFlow
Serving (which only looks at integer-named folders) never sees half a model.
Versions beyond the newest `keep` (and not named by a label) are renamed
away before they are deleted. Killing the process at any moment leaves at
worst a hidden folder, removed by the next run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from cifarflow.errors import CifarflowError
from cifarflow.serving.store.backends import TRASH_PREFIX
from cifarflow.serving.store.model_store import LABELS, ModelStore, complete_versions, local_store

log = logging.getLogger(__name__)

SYNC_PREFIX = ".sync-"


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    """What to mirror and how often.

    Attributes:
        models: model names to mirror; empty means every model in the store.
        keep: newest complete versions kept per model (labelled ones are kept too).
        interval_s: seconds between passes with `--watch`.
        stale_after_s: hidden folders older than this are leftovers of a killed run.
    """

    models: tuple[str, ...] = ()
    keep: int = 2
    interval_s: float = 30.0
    stale_after_s: float = 3600.0


@dataclasses.dataclass
class SyncReport:
    added: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    removed: list[tuple[str, int]] = dataclasses.field(default_factory=list)


def _clean_leftovers(model_dir: Path, stale_after_s: float) -> None:
    now = time.time()
    for child in model_dir.iterdir() if model_dir.is_dir() else ():
        if (
            child.name.startswith((SYNC_PREFIX, TRASH_PREFIX))
            and now - child.stat().st_mtime > stale_after_s
        ):
            shutil.rmtree(child, ignore_errors=True)


def sync_model(source: ModelStore, dest: Path, model: str, config: SyncConfig) -> SyncReport:
    """One pass for one model; returns what changed."""
    report = SyncReport()
    model_dir = dest / model
    model_dir.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(model_dir, config.stale_after_s)
    wanted_versions = source.versions(model)
    labels = source.labels(model)
    wanted = set(wanted_versions[-config.keep :] if config.keep > 0 else wanted_versions)
    wanted |= {v for v in labels.values() if v in wanted_versions}
    served = local_store(dest)
    have = set(served.versions(model))
    for version in sorted(wanted - have):
        target = model_dir / str(version)
        if target.exists():  # an incomplete copy from elsewhere: replace it
            shutil.rmtree(target)
        tmp = model_dir / f"{SYNC_PREFIX}{version}-{uuid.uuid4().hex}"
        try:
            source.download(model, version, tmp)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("synced %s version %d from %s", model, version, source.uri)
        report.added.append((model, version))
    for version in sorted(have - wanted):
        served.backend.delete_tree(f"{model}/{version}")  # renamed into a hidden trash folder first
        log.info("removed %s version %d (beyond keep=%d)", model, version, config.keep)
        report.removed.append((model, version))
    labels_bytes = source.backend.read_bytes(f"{model}/{LABELS}")
    if labels_bytes is not None:
        local_store(dest).backend.write_bytes(f"{model}/{LABELS}", labels_bytes)
    return report


def sync_once(
    source: ModelStore, dest: str | Path, config: SyncConfig = SyncConfig()
) -> SyncReport:
    """Mirrors the configured models (all, by default) from `source` into `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    report = SyncReport()
    for model in config.models or tuple(source.models()):
        one = sync_model(source, dest, model, config)
        report.added += one.added
        report.removed += one.removed
    return report


def watch(
    source: ModelStore,
    dest: str | Path,
    config: SyncConfig,
    stop: threading.Event | None = None,
    after_pass: Callable[[], None] | None = None,
) -> None:
    """Syncs every `interval_s` until `stop` is set; a failed pass is logged and retried."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            sync_once(source, dest, config)
            if after_pass is not None:
                after_pass()
        except CifarflowError as exc:
            log.warning("sync pass failed, retrying in %.0fs: %s", config.interval_s, exc)
        except OSError as exc:  # a full disk or a vanished mount: keep the sidecar alive and retry
            log.error("sync pass failed (%s), retrying in %.0fs", exc, config.interval_s)
        stop.wait(config.interval_s)


def tf_serving_config(dest: str | Path, models: list[str], base_path: str | None = None) -> str:
    """TensorFlow Serving's `--model_config_file` text for the synced folder.

    With store labels, each model serves exactly the labelled versions plus
    its newest, and `version_labels` carry the labels, so `models promote`
    and `rollback` reach TensorFlow Serving through the sync (it re-reads the
    file every `--model_config_file_poll_wait_seconds`). Without labels it
    serves the newest version. TensorFlow Serving refuses a label on a version
    it has not loaded yet; run it with
    `--allow_version_labels_for_unavailable_models` so a promotion and its
    version can arrive in the same pass.
    """
    dest = Path(dest)
    root = (base_path or str(dest)).rstrip("/")
    blocks = []
    for model in sorted(models):
        versions = complete_versions(dest, model)
        labels = {}
        labels_path = dest / model / LABELS
        if labels_path.is_file():
            labels = {
                k: int(v)
                for k, v in json.loads(labels_path.read_text()).get("labels", {}).items()
                if int(v) in versions
            }
        lines = [
            f'    name: "{model}"',
            f'    base_path: "{root}/{model}"',
            '    model_platform: "tensorflow"',
        ]
        if labels and versions:
            served = sorted(set(labels.values()) | {versions[-1]})
            lines.append(
                "    model_version_policy { specific { "
                + " ".join(f"versions: {v}" for v in served)
                + " } }"
            )
            lines += [
                f'    version_labels {{ key: "{k}" value: {v} }}' for k, v in sorted(labels.items())
            ]
        else:
            lines.append("    model_version_policy { latest { num_versions: 1 } }")
        blocks.append("  config {\n" + "\n".join(lines) + "\n  }")
    return "model_config_list {\n" + "\n".join(blocks) + "\n}\n"


def write_tf_serving_config(
    dest: str | Path, models: list[str], path: str | Path, base_path: str | None = None
) -> bool:
    """Writes the config atomically when it changed; True when it did."""
    text = tf_serving_config(dest, models, base_path)
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # TF Serving never reads a half-written config
    return True
