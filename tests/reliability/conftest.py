"""Fixtures for the fault tests: a private S3 server to stop, a small disk to fill.

The serving fixtures (the exported test models, real CIFAR images) are the
ones tests/serving/conftest.py defines, imported so pytest finds them here.
"""

from __future__ import annotations

import subprocess
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
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)

