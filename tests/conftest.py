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


# These assert wall-clock limits, thread counts or fault timings that hold only
# on an otherwise quiet machine; `make test` runs them alone, after the rest has
# run on two xdist workers. A new test with such an assertion belongs here.
ALONE = (
    "reliability/",  # kills, stops and fills under traffic, with recovery deadlines
    "serving/test_backend_sharing.py",  # a shared call answers within 0.8 s
    "serving/test_slow_clients.py",  # thread counts under 3,000 trickling connections
    "serving/test_web_page",  # a browser: waits on its animation frames
    "security/test_url_fetch.py",  # time limits on slow servers
    "security/test_request_parsing.py",  # parse-time limits
    "security/test_image_properties.py",  # decode-time limits
    "security/test_hostile_files.py",  # load-time limits, hypothesis deadlines
    "bench/test_load.py",  # open-loop pacing and p99 latency
)
TESTS_ROOT = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.resolve().relative_to(TESTS_ROOT).as_posix().startswith(ALONE):
            item.add_marker(pytest.mark.alone)
