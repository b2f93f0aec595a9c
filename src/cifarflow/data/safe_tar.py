"""Streaming, verifying, path-safe extraction of tar archives.

Archives from the internet or a bucket are untrusted. `extract_members`
reads the archive once, front to back, and for every member refuses absolute
paths, `..` components, links, devices and FIFOs before anything is written,
and a file name that appears twice (the second copy would silently replace
the first).
Only the members asked for are written, each hashed (md5) while it streams to
disk, so verification costs no second read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from cifarflow.errors import IntegrityError, storage_error

_CHUNK = 4 * 1024 * 1024
# No CIFAR member comes close; a bigger one is a decompression bomb or not our archive.
MAX_MEMBER_BYTES = 1 << 30


class UnsafeArchiveError(IntegrityError):
    """A member would write outside the target folder or is not a plain file."""


@dataclasses.dataclass(frozen=True)
class ExtractedMember:
    name: str
    path: Path
    size: int
    md5: str


def check_member(member: tarfile.TarInfo) -> None:
    """Raises UnsafeArchiveError unless `member` is a plain file or folder inside the target."""
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    parts = posixpath.normpath(name.replace("\\", "/")).split("/")
    if ".." in name.replace("\\", "/").split("/") or ".." in parts:
        raise UnsafeArchiveError(f"archive member {name!r} points outside the target folder ('..')")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"archive member {name!r} is a link (to {member.linkname!r})")
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise UnsafeArchiveError(f"archive member {name!r} is a device or FIFO")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive member {name!r} has unsupported type {member.type!r}")
    if member.isfile() and member.size > MAX_MEMBER_BYTES:
        raise UnsafeArchiveError(
            f"archive member {name!r} is {member.size} bytes, over the {MAX_MEMBER_BYTES} limit"
        )


def extract_members(
    fileobj: BinaryIO,
    wanted: Iterable[str],
    target: Path,
    archive_name: str,
) -> dict[str, ExtractedMember]:
    """Streams a .tar.gz and writes the `wanted` members into `target`.

    Args:
        fileobj: the compressed archive, read sequentially once.
        wanted: member names (as stored in the archive) to extract.
        target: existing folder; members keep their archive-relative paths.
        archive_name: shown in error messages.

    Returns:
        The extracted members by archive name, with sizes and md5s.

    Raises:
        UnsafeArchiveError: any member (wanted or not) is unsafe.
        IntegrityError: the archive is truncated or corrupt, or a wanted member is missing.
    """
    wanted = set(wanted)
    found: dict[str, ExtractedMember] = {}
    files_seen: set[str] = set()
    try:
        with tarfile.open(fileobj=fileobj, mode="r|gz") as tar:
            for member in tar:
                check_member(member)
                if member.isfile():
                    path = posixpath.normpath(member.name.replace("\\", "/"))
                    if path in files_seen:
                        raise UnsafeArchiveError(f"archive member {member.name!r} appears twice")
                    files_seen.add(path)
                if member.name not in wanted or not member.isfile():
                    continue
                found[member.name] = _write_member(tar, member, target)
    except (tarfile.ReadError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, IntegrityError):
            raise
        raise IntegrityError(f"{archive_name} is truncated or corrupt: {exc}") from None
    missing = sorted(wanted - found.keys())
    if missing:
        raise IntegrityError(f"{archive_name} lacks {', '.join(missing)}")
    return found


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> ExtractedMember:
    path = target.joinpath(*member.name.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    if source is None:  # the caller passes regular files only; a link has no bytes
        raise UnsafeArchiveError(f"{member.name} is not a regular file")
    digest = hashlib.md5()
    size = 0
    try:
        with open(path, "wb") as out:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except OSError as exc:
        # A full disk is not a corrupt archive (reading a corrupt one raises OSErrors without a disk errno).
        full = storage_error(exc, path)
        if full is None:
            raise
        raise full from None
    if size != member.size:
        raise IntegrityError(f"{member.name}: archive ended after {size} of {member.size} bytes")
    os.chmod(path, 0o644)
    return ExtractedMember(member.name, path, size, digest.hexdigest())
