"""Path-safe tar extraction against crafted archives."""

from __future__ import annotations

import io
import tarfile

import pytest

from cifarflow.data.safe_tar import UnsafeArchiveError, extract_members
from cifarflow.errors import IntegrityError


def _archive(*members: tarfile.TarInfo, data: bytes = b"x" * 10) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            if member.isfile():
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)
    buffer.seek(0)
    return buffer


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    "member, message",
    [
        (_info("../escape"), "outside the target"),
        (_info("cifar-100-python/../../escape"), "outside the target"),
        (_info("/etc/cron.d/escape"), "absolute path"),
        (_info("cifar-100-python/train", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_info("cifar-100-python/train", tarfile.LNKTYPE, "/etc/passwd"), "is a link"),
        (_info("cifar-100-python/dev", tarfile.CHRTYPE), "device or FIFO"),
        (_info("cifar-100-python/fifo", tarfile.FIFOTYPE), "device or FIFO"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, member, message):
    target = tmp_path / "target"
    target.mkdir()
    archive = _archive(_info("cifar-100-python/ok"), member)
    with pytest.raises(UnsafeArchiveError, match=message):
        extract_members(archive, {"cifar-100-python/ok"}, target, "crafted.tar.gz")
    assert not (tmp_path / "escape").exists()
    assert not any(p.name in {"dev", "fifo", "train"} for p in target.rglob("*"))


def test_unwanted_safe_members_are_skipped_and_wanted_ones_hashed(tmp_path):
    archive = _archive(_info("cifar-100-python/train"), _info("cifar-100-python/file.txt~"))
    found = extract_members(archive, {"cifar-100-python/train"}, tmp_path, "a.tar.gz")
    assert (
        found["cifar-100-python/train"].md5 == "336311a016184326ddbdd61edd4eeb52"
    )  # md5 of b"x" * 10
    assert (tmp_path / "cifar-100-python" / "train").read_bytes() == b"x" * 10
    assert not (tmp_path / "cifar-100-python" / "file.txt~").exists()


def test_missing_member_is_named(tmp_path):
    archive = _archive(_info("cifar-100-python/train"))
    with pytest.raises(IntegrityError, match="a.tar.gz lacks cifar-100-python/meta"):
        extract_members(
            archive, {"cifar-100-python/train", "cifar-100-python/meta"}, tmp_path, "a.tar.gz"
        )


def test_truncated_archive_is_reported(tmp_path, sample_archive):
    data = sample_archive.read_bytes()
    with pytest.raises(IntegrityError, match="truncated or corrupt"):
        extract_members(
            io.BytesIO(data[: len(data) // 2]), {"cifar-100-python/test"}, tmp_path, "half.tar.gz"
        )
