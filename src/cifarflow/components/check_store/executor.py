"""Check the model store before any training starts.

select_best reads the store (the champion) and publish writes to it; both
run after every trial has trained, hours and GPU-hours into a run. A wrong
endpoint, a missing bucket, refused credentials or a read-only key would only
show then. This step asks the same questions first, in seconds: can the store
be reached, does the bucket exist, are the credentials accepted, can a small
object be written, read back and deleted there (what publish does). It fails
with one line naming the problem.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import os
import uuid
from pathlib import Path

from cifarflow.defaults import MODEL_NAME
from cifarflow.errors import BadInputError, RemoteError, storage_error
from cifarflow.s3 import S3Location, S3Settings, describe_s3_error, is_s3_uri
from cifarflow.serving.store import check_model_name
from cifarflow.serving.store.backends import S3Backend

log = logging.getLogger(__name__)

# Where the pipeline's tasks get the store's settings on a cluster (the
# pipeline maps these names), named in the errors so the fix is one look away.
SETTINGS_CONFIG_MAP = "cifarflow-pipeline-settings"
STORE_SECRET = "cifarflow-model-store"
KUBEFLOW_HINT = (
    f"on Kubeflow they come from the ConfigMap {SETTINGS_CONFIG_MAP} (S3_ENDPOINT, S3_SECURE) "
    f"and the Secret {STORE_SECRET} (accesskey, secretkey)"
)
# The probe's name: hidden, and not a model name a reader would list.
PROBE_PREFIX = ".cifarflow-write-check-"

_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}


@dataclasses.dataclass(frozen=True)
class StoreCheck:
    """A store that passed: `uri` as resolved, `summary` one line for the log."""

    uri: str
    summary: str


def check_store(
    store: str, model_name: str = MODEL_NAME, s3_settings: S3Settings | None = None
) -> StoreCheck:
    """Fails now if publishing `model_name` into `store` would fail later.

    Args:
        store: a local folder or `s3://bucket/prefix`.
        model_name: the name publish will use (checked for a valid path segment).
        s3_settings: endpoint and credentials; default: the S3_* environment.

    Raises:
        BadInputError: no S3 settings, a missing bucket, a bad model name, an
            unsupported URI, or a folder that cannot be created or written.
        RemoteError: the endpoint cannot be reached or refuses the credentials
            or the write.
        StorageError: the folder's disk is full or read-only.
    """
    check_model_name(model_name)
    if is_s3_uri(store):
        result = _check_s3(S3Location.parse(store), s3_settings)
    elif "://" in store:
        raise BadInputError(
            f"unsupported store URI {store!r}: use a local folder or s3://bucket/prefix"
        )
    else:
        result = _check_folder(Path(store))
    log.info("%s", result.summary)
    return result


def _check_s3(location: S3Location, settings: S3Settings | None) -> StoreCheck:
    from minio.error import S3Error

    try:
        settings = settings or S3Settings.from_env()
    except BadInputError as exc:
        raise BadInputError(f"{exc} ({KUBEFLOW_HINT})") from None
    backend = S3Backend(location, settings)
    client, bucket = backend.client, location.bucket
    where = f"{backend.uri} at {settings.endpoint}"
    probe = "/".join(p for p in (backend.prefix, f"{PROBE_PREFIX}{uuid.uuid4().hex}") if p)

    def refused(exc: Exception, doing: str, left: str = "") -> Exception:
        if not isinstance(exc, S3Error):
            return RemoteError(
                f"{describe_s3_error(exc, where)} (is S3_ENDPOINT right? {KUBEFLOW_HINT})"
            )
        if exc.code == "NoSuchBucket":
            return BadInputError(
                f"bucket {bucket!r} does not exist at {settings.endpoint}: create it first, e.g. mc mb <alias>/{bucket}"
            )
        if exc.code in _BAD_CREDENTIALS:
            return RemoteError(
                f"S3 at {settings.endpoint} refused the credentials ({exc.code}): check S3_ACCESS_KEY/S3_SECRET_KEY ({KUBEFLOW_HINT})"
            )
        if exc.code == "AccessDenied":
            return RemoteError(
                f"the credentials may not {doing} {where} (AccessDenied): publish needs list, read, write and delete there{left}"
            )
        return RemoteError(
            f"S3 error on {where} while trying to {doing}: {exc.code}: {exc.message}"
        )

    prefix = backend.prefix + "/" if backend.prefix else ""
    try:
        next(iter(client.list_objects(bucket, prefix=prefix)), None)
    except Exception as exc:  # minio raises S3Error, urllib3 errors, ValueError
        raise refused(exc, "list") from exc
    data = b"cifarflow store check\n"
    try:
        client.put_object(bucket, probe, io.BytesIO(data), len(data))
    except Exception as exc:
        raise refused(exc, "write to") from exc
    try:
        response = client.get_object(bucket, probe)
        try:
            if response.read() != data:
                raise RemoteError(
                    f"{where} returned other bytes than were written to s3://{bucket}/{probe}"
                )
        finally:
            response.close()
            response.release_conn()
    except RemoteError:
        raise
    except Exception as exc:
        raise refused(exc, "read from") from exc
    try:
        client.remove_object(bucket, probe)
    except Exception as exc:
        raise refused(exc, "delete in", f"; the test object s3://{bucket}/{probe} is left") from exc
    return StoreCheck(
        backend.uri,
        f"{where}: bucket present, credentials accepted, list/write/read/delete allowed",
    )


def _check_folder(folder: Path) -> StoreCheck:
    folder = folder.expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"model store {folder} is a file, not a folder")
    probe = folder / f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as out:
            out.write(b"cifarflow store check\n")
            out.flush()
            os.fsync(out.fileno())
        probe.unlink()
    except OSError as exc:
        disk = storage_error(exc, folder)
        if disk is not None:
            raise disk from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise BadInputError(
                f"cannot write to the model store folder {folder}: {exc.strerror}"
            ) from exc
        raise BadInputError(
            f"cannot use {folder} as the model store: {exc.strerror or exc}"
        ) from exc
    return StoreCheck(str(folder), f"{folder}: folder present and writable")
