"""Ingest from the shipped sample, local files, a local HTTP server and the real S3 server."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from cifarflow.cli.main import main
from cifarflow.components.ingest import executor
from cifarflow.components.ingest.executor import ingest
from cifarflow.data import official
from cifarflow.errors import IntegrityError, RemoteError
from cifarflow.s3 import S3Settings
from tests.support.http_server import FileServer


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def payload(sample_archive) -> bytes:
    return sample_archive.read_bytes()


def _members(out):
    return sorted(p.name for p in (out / official.ARCHIVE_DIR).iterdir())


def test_sample_is_verified_by_its_md5_and_extracted(tmp_path, sample_md5):
    result = ingest("sample", tmp_path / "raw")
    assert result.verified_by == "expected archive md5" and result.archive_md5 == sample_md5
    assert _members(tmp_path / "raw") == ["meta", "test", "train"]
    record = json.loads((tmp_path / "raw" / "ingest.json").read_text())
    assert record["member_md5"]["meta"] == official.MEMBER_MD5["meta"]


@pytest.mark.full_data
def test_full_archive_is_verified_against_the_published_md5s(tmp_path, full_archive):
    result = ingest(str(full_archive), tmp_path / "raw")
    assert result.verified_by == "published member md5s"
    assert result.member_md5 == official.MEMBER_MD5


def test_an_archive_that_is_not_official_fails_naming_the_member(tmp_path, sample_archive):
    with pytest.raises(
        IntegrityError, match=r"member cifar-100-python/train has md5 .* not the published"
    ):
        ingest(str(sample_archive), tmp_path / "raw")
    assert not (tmp_path / "raw" / "ingest.json").exists()
    assert not (tmp_path / "raw" / official.ARCHIVE_DIR).exists()


def test_expected_md5_mismatch_names_the_file(tmp_path, sample_archive):
    with pytest.raises(
        IntegrityError, match=f"{sample_archive}: md5 .* does not match the expected 0{{32}}"
    ):
        ingest(str(sample_archive), tmp_path / "raw", expected_md5="0" * 32)


def test_truncated_archive_is_a_clear_error(tmp_path, payload):
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(payload[: len(payload) // 3])
    with pytest.raises(IntegrityError, match="truncated.tar.gz is truncated or corrupt"):
        ingest(str(truncated), tmp_path / "raw", expected_md5="0" * 32)


def test_traversal_archive_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-100-python/../../evil.sh")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"boom"))
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(IntegrityError, match="outside the target"):
        ingest(str(archive), tmp_path / "out" / "raw")
    assert not list(tmp_path.rglob("evil.sh"))


def test_a_crafted_pickle_inside_a_valid_archive_stops_preprocess(tmp_path, payload):
    """Ingest checks bytes; the restricted unpickler catches the code when it is loaded."""
    import pickle

    from cifarflow.components.preprocess.executor import preprocess

    marker = tmp_path / "pwned"

    class Shell:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    members = {}
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        for m in tar:
            if m.isfile():
                members[m.name] = tar.extractfile(m).read()
    members["cifar-100-python/train"] = pickle.dumps({"data": Shell()}, protocol=2)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "crafted.tar.gz"
    archive.write_bytes(buffer.getvalue())
    ingest(str(archive), tmp_path / "raw", expected_md5=hashlib.md5(buffer.getvalue()).hexdigest())
    with pytest.raises(IntegrityError, match="refusing to unpickle"):
        preprocess(tmp_path / "raw", tmp_path / "splits")
    assert not marker.exists()


def test_reingest_replaces_the_previous_output_whole(tmp_path, sample_md5):
    ingest("sample", tmp_path / "raw")
    (tmp_path / "raw" / official.ARCHIVE_DIR / "stale").write_text("from an older run")
    ingest("sample", tmp_path / "raw")
    assert _members(tmp_path / "raw") == ["meta", "test", "train"]


# --- HTTP ---------------------------------------------------------------------------


def test_http_download_verifies_and_caches(tmp_path, cache, payload, sample_md5, capfd):
    with FileServer(payload) as server:
        ingest(server.url, tmp_path / "a", expected_md5=sample_md5, cache_dir=cache)
        ingest(server.url, tmp_path / "b", expected_md5=sample_md5, cache_dir=cache)
        assert len(server.ranges) == 1  # the second ingest used the verified download
    assert "MiB" in capfd.readouterr().err  # progress was shown
    assert [p.suffix for p in cache.iterdir()] == [".gz"]  # no .part left behind


def test_http_dropped_connection_resumes_with_a_range_request(tmp_path, cache, payload, sample_md5):
    with FileServer(payload) as server:
        server.faults.drop_after_bytes = len(payload) // 2
        server.faults.drop_requests = 1
        ingest(server.url, tmp_path / "raw", expected_md5=sample_md5, cache_dir=cache)
    assert server.ranges[0] is None
    resumed_at = int(server.ranges[1].split("=")[1].rstrip("-"))
    assert 0 < resumed_at <= len(payload) // 2
    assert _members(tmp_path / "raw") == ["meta", "test", "train"]


def test_http_server_that_ignores_range_restarts_cleanly(tmp_path, cache, payload, sample_md5):
    with FileServer(payload) as server:
        server.faults.drop_after_bytes = len(payload) // 2
        server.faults.drop_requests = 1
        server.faults.ignore_range = True
        result = ingest(server.url, tmp_path / "raw", expected_md5=sample_md5, cache_dir=cache)
    assert result.archive_md5 == sample_md5  # not the first half twice


def test_partial_file_from_a_killed_run_is_resumed(tmp_path, cache, payload, sample_md5):
    with FileServer(payload) as server:
        part = executor._cache_path(server.url, cache).with_suffix(".gz.part")
        part.parent.mkdir(parents=True)
        part.write_bytes(payload[:100_000])
        ingest(server.url, tmp_path / "raw", expected_md5=sample_md5, cache_dir=cache)
    assert server.ranges == ["bytes=100000-"]


def test_http_5xx_is_retried(tmp_path, cache, payload, sample_md5):
    with FileServer(payload) as server:
        server.faults.error_requests = 2
        ingest(server.url, tmp_path / "raw", expected_md5=sample_md5, cache_dir=cache)
    assert len(server.ranges) == 3


def test_http_404_fails_at_once(tmp_path, cache, payload):
    with FileServer(payload) as server:
        with pytest.raises(RemoteError, match="404"):
            ingest(server.url + ".missing", tmp_path / "raw", cache_dir=cache)
        assert len(server.ranges) == 1


def test_corrupted_byte_fails_and_the_bad_download_is_dropped(tmp_path, cache, payload, sample_md5):
    with FileServer(payload) as server:
        server.faults.corrupt_offset = len(payload) // 2
        with pytest.raises(IntegrityError, match="downloaded file was removed"):
            ingest(server.url, tmp_path / "raw", expected_md5=sample_md5, cache_dir=cache)
        assert not list(cache.iterdir())
        assert not (tmp_path / "raw" / "ingest.json").exists()
        server.faults.corrupt_offset = None
        ingest(
            server.url, tmp_path / "raw", expected_md5=sample_md5, cache_dir=cache
        )  # heals on re-run


def test_unreachable_host_gives_up_with_a_clear_error(cache):
    from tests.support.s3_server import free_port

    url = f"http://127.0.0.1:{free_port()}/cifar.tar.gz"
    with pytest.raises(RemoteError, match="giving up after"):
        executor.download.fetch_resumable(
            executor.download.http_opener(url),
            cache / "x.tar.gz",
            "download",
            executor.download.RetryPolicy(attempts=2, first_delay=0.01),
        )


# --- S3 -----------------------------------------------------------------------------


def test_s3_source(tmp_path, cache, s3_server, s3_bucket, sample_archive, sample_md5):
    s3_server.settings.client().fput_object(s3_bucket, "datasets/cifar.tar.gz", str(sample_archive))
    result = ingest(
        f"s3://{s3_bucket}/datasets/cifar.tar.gz",
        tmp_path / "raw",
        expected_md5=sample_md5,
        cache_dir=cache,
        s3=s3_server.settings,
    )
    assert result.archive_md5 == sample_md5
    assert _members(tmp_path / "raw") == ["meta", "test", "train"]


def test_s3_resume_from_partial(
    tmp_path, cache, s3_server, s3_bucket, sample_archive, payload, monkeypatch
):
    from minio import Minio

    offsets = []
    real_get = Minio.get_object
    monkeypatch.setattr(
        Minio,
        "get_object",
        lambda self, b, k, offset=0, **kw: (
            offsets.append(offset) or real_get(self, b, k, offset=offset, **kw)
        ),
    )
    s3_server.settings.client().fput_object(s3_bucket, "cifar.tar.gz", str(sample_archive))
    uri = f"s3://{s3_bucket}/cifar.tar.gz"
    part = executor._cache_path(uri, cache).with_suffix(".gz.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[:123_456])
    result = ingest(
        uri,
        tmp_path / "raw",
        cache_dir=cache,
        s3=s3_server.settings,
        expected_md5=hashlib.md5(payload).hexdigest(),
    )
    assert result.archive_md5 == hashlib.md5(payload).hexdigest()
    assert offsets == [123_456]


def test_s3_wrong_credentials_are_a_clear_error(
    tmp_path, cache, s3_server, s3_bucket, sample_archive
):
    s3_server.settings.client().fput_object(s3_bucket, "cifar.tar.gz", str(sample_archive))
    wrong = S3Settings(s3_server.endpoint, s3_server.access_key, "not-the-secret")
    with pytest.raises(RemoteError, match="refused the credentials"):
        ingest(f"s3://{s3_bucket}/cifar.tar.gz", tmp_path / "raw", cache_dir=cache, s3=wrong)
    assert "not-the-secret" not in str(wrong)


def test_s3_missing_object(tmp_path, cache, s3_server, s3_bucket):
    with pytest.raises(RemoteError, match="does not exist"):
        ingest(
            f"s3://{s3_bucket}/nope.tar.gz",
            tmp_path / "raw",
            cache_dir=cache,
            s3=s3_server.settings,
        )


def test_s3_source_reads_credentials_from_the_environment(
    tmp_path, cache, s3_server, s3_bucket, sample_archive, monkeypatch
):
    s3_server.settings.client().fput_object(s3_bucket, "cifar.tar.gz", str(sample_archive))
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    code = main(
        [
            "ingest",
            "--source",
            f"s3://{s3_bucket}/cifar.tar.gz",
            "--out",
            str(tmp_path / "raw"),
            "--cache-dir",
            str(cache),
            "--expected-md5",
            hashlib.md5(sample_archive.read_bytes()).hexdigest(),
        ]
    )
    assert code == 0


# --- CLI ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["--source", "/does/not/exist.tar.gz"], 2, "is not a file"),
        (["--source", "sample", "--expected-md5", "xyz"], 2, "32 hex digits"),
        (["--source", "s3://"], 2, "has no bucket"),
    ],
)
def test_cli_bad_input_is_one_line_and_an_exit_code(tmp_path, capsys, argv, code, message):
    assert main(["ingest", *argv, "--out", str(tmp_path / "raw")]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cifarflow ingest: error:") and message in err[0]


def test_cli_integrity_error_exit_code(tmp_path, capsys, sample_archive):
    assert (
        main(["ingest", "--source", str(sample_archive), "--out", str(tmp_path / "raw")])
        == IntegrityError.exit_code
    )
    assert "cifar-100-python/train" in capsys.readouterr().err
