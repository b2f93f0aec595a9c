"""Shared fixtures: the real S3 server, the shipped sample, the full dataset."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cifarflow.data.sample import SAMPLE_ARCHIVE, SAMPLE_MD5
from tests.support.s3_server import S3Server

REPO = Path(__file__).resolve().parents[1]
FULL_ARCHIVE = REPO.parent / "shared" / "data" / "cifar-100-python.tar.gz"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """One SeaweedFS S3 server for the whole session (≈1.5 s to start)."""
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.settings.client().make_bucket(name)
    return name


@pytest.fixture(scope="session")
def sample_archive() -> Path:
    assert SAMPLE_ARCHIVE.is_file(), "the shipped sample archive is missing"
    return SAMPLE_ARCHIVE


@pytest.fixture(scope="session")
def sample_md5() -> str:
    return SAMPLE_MD5


@pytest.fixture(scope="session")
def full_archive() -> Path:
    if not FULL_ARCHIVE.is_file():
        pytest.skip(
            f"full CIFAR-100 archive not found at {FULL_ARCHIVE} (the shared/ folder is absent)"
        )
    return FULL_ARCHIVE
