"""The model store: complete versions, their manifests, labels and publishing.

Layout (the one TensorFlow Serving reads, in a folder or an S3 prefix):

    <store>/<model>/<version>/saved_model.pb, variables/, assets/, ..., cifarflow.json
    <store>/<model>/labels.json      {"labels": {"stable": 3, "canary": 4},
                                      "history": {"stable": [1, 2]}}

A version is complete when its `cifarflow.json` exists; everything here
ignores incomplete ones. Labels name versions for the model server
(`--label stable`) and for TensorFlow Serving's `version_labels`;
`promote` moves a label and remembers where it pointed, `rollback` moves it
back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cifarflow.errors import BadInputError, IntegrityError
from cifarflow.s3 import S3Settings
from cifarflow.serving.store.backends import MANIFEST, Backend, LocalBackend, open_backend

LABELS = "labels.json"
MANIFEST_FORMAT = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def check_model_name(name: str) -> str:
    """Model names become path segments: no slashes, dots-only or hidden names."""
    if not _NAME.match(name or ""):
        raise BadInputError(
            f"bad model name {name!r}: use letters, digits, '_', '-', '.' (not leading)"
        )
    return name


def check_label(label: str) -> str:
    if not _LABEL.match(label or ""):
        raise BadInputError(f"bad label {label!r}: use lower-case letters, digits, '_' or '-'")
    return label


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """A complete version and its manifest (`cifarflow.json`)."""

    model: str
    version: int
    manifest: dict[str, Any]
    labels: tuple[str, ...] = ()

    @property
    def created_at(self) -> str:
        return str(self.manifest.get("created_at", ""))

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics") or {})


def _file_list(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file, so a copy can be checked against the manifest."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        files[path.relative_to(folder).as_posix()] = {
            "size": path.stat().st_size,
            "sha256": digest.hexdigest(),
        }
    return files


def verify_files(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Raises IntegrityError when `folder` lacks a file the manifest lists, or sizes differ."""
    for name, info in (manifest.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{folder}: {name} is missing")
        if path.stat().st_size != int(info["size"]):
            raise IntegrityError(
                f"{folder}: {name} has {path.stat().st_size} bytes, the manifest says {info['size']}"
            )


class ModelStore:
    """Versions, manifests and labels of the models in one store."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def uri(self) -> str:
        return self.backend.uri

    def models(self) -> list[str]:
        """Models that have at least one complete version."""
        return [n for n in self.backend.list_children("") if _NAME.match(n) and self.versions(n)]

    def versions(self, model: str) -> list[int]:
        """Complete versions of `model`, ascending."""
        check_model_name(model)
        return [
            v
            for v in self.backend.versions_present(model)
            if self.backend.read_bytes(f"{model}/{v}/{MANIFEST}") is not None
        ]

    def latest(self, model: str) -> int | None:
        versions = self.versions(model)
        return versions[-1] if versions else None

    def manifest(self, model: str, version: int) -> dict[str, Any]:
        data = self.backend.read_bytes(f"{check_model_name(model)}/{int(version)}/{MANIFEST}")
        if data is None:
            raise BadInputError(
                f"{model} version {version} does not exist (or is incomplete) in {self.uri}"
            )
        try:
            return json.loads(data)
        except ValueError as exc:
            raise IntegrityError(
                f"{self.uri}/{model}/{version}/{MANIFEST} is not JSON: {exc}"
            ) from exc

    def info(self, model: str, version: int) -> VersionInfo:
        names = tuple(sorted(k for k, v in self.labels(model).items() if v == version))
        return VersionInfo(model, version, self.manifest(model, version), names)

    # -- labels ---------------------------------------------------------------

    def _label_doc(self, model: str) -> dict[str, Any]:
        data = self.backend.read_bytes(f"{check_model_name(model)}/{LABELS}")
        if data is None:
            return {"labels": {}, "history": {}}
        doc = json.loads(data)
        doc.setdefault("labels", {})
        doc.setdefault("history", {})
        return doc

    def labels(self, model: str) -> dict[str, int]:
        return {k: int(v) for k, v in self._label_doc(model)["labels"].items()}

    def resolve(self, model: str, version: int | None = None, label: str | None = None) -> int:
        """A version number from an explicit version, a label, or the latest."""
        if version is not None and label is not None:
            raise BadInputError("give a version or a label, not both")
        if label is not None:
            labels = self.labels(model)
            if label not in labels:
                raise BadInputError(
                    f"{model} has no label {label!r} (labels: {sorted(labels) or 'none'})"
                )
            return labels[label]
        if version is not None:
            if version not in self.versions(model):
                raise BadInputError(
                    f"{model} version {version} does not exist (or is incomplete) in {self.uri}"
                )
            return version
        latest = self.latest(model)
        if latest is None:
            raise BadInputError(f"no complete version of {model!r} in {self.uri}")
        return latest

    def promote(self, model: str, version: int, label: str = "stable") -> dict[str, int]:
        """Points `label` at `version`, remembering the previous target for rollback.

        Label updates are last-writer-wins: run promotions from one place (the
        pipeline or an operator), not concurrently.
        """
        check_label(label)
        if version not in self.versions(model):
            raise BadInputError(
                f"cannot promote {model} version {version}: no such complete version in {self.uri}"
            )
        doc = self._label_doc(model)
        previous = doc["labels"].get(label)
        if previous is not None and int(previous) != version:
            doc["history"].setdefault(label, []).append(int(previous))
        doc["labels"][label] = version
        self._write_labels(model, doc)
        return self.labels(model)

    def rollback(self, model: str, label: str = "stable") -> dict[str, int]:
        """Moves `label` back to the version it named before the last promotion."""
        check_label(label)
        doc = self._label_doc(model)
        history = [v for v in doc["history"].get(label, []) if v in self.versions(model)]
        if not history:
            raise BadInputError(
                f"nothing to roll back to: label {label!r} of {model} has no earlier version"
            )
        doc["labels"][label] = history.pop()
        doc["history"][label] = history
        self._write_labels(model, doc)
        return self.labels(model)

    def _write_labels(self, model: str, doc: Mapping[str, Any]) -> None:
        self.backend.write_bytes(
            f"{model}/{LABELS}", json.dumps(doc, indent=2, sort_keys=True).encode()
        )

    # -- publishing -----------------------------------------------------------

    def publish(
        self, model: str, folder: Path, metadata: Mapping[str, Any], min_version: int = 1
    ) -> VersionInfo:
        """Copies `folder` verbatim as a new version, writing `cifarflow.json` last.

        Args:
            model: the model name (a path segment).
            folder: the exported model: a SavedModel plus any extra files.
            metadata: metrics, class_names, run_id, data_checksum, ...: stored
                in the manifest as given (reserved keys are overwritten).
            min_version: the smallest number to give (for migrations).
        """
        check_model_name(model)
        folder = Path(folder)
        if not (folder / "saved_model.pb").is_file():
            raise BadInputError(f"{folder} is not a SavedModel folder: saved_model.pb is missing")
        if (folder / MANIFEST).exists():
            raise BadInputError(
                f"{folder} already has a {MANIFEST}: publish the exported model, not a store version"
            )
        manifest = dict(metadata)
        manifest.update(
            format=MANIFEST_FORMAT,
            model_name=model,
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            files=_file_list(folder),
        )
        # The version is only known once allocated; it is in the folder name, and
        # the manifest does not repeat it so the bytes can be written before.
        data = json.dumps(manifest, indent=2, sort_keys=True, default=_json_default).encode()
        version = self.backend.commit_version(model, folder, data, min_version)
        return VersionInfo(model, version, manifest)

    def download(self, model: str, version: int, dest: Path) -> None:
        """Copies a complete version into `dest` and checks it against its manifest."""
        manifest = self.manifest(model, version)
        self.backend.download_tree(f"{model}/{version}", dest)
        verify_files(dest, manifest)


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays, Paths: what metrics dicts tend to contain."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def open_store(uri: str | Path, s3_settings: S3Settings | None = None) -> ModelStore:
    """A ModelStore for a local folder or `s3://bucket/prefix`."""
    return ModelStore(open_backend(str(uri), s3_settings))


def local_store(root: str | Path) -> ModelStore:
    return ModelStore(LocalBackend(root))


def complete_versions(dest: str | Path, model: str) -> list[int]:
    """Versions of `model` in a synced folder that have their manifest."""
    model_dir = Path(dest) / model
    return (
        sorted(
            int(p.name)
            for p in model_dir.iterdir()
            if p.name.isdigit() and (p / MANIFEST).is_file()
        )
        if model_dir.is_dir()
        else []
    )
