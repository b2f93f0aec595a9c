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
        first = submit(package, {"grid": "cpu", "seed": 3}, SubmitOptions(host=api.url, experiment="nightly"))
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
    assert api.calls("POST", "/apis/v2beta1/runs")[0].body["service_account"] == "cifarflow-pipeline"


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
        code = main(["submit", "--host", api.url, "--config", "cpu", "--experiment", "cli", "--wait", "--seed", "7"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "finished: SUCCEEDED" in out
    params = api.calls("POST", "/apis/v2beta1/runs")[0].body["runtime_config"]["parameters"]
    assert params["grid"] == "cpu" and params["seed"] == 7 and params["store"] == "s3://cifarflow/models"


def test_cli_failed_run_exits_non_zero(capsys):
    with KfpApiServer() as api:
        api.run_states = ["RUNNING", "FAILED"]
        code = main(["submit", "--host", api.url, "--wait"])
    assert code == RemoteError.exit_code
    assert "ended FAILED" in capsys.readouterr().err


def test_cli_unknown_grid_is_a_bad_input(capsys):
    assert main(["submit", "--host", "http://127.0.0.1:1", "--config", "no-such-grid"]) == 2
    assert "unknown grid 'no-such-grid'" in capsys.readouterr().err

