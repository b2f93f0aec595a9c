"""Where a model store lives: a local folder or an S3/MinIO prefix.

Both backends expose the same small set of operations on paths relative to
the store root (`<model>/<version>/...`), plus `commit_version`, the one
operation whose implementation must differ: a new version has to appear
whole and under a number no other publisher got.

- Local: the version is staged in a hidden `.staging-*` folder (TensorFlow
  Serving ignores names that are not integers) with `cifarflow.json` written
  last, then renamed to `<N>`. `rename(2)` onto an existing non-empty folder
  fails, so two publishers racing for N cannot both win; the loser retries
  with N+1. A publisher killed before the rename leaves its staging folder
  behind (named with its pid and host); the next publish removes it once its
  process is gone, or once it is a day old.
- S3 has no rename and no locks, so a publisher first claims N by writing
  `<model>/.claims/<N>/<uuid>` and listing `.claims/<N>/`: it owns N only if
  its own claim is the only one there. With read-after-write consistent
  listings (MinIO, SeaweedFS, AWS S3) at most one claimant sees itself alone:
  a later claimant always sees the earlier claim, and only claimants that
  did not see themselves alone withdraw theirs (then retry), so a winner's
  claim stays. Files are then uploaded and `cifarflow.json` is put last, so a
  publish that dies half-way leaves a version without a manifest, which no
  reader lists, loads or syncs; the next publisher skips past its number, and
  deletes those files once nothing has been written to them for a day (the
  claim stays, so the number is never given out again).
"""

from __future__ import annotations

import abc
import errno
import logging
import os
import random
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from cifarflow.errors import BadInputError, RemoteError, storage_error
from cifarflow.s3 import S3Location, S3Settings, describe_s3_error

MANIFEST = "cifarflow.json"
CLAIMS = ".claims"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
# A version number is claimed up to this many times before giving up: only a
# storm of concurrent publishers of one model could exhaust it.
_MAX_ATTEMPTS = 50
# A local staging folder this old is abandoned even when its pid looks alive
# (pids are reused, and another host's pids cannot be checked at all); on S3,
# a version without a manifest that nothing has written to for this long.
ABANDONED_AFTER_S = 24 * 3600

log = logging.getLogger(__name__)


def _is_version(name: str) -> bool:
    return name.isdigit() and not (len(name) > 1 and name.startswith("0"))


class Backend(abc.ABC):
    """Storage operations on paths relative to the store root ('a/b/c')."""

    uri: str

    @abc.abstractmethod
    def list_children(self, rel: str) -> list[str]:
        """Names directly under `rel` (folders without a trailing slash); [] if absent."""

    @abc.abstractmethod
    def read_bytes(self, rel: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""

    @abc.abstractmethod
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Replaces the file atomically (readers see the old or the new bytes)."""

    @abc.abstractmethod
    def download_tree(self, rel: str, dest: Path) -> None:
        """Copies every file under `rel` into `dest` (which is created)."""

    @abc.abstractmethod
    def delete_tree(self, rel: str) -> None:
        """Removes everything under `rel`; no error when absent."""

    @abc.abstractmethod
    def commit_version(self, model: str, staged: Path, manifest: bytes, min_version: int) -> int:
        """Publishes `staged` (a folder) plus `manifest` as a new version ≥ min_version.

        Returns:
            The version number this call, and no other, got.
        """

    def versions_present(self, model: str) -> list[int]:
        """Integer-named folders under `model`, complete or not, ascending."""
        return sorted(int(n) for n in self.list_children(model) if _is_version(n))


class LocalBackend(Backend):
    """A store in a local folder (also what `serve sync` writes for TF Serving)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def list_children(self, rel: str) -> list[str]:
        path = self._path(rel)
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return self._path(rel).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self._path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    def download_tree(self, rel: str, dest: Path) -> None:
        shutil.copytree(self._path(rel), dest)

    def delete_tree(self, rel: str) -> None:
        path = self._path(rel)
        if not path.exists():
            return
        # Rename first so the folder vanishes in one step even if rmtree is cut short.
        trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex}")
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def commit_version(self, model: str, staged: Path, manifest: bytes, min_version: int) -> int:
        model_dir = self._path(model)
        model_dir.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(model_dir)
        staging = model_dir / _staging_name()
        try:
            try:
                shutil.copytree(staged, staging)
                with open(staging / MANIFEST, "wb") as out:  # last: it marks the version complete
                    out.write(manifest)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:  # copytree's shutil.Error lists every file the disk refused
                full = storage_error(exc, staging)
                if full is None:
                    raise
                raise full from exc
            for _ in range(_MAX_ATTEMPTS):
                present = self.versions_present(model)
                version = max([min_version - 1, *present]) + 1
                try:
                    # Fails with ENOTEMPTY/EEXIST when another publisher got there first.
                    os.rename(staging, model_dir / str(version))
                    return version
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise RemoteError(
                            f"cannot publish into {model_dir}: {exc.strerror}"
                        ) from exc
                    time.sleep(random.uniform(0.001, 0.02))
            raise RemoteError(
                f"could not allocate a version of {model} in {self.uri}: too many concurrent publishers"
            )
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _remove_abandoned(model_dir: Path) -> None:
    """Deletes what killed publishers and deletions left in `model_dir`.

    A staging folder is abandoned when the process named in it has exited on
    this host, or when it is older than ABANDONED_AFTER_S; a live publisher's
    folder is never touched. Trash folders are always leftovers: their
    deletion already started.
    """
    now = time.time()
    for name in os.listdir(model_dir):
        path = model_dir / name
        if name.startswith(TRASH_PREFIX) or (
            name.startswith(STAGING_PREFIX) and _staging_abandoned(name, path, now)
        ):
            log.info("removing %s, left by an interrupted publish or delete", path)
            shutil.rmtree(path, ignore_errors=True)


def _staging_name() -> str:
    return f"{STAGING_PREFIX}{uuid.uuid4().hex}-{os.getpid()}@{socket.gethostname()}"


def _staging_abandoned(name: str, path: Path, now: float) -> bool:
    # .staging-<32 hex>-<pid>@<host>; host names may hold dashes, so cut by position.
    pid, _, host = name[len(STAGING_PREFIX) + 33 :].partition("@")
    if host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid)):
        return True
    try:
        return now - path.stat().st_mtime > ABANDONED_AFTER_S
    except FileNotFoundError:
        return False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class S3Backend(Backend):
    """A store under `s3://bucket/prefix`, reached with the minio client."""

    def __init__(self, location: S3Location, settings: S3Settings) -> None:
        self.location = location
        self.prefix = location.key.strip("/")
        self.client = settings.client()
        self.uri = f"s3://{location.bucket}/{self.prefix}".rstrip("/")

    def _key(self, rel: str) -> str:
        return "/".join(p for p in (self.prefix, rel.strip("/")) if p)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # minio raises S3Error, urllib3 errors, ValueError
            from minio.error import S3Error

            if isinstance(exc, S3Error) and exc.code == "NoSuchBucket":
                raise BadInputError(
                    f"bucket {self.location.bucket!r} does not exist ({self.uri})"
                ) from exc
            raise describe_s3_error(exc, f"{self.uri} ({what})") from exc

    def _objects(self, rel: str, recursive: bool) -> Iterator:
        prefix = self._key(rel)
        prefix = prefix + "/" if prefix else ""
        return self._call(
            "list",
            lambda: list(
                self.client.list_objects(self.location.bucket, prefix=prefix, recursive=recursive)
            ),
        )

    def list_children(self, rel: str) -> list[str]:
        prefix = self._key(rel)
        cut = len(prefix) + 1 if prefix else 0
        return sorted(
            {o.object_name[cut:].rstrip("/") for o in self._objects(rel, recursive=False)}
        )

    def read_bytes(self, rel: str) -> bytes | None:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.location.bucket, self._key(rel))
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject"}:
                return None
            raise describe_s3_error(exc, f"{self.uri}/{rel}") from exc
        except Exception as exc:
            raise describe_s3_error(exc, f"{self.uri}/{rel}") from exc
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def write_bytes(self, rel: str, data: bytes) -> None:
        import io

        self._call(
            f"put {rel}",
            self.client.put_object,
            self.location.bucket,
            self._key(rel),
            io.BytesIO(data),
            len(data),
        )

    def upload_file(self, rel: str, path: Path) -> None:
        self._call(
            f"put {rel}", self.client.fput_object, self.location.bucket, self._key(rel), str(path)
        )

    def download_tree(self, rel: str, dest: Path) -> None:
        prefix = self._key(rel) + "/"
        dest.mkdir(parents=True, exist_ok=True)
        for obj in self._objects(rel, recursive=True):
            relative = obj.object_name[len(prefix) :]
            if not relative or relative.endswith("/"):
                continue
            target = (dest / relative).resolve()
            if not target.is_relative_to(dest.resolve()):  # a hostile key like '../../x'
                raise BadInputError(f"refusing object {obj.object_name!r}: it escapes {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            self._call(
                f"get {rel}/{relative}",
                self.client.fget_object,
                self.location.bucket,
                obj.object_name,
                str(target),
            )

    def delete_tree(self, rel: str) -> None:
        from minio.deleteobjects import DeleteObject

        names = [DeleteObject(o.object_name) for o in self._objects(rel, recursive=True)]
        if names:
            errors = self._call(
                "delete", lambda: list(self.client.remove_objects(self.location.bucket, names))
            )
            if errors:
                raise RemoteError(
                    f"could not delete {len(errors)} objects under {self.uri}/{rel}: {errors[0]}"
                )

    def _claimed(self, model: str) -> list[int]:
        return [int(n) for n in self.list_children(f"{model}/{CLAIMS}") if _is_version(n)]

    def claim_version(self, model: str, min_version: int) -> int:
        """Claims the next free version number (see the module docstring)."""
        for _ in range(_MAX_ATTEMPTS):
            taken = [min_version - 1, *self.versions_present(model), *self._claimed(model)]
            version = max(taken) + 1
            me = uuid.uuid4().hex  # a fresh claim per attempt: a winner's claim is never deleted
            self.write_bytes(f"{model}/{CLAIMS}/{version}/{me}", b"")
            claimants = self.list_children(f"{model}/{CLAIMS}/{version}")
            if claimants == [me] and version not in self.versions_present(model):
                return version
            # Withdrawing a losing claim keeps numbers dense when everyone lost;
            # it is safe because only losers withdraw (see the module docstring).
            self.delete_tree(f"{model}/{CLAIMS}/{version}/{me}")
            time.sleep(random.uniform(0.001, 0.05))  # jitter breaks lock-step retries
        raise RemoteError(
            f"could not allocate a version of {model} in {self.uri}: too many concurrent publishers"
        )

    def _remove_abandoned(self, model: str) -> None:
        """Deletes the files of versions a publisher left half-way: no manifest, nothing written for a day.

        Their claims stay, so their numbers are never given out again. One
        listing of the model serves every version.
        """
        from datetime import datetime, timezone

        prefix = self._key(model) + "/"
        newest: dict[str, datetime] = {}
        complete: set[str] = set()
        for entry in self._objects(model, recursive=True):
            version, _, rest = entry.object_name[len(prefix) :].partition("/")
            if not _is_version(version):
                continue
            if rest == MANIFEST:
                complete.add(version)
            if entry.last_modified and (
                version not in newest or entry.last_modified > newest[version]
            ):
                newest[version] = entry.last_modified
        now = datetime.now(timezone.utc)
        for version, written in sorted(newest.items()):
            if version not in complete and (now - written).total_seconds() > ABANDONED_AFTER_S:
                log.info(
                    "deleting %s/%s/%s: a publish that stopped half-way, last written %s",
                    self.uri,
                    model,
                    version,
                    written.isoformat(),
                )
                self.delete_tree(f"{model}/{version}")

    def commit_version(self, model: str, staged: Path, manifest: bytes, min_version: int) -> int:
        self._remove_abandoned(model)
        version = self.claim_version(model, min_version)
        for path in sorted(p for p in staged.rglob("*") if p.is_file()):
            self.upload_file(f"{model}/{version}/{path.relative_to(staged).as_posix()}", path)
        self.write_bytes(f"{model}/{version}/{MANIFEST}", manifest)  # last: marks it complete
        return version


def open_backend(uri: str, s3_settings: S3Settings | None = None) -> Backend:
    """`s3://bucket/prefix` or a local folder path; S3 settings default to the environment."""
    if uri.startswith("s3://"):
        return S3Backend(S3Location.parse(uri), s3_settings or S3Settings.from_env())
    if "://" in uri:
        raise BadInputError(
            f"unsupported store URI {uri!r}: use a local folder or s3://bucket/prefix"
        )
    return LocalBackend(uri)
