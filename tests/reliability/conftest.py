"""Fixtures and checks for the fault tests: a private S3 server to stop, a small disk to fill.

The serving fixtures (the exported test models, real CIFAR images) are the
ones tests/serving/conftest.py defines, imported so pytest finds them here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.serving.conftest import cifar, exported_model, favour7_model  # noqa: F401  (fixtures)
from tests.support.s3_server import S3Server


@pytest.fixture
def own_s3(tmp_path) -> S3Server:
    """An S3 server of this test's own: stopping it must not break the session's shared one."""
    server = S3Server(tmp_path / "s3").start()
    yield server
    server.kill()  # its data is thrown away with tmp_path: no need for a graceful stop


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 2 MiB tmpfs mounted for this test: writes past it fail with ENOSPC, like a full volume."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("cannot mount a tmpfs to fill: no 'mount' command here")
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}"
        )
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True, timeout=30)


def fill(folder: Path, leave_bytes: int = 0) -> Path:
    """Fills the file system under `folder`, leaving about `leave_bytes` free; returns the filler file."""
    stats = os.statvfs(folder)
    filler = folder / "filler"
    with open(filler, "wb") as out:
        out.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave_bytes))
    return filler


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones included) with its sha256: equal digests, untouched folder."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def hidden_leftovers(folder: Path) -> list[str]:
    """Staging folders and partial files a failed write left behind."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*"))


def until(condition, timeout: float, what: str):
    """Waits for `condition()` to return something true, and returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not {what} within {timeout}s")


def one_error_line(capsys, verb: str) -> str:
    """The CLI's stderr: exactly one line, an expected error (not 'internal error', which means a bug)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"cifarflow {verb}: error: "), err[0]
    return err[0]
