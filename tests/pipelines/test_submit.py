"""`cifarflow submit` against a local server that speaks the KFP v2beta1 REST API."""

from __future__ import annotations

import time

import pytest

from cifarflow.cli.main import main
from cifarflow.errors import RemoteError
from cifarflow.pipelines.compiler import compile_pipeline
from cifarflow.pipelines.submit import SubmitOptions, submit
from tests.support.kfp_api_server import KfpApiServer
from tests.support.s3_server import free_port


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compile_pipeline(tmp_path_factory.mktemp("pkg") / "pipeline.yaml")


@pytest.fixture(autouse=True)
def no_kfp_context(tmp_path, monkeypatch):
    """kfp.Client saves a context file under $HOME; keep it out of the real one."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KFP_TOKEN", raising=False)


def test_creates_the_experiment_then_reuses_it(package):
    with KfpApiServer() as api:
        first = submit(
            package, {"grid": "cpu", "seed": 3}, SubmitOptions(host=api.url, experiment="nightly")
        )
        second = submit(package, {}, SubmitOptions(host=api.url, experiment="nightly"))
    assert len(api.calls("POST", "/apis/v2beta1/experiments")) == 1
    assert first.experiment_id == second.experiment_id != "None"
    runs = api.calls("POST", "/apis/v2beta1/runs")
    assert len(runs) == 2
    body = runs[0].body
    assert body["experiment_id"] == first.experiment_id
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "cifarflow"
    assert "kubernetes" in body["pipeline_spec"]["platform_spec"]["platforms"]
    assert body["runtime_config"]["parameters"] == {"grid": "cpu", "seed": 3}
    assert first.run_url.endswith(f"/#/runs/details/{first.run_id}")


def test_wait_reports_the_final_state(package):
    with KfpApiServer() as api:
        api.run_states = ["RUNNING", "SUCCEEDED"]
        result = submit(package, {}, SubmitOptions(host=api.url, wait=True))
    assert result.state == "SUCCEEDED"


def test_token_from_the_environment_is_sent_as_bearer(package, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "s3cr3t-token")
    with KfpApiServer(required_token="s3cr3t-token") as api:
        submit(package, {}, SubmitOptions(host=api.url, service_account="cifarflow-pipeline"))
    assert all(r.headers.get("authorization") == "Bearer s3cr3t-token" for r in api.requests)
    assert (
        api.calls("POST", "/apis/v2beta1/runs")[0].body["service_account"] == "cifarflow-pipeline"
    )


def test_wrong_token_is_one_clear_error(package, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("wrong\n")
    with KfpApiServer(required_token="right") as api:
        with pytest.raises(RemoteError, match="refused the credentials"):
            submit(package, {}, SubmitOptions(host=api.url, token_file=str(token_file)))
        assert not api.calls("POST", "/apis/v2beta1/runs")


def test_unreachable_host_fails_fast(package):
    started = time.monotonic()
    with pytest.raises(RemoteError, match="cannot reach the Kubeflow Pipelines API"):
        submit(package, {}, SubmitOptions(host=f"http://127.0.0.1:{free_port()}"))
    assert time.monotonic() - started < 10  # not kfp.Client's 25 s of health-check retries


def test_cli_compiles_submits_and_waits(capsys):
    with KfpApiServer() as api:
        code = main(
            [
                "submit",
                "--host",
                api.url,
                "--config",
                "cpu",
                "--experiment",
                "cli",
                "--wait",
                "--seed",
                "7",
            ]
        )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "finished: SUCCEEDED" in out
    params = api.calls("POST", "/apis/v2beta1/runs")[0].body["runtime_config"]["parameters"]
    assert (
        params["grid"] == "cpu"
        and params["seed"] == 7
        and params["store"] == "s3://cifarflow/models"
    )


def test_cli_failed_run_exits_non_zero(capsys):
    with KfpApiServer() as api:
        api.run_states = ["RUNNING", "FAILED"]
        code = main(["submit", "--host", api.url, "--wait"])
    assert code == RemoteError.exit_code
    assert "ended FAILED" in capsys.readouterr().err


def test_cli_unknown_grid_is_a_bad_input(capsys):
    assert main(["submit", "--host", "http://127.0.0.1:1", "--config", "no-such-grid"]) == 2
    assert "unknown grid 'no-such-grid'" in capsys.readouterr().err


def test_cli_passes_the_pipeline_root_and_image_flags(capsys):
    with KfpApiServer() as api:
        code = main(
            [
                "submit",
                "--host",
                api.url,
                "--namespace",
                "team-a",
                "--pipeline-root",
                "minio://mlpipeline/private-artifacts/team-a/cifarflow",
                "--image-repository",
                "registry.example.com/team/cifarflow",
                "--image-tag",
                "3f2c1ab",
                "--image-pull-secret",
                "regcred",
            ]
        )
    assert code == 0
    assert "warning" not in capsys.readouterr().err
    body = api.calls("POST", "/apis/v2beta1/runs")[0].body
    assert (
        body["runtime_config"]["pipeline_root"]
        == "minio://mlpipeline/private-artifacts/team-a/cifarflow"
    )
    executors = body["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {
        "registry.example.com/team/cifarflow:3f2c1ab",
        "registry.example.com/team/cifarflow:3f2c1ab-gpu",
    }
    platform = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]
    assert all(p["imagePullSecret"][0]["secretName"] == "regcred" for p in platform.values())


def test_pipeline_root_applies_to_a_compiled_package_too(package):
    with KfpApiServer() as api:
        submit(package, {}, SubmitOptions(host=api.url, pipeline_root="s3://artifacts/cifarflow"))
        submit(package, {}, SubmitOptions(host=api.url))
    first, second = (c.body["runtime_config"] for c in api.calls("POST", "/apis/v2beta1/runs"))
    assert first["pipeline_root"] == "s3://artifacts/cifarflow"
    assert not second.get("pipeline_root")  # the namespace's default


def test_cli_refuses_compile_flags_with_a_compiled_package(package, capsys):
    code = main(
        ["submit", "--host", "http://127.0.0.1:1", "--package", str(package), "--image-tag", "abc"]
    )
    assert code == 2
    assert (
        "--image-tag set what is compiled; --package is compiled already" in capsys.readouterr().err
    )


def test_multi_user_root_outside_the_namespace_prefix_is_warned():
    from cifarflow.pipelines.submit import pipeline_root_warning

    assert "private-artifacts/team-a/" in pipeline_root_warning(
        "minio://mlpipeline/v2/artifacts/cifarflow", "team-a"
    )
    assert pipeline_root_warning("minio://mlpipeline/private-artifacts/team-b/x", "team-a")
    for allowed in (
        "minio://mlpipeline/private-artifacts/team-a/v2/artifacts",
        "minio://mlpipeline/shared/cifarflow",
        "minio://mlpipeline/artifacts/x",
        "minio://mlpipeline/private/team-a/x",
    ):
        assert pipeline_root_warning(allowed, "team-a") is None, allowed
    assert (
        pipeline_root_warning("s3://my-bucket/anything", "team-a") is None
    )  # not KFP's bucket: not judged
    assert pipeline_root_warning("minio://mlpipeline/v2/artifacts", None) is None  # standalone
