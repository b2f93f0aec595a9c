"""The store check that runs before any training, against a real SeaweedFS and real folders."""

from __future__ import annotations

import dataclasses
import os

import pytest

from cifarflow.components.check_store import executor
from cifarflow.components.check_store.executor import PROBE_PREFIX, check_store
from cifarflow.errors import BadInputError, RemoteError
from cifarflow.s3 import S3Settings
from tests.support.s3_server import free_port


def _objects(s3_server, bucket):
    return [o.object_name for o in s3_server.settings.client().list_objects(bucket, recursive=True)]


def test_a_good_s3_store_passes_and_leaves_nothing_behind(s3_server, s3_bucket):
    result = check_store(f"s3://{s3_bucket}/models", "cifarflow", s3_server.settings)
    assert result.uri == f"s3://{s3_bucket}/models"
    assert "credentials accepted" in result.summary and s3_server.endpoint in result.summary
    assert _objects(s3_server, s3_bucket) == []


def test_a_missing_bucket_is_named_with_the_fix(s3_server):
    with pytest.raises(BadInputError) as caught:
        check_store("s3://no-such-bucket-here/models", "cifarflow", s3_server.settings)
    message = str(caught.value)
    assert (
        "bucket 'no-such-bucket-here' does not exist" in message
        and "mc mb" in message
        and "\n" not in message
    )


def test_wrong_credentials_are_named(s3_server, s3_bucket):
    wrong = dataclasses.replace(s3_server.settings, secret_key="not-the-secret")
    with pytest.raises(
        RemoteError,
        match=r"refused the credentials \(SignatureDoesNotMatch\).*cifarflow-model-store",
    ):
        check_store(f"s3://{s3_bucket}/models", "cifarflow", wrong)
    unknown = dataclasses.replace(s3_server.settings, access_key="nobody")
    with pytest.raises(RemoteError, match=r"refused the credentials \(InvalidAccessKeyId\)"):
        check_store(f"s3://{s3_bucket}/models", "cifarflow", unknown)


def test_a_read_only_key_is_refused_before_training(s3_server, s3_bucket):
    with pytest.raises(
        RemoteError,
        match=r"may not write to s3://.*\(AccessDenied\): publish needs list, read, write and delete",
    ):
        check_store(f"s3://{s3_bucket}/models", "cifarflow", s3_server.readonly_settings)
    assert _objects(s3_server, s3_bucket) == []


def test_an_unreachable_endpoint_is_named(monkeypatch):
    settings = S3Settings(f"127.0.0.1:{free_port()}", "key", "secret", timeout_s=2)
    with pytest.raises(
        RemoteError, match=r"cannot reach S3 at 127\.0\.0\.1:\d+ .*is S3_ENDPOINT right\?"
    ):
        check_store("s3://cifarflow/models", "cifarflow", settings)


def test_missing_s3_settings_point_to_the_configmap_and_secret(monkeypatch):
    for name in ("S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        BadInputError, match="no S3 endpoint.*ConfigMap cifarflow-pipeline-settings"
    ):
        check_store("s3://cifarflow/models")


def test_settings_come_from_the_environment_as_in_a_pod(s3_server, s3_bucket, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    assert check_store(f"s3://{s3_bucket}", "cifarflow").uri == f"s3://{s3_bucket}"


def test_a_local_store_is_created_and_written(tmp_path):
    store = tmp_path / "a" / "store"
    result = check_store(str(store), "cifarflow")
    assert result.uri == str(store) and store.is_dir()
    assert list(store.iterdir()) == []  # the probe is gone, no model folder is made


def test_a_folder_that_cannot_be_written_is_refused(tmp_path):
    if os.geteuid() == 0:  # root writes through file modes; sysfs refuses even root
        store = "/sys/cifarflow-store-check"
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        store = str(tmp_path / "ro" / "store")
    try:
        with pytest.raises(
            BadInputError,
            match=f"cannot write to the model store folder {store}: (Permission denied|Operation not permitted)",
        ):
            check_store(store, "cifarflow")
    finally:
        (tmp_path / "ro").exists() and (tmp_path / "ro").chmod(0o755)


def test_a_file_where_the_folder_should_be(tmp_path):
    (tmp_path / "store").write_text("")
    with pytest.raises(BadInputError, match="is a file, not a folder"):
        check_store(str(tmp_path / "store"), "cifarflow")


def test_bad_model_name_and_unsupported_uri():
    with pytest.raises(BadInputError, match="bad model name"):
        check_store("/tmp/x", "../escape")
    with pytest.raises(BadInputError, match="unsupported store URI"):
        check_store("gs://bucket/models", "cifarflow")


def test_probe_is_hidden_from_model_listings():
    assert PROBE_PREFIX.startswith(".")


def test_hint_names_what_the_compiled_pipeline_maps(tmp_path):
    import yaml

    from cifarflow.pipelines.compiler import compile_pipeline

    documents = list(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    names = set()
    for task in documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        names |= {source["configMapName"] for source in task.get("configMapAsEnv", [])}
        names |= {source["secretName"] for source in task.get("secretAsEnv", [])}
    assert names == {executor.SETTINGS_CONFIG_MAP, executor.STORE_SECRET}
    assert all(name in executor.KUBEFLOW_HINT for name in names)
