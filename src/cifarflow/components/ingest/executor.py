"""Ingest: fetch the CIFAR-100 archive, verify it, extract it safely.

Sources: the official URL (or any http(s) URL), a local `.tar.gz`, an
`s3://bucket/key` object, or the keyword `sample` for the small real sample
shipped with the package. The output folder holds the extracted
`cifar-100-python/{train,test,meta}` and `ingest.json` describing what was
verified; `ingest.json` is written last, so a folder without it is incomplete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, cast

from cifarflow.atomic_files import write_json_atomic
from cifarflow.components.ingest import download
from cifarflow.data import official
from cifarflow.data.safe_tar import extract_members
from cifarflow.data.sample import SAMPLE_ARCHIVE, SAMPLE_MD5, SAMPLE_SOURCE
from cifarflow.errors import BadInputError, IntegrityError
from cifarflow.s3 import S3Location, S3Settings, is_s3_uri

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IngestResult:
    """What `ingest` produced and how it was verified."""

    out_dir: Path
    source: str
    archive_md5: str | None
    member_md5: dict[str, str]
    verified_by: str  # "published member md5s" or "expected archive md5"

    @property
    def data_dir(self) -> Path:
        return self.out_dir / official.ARCHIVE_DIR

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "archive_md5": self.archive_md5,
            "member_md5": self.member_md5,
            "verified_by": self.verified_by,
        }


def default_cache_dir() -> Path:
    env = os.environ.get("CIFARFLOW_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "cifarflow" / "downloads"


def ingest(
    source: str,
    out_dir: str | os.PathLike,
    expected_md5: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    s3: S3Settings | None = None,
) -> IngestResult:
    """Fetches, verifies and extracts a CIFAR-100 python archive.

    Args:
        source: `sample`, an http(s) URL, a local file path, or `s3://bucket/key`.
        out_dir: folder to write `cifar-100-python/` and `ingest.json` into.
        expected_md5: whole-file md5 of the archive. When given, it replaces the
            per-member check against the published md5s (for your own archives).
        cache_dir: where downloads are kept and resumed (default
            `$CIFARFLOW_CACHE_DIR` or `~/.cache/cifarflow/downloads`).
        s3: endpoint and credentials for `s3://` sources (default: from `S3_*`).

    Returns:
        An IngestResult; `result.data_dir` holds train, test and meta.

    Raises:
        BadInputError: the source does not exist or the md5 is malformed.
        IntegrityError: checksum mismatch, truncated, corrupt or unsafe archive.
        RemoteError: the download failed after retries.
    """
    if expected_md5 is not None:
        expected_md5 = _check_md5(expected_md5)
    if source == SAMPLE_SOURCE:
        archive, expected_md5 = SAMPLE_ARCHIVE, expected_md5 or SAMPLE_MD5
        return _extract_verified(archive, source, Path(out_dir), expected_md5)
    if source.startswith(("http://", "https://")):
        opener = download.http_opener(source)
        return _fetch_then_extract(opener, source, Path(out_dir), expected_md5, cache_dir)
    if is_s3_uri(source):
        location = S3Location.parse(source)
        if not location.key:
            raise BadInputError(f"{source} names a bucket, not an archive object")
        opener = download.s3_opener(location, s3 or S3Settings.from_env())
        return _fetch_then_extract(opener, source, Path(out_dir), expected_md5, cache_dir)
    path = Path(source)
    if not path.is_file():
        raise BadInputError(
            f"source {source!r} is not a file, an http(s) URL, s3://bucket/key or 'sample'"
        )
    return _extract_verified(path, source, Path(out_dir), expected_md5)


def _check_md5(value: str) -> str:
    value = value.strip().lower()
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        raise BadInputError(f"--expected-md5 must be 32 hex digits, got {value!r}")
    return value


def _cache_path(source: str, cache_dir: str | os.PathLike | None) -> Path:
    base = Path(cache_dir) if cache_dir else default_cache_dir()
    name = source.rstrip("/").rsplit("/", 1)[-1] or "archive.tar.gz"
    tag = hashlib.sha1(source.encode()).hexdigest()[:10]
    return base / f"{tag}-{name}"


def _fetch_then_extract(
    opener: download.Opener,
    source: str,
    out_dir: Path,
    expected_md5: str | None,
    cache_dir: str | os.PathLike | None,
) -> IngestResult:
    cached = _cache_path(source, cache_dir)
    if cached.is_file():
        log.info("using verified download %s", cached)
        return _extract_verified(cached, source, out_dir, expected_md5)
    part = download.fetch_resumable(opener, cached, label=f"download {source}")
    try:
        result = _extract_verified(part, source, out_dir, expected_md5)
    except IntegrityError as exc:
        part.unlink(missing_ok=True)  # resuming a corrupt file would never heal it
        raise IntegrityError(
            f"{exc} (the downloaded file was removed; run again to download afresh)"
        ) from None
    os.replace(part, cached)
    return result


class _HashingReader:
    """A read-only file wrapper that md5s every byte read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.md5 = hashlib.md5()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.md5.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _extract_verified(
    archive: Path, source: str, out_dir: Path, expected_md5: str | None
) -> IngestResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = {f"{official.ARCHIVE_DIR}/{name}": name for name in official.MEMBERS}
    staging = Path(tempfile.mkdtemp(prefix=".ingest-", dir=out_dir))
    try:
        with open(archive, "rb") as raw:
            reader = _HashingReader(raw)
            # tarfile reads the stream through `read` only, which is all the reader has.
            stream = cast(BinaryIO, reader)
            members = extract_members(stream, wanted, staging, archive_name=str(archive))
            reader.drain()  # tar stops at its end marker; the md5 covers the whole file
        archive_md5 = reader.md5.hexdigest()
        member_md5 = {wanted[name]: m.md5 for name, m in members.items()}
        if expected_md5 is not None:
            if archive_md5 != expected_md5:
                raise IntegrityError(
                    f"{archive}: md5 {archive_md5} does not match the expected {expected_md5}"
                )
            verified_by = "expected archive md5"
        else:
            for name, md5 in member_md5.items():
                if md5 != official.MEMBER_MD5[name]:
                    raise IntegrityError(
                        f"{archive}: member {official.ARCHIVE_DIR}/{name} has md5 {md5}, "
                        f"not the published {official.MEMBER_MD5[name]} (pass --expected-md5 for your own archive)"
                    )
            verified_by = "published member md5s"
        _move_into_place(staging / official.ARCHIVE_DIR, out_dir / official.ARCHIVE_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = IngestResult(out_dir, source, archive_md5, member_md5, verified_by)
    write_json_atomic(out_dir / official.INGEST_RECORD, result.to_json())
    log.info("%s verified (%s) -> %s", source, verified_by, result.data_dir)
    return result


def _move_into_place(new: Path, final: Path) -> None:
    """Swaps `new` in for `final` so a reader never sees a mix of two ingests."""
    (final.parent / official.INGEST_RECORD).unlink(missing_ok=True)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, final)
