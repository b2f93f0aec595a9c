"""The compiled pipeline: it parses back into kfp's PipelineSpec with every step and setting."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from cifarflow import __version__
from cifarflow.cli.main import build_parser, main
from cifarflow.defaults import CLUSTER_STORE
from cifarflow.images import cpu_image, gpu_image
from cifarflow.pipelines.parameters import DEFAULTS, PipelineParameters


def _compile(path, *flags):
    assert main(["compile", "-o", str(path), *flags]) == 0
    documents = list(yaml.safe_load_all(path.read_text()))
    spec = json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
    platform = documents[1] if len(documents) > 1 else {}
    return spec, platform


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:  # the release defaults, whatever this shell exports
        env.delenv("CIFARFLOW_IMAGE_REPOSITORY", raising=False)
        env.delenv("CIFARFLOW_IMAGE_TAG", raising=False)
        return _compile(
            tmp_path_factory.mktemp("compiled") / "pipeline.yaml",
            "--gpu-node-selector",
            "accelerator=nvidia-l4",
            "--trial-parallelism",
            "4",
        )


@pytest.fixture(scope="module")
def retargeted(tmp_path_factory):
    """Compiled for one's own registry, a private one, and a per-run artifact root."""
    return _compile(
        tmp_path_factory.mktemp("retargeted") / "pipeline.yaml",
        "--image-repository",
        "registry.example.com/team/cifarflow",
        "--image-tag",
        "3f2c1ab",
        "--image-pull-secret",
        "regcred",
        "--image-pull-secret",
        "mirror-cred",
        "--pipeline-root",
        "minio://mlpipeline/private-artifacts/team-a/cifarflow",
    )


def _executor_images(spec) -> dict[str, str]:
    return {
        name: executor["container"]["image"]
        for name, executor in spec.deployment_spec["executors"].items()
    }


def _all_tasks(spec):
    tasks = {}
    for component in [spec.root, *spec.components.values()]:
        if component.HasField("dag"):
            tasks.update(component.dag.tasks)
    return tasks


def test_every_step_and_the_loop(compiled):
    spec, _ = compiled
    assert spec.pipeline_info.name == "cifarflow"
    tasks = _all_tasks(spec)
    for step in (
        "check-store",
        "ingest",
        "preprocess",
        "eda",
        "expand-grid",
        "train",
        "evaluate",
        "select-best",
        "publish",
        "record-status",
    ):
        assert any(name.startswith(step) for name in tasks), step
    loops = [t for t in tasks.values() if t.WhichOneof("iterator") == "parameter_iterator"]
    assert len(loops) == 1 and loops[0].iterator_policy.parallelism_limit == 4
    exit_tasks = [
        n
        for n, t in tasks.items()
        if t.trigger_policy.strategy
        == pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.ALL_UPSTREAM_TASKS_COMPLETED
    ]
    assert exit_tasks == ["record-status-component"]


def test_pipeline_parameters(compiled):
    spec, _ = compiled
    params = spec.root.input_definitions.parameters
    assert set(params) == {
        "source",
        "expected_md5",
        "grid",
        "val_fraction",
        "seed",
        "model_name",
        "store",
        "gate_metric",
        "alpha",
        "force_publish",
        "gate_fraction",
    }
    assert params["source"].default_value.string_value == "sample"
    assert params["grid"].default_value.string_value == "quick"


def test_the_compiled_defaults_are_the_run_and_submit_flags_defaults(compiled):
    spec, _ = compiled
    compiled_defaults = {
        name: json_format.MessageToDict(parameter.default_value)
        for name, parameter in spec.root.input_definitions.parameters.items()
    }
    assert set(compiled_defaults) == {f.name for f in dataclasses.fields(PipelineParameters)}
    for command in (["run"], ["submit", "--host", "http://kfp.invalid"]):
        flags = vars(build_parser().parse_args(command))
        # The CLI picks these two per run: the store by where it runs, the metric from the grid.
        assert flags["store"] is None and flags["gate_metric"] is None
        cli_defaults = {"grid": flags["config"], "store": CLUSTER_STORE}
        cli_defaults |= {
            name: flags[name] for name in compiled_defaults if name not in ("grid", "store")
        }
        cli_defaults["gate_metric"] = DEFAULTS.gate_metric
        assert compiled_defaults == cli_defaults, command[0]


def test_gpu_request_images_and_resources(compiled):
    spec, _ = compiled
    executors = spec.deployment_spec["executors"]
    train = next(v for k, v in executors.items() if k.startswith("exec-train"))["container"]
    assert train["image"] == gpu_image()
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    for name, executor in executors.items():
        container = executor["container"]
        if not name.startswith("exec-train"):
            assert container["image"] == cpu_image(), name
        assert (
            "resourceMemoryLimit" in container["resources"]
            and "resourceCpuLimit" in container["resources"]
        ), name
        assert ":latest" not in container["image"]


def test_caching_and_retries(compiled):
    spec, _ = compiled
    tasks = _all_tasks(spec)
    for name in ("ingest-component", "preprocess-component", "eda-component"):
        assert tasks[name].caching_options.enable_cache, name
    # The store check and the exit handler describe this run: never from a cache.
    for name in (
        "check-store-component",
        "expand-grid-component",
        "select-best-component",
        "publish-component",
        "record-status-component",
    ):
        assert not tasks[name].caching_options.enable_cache, name
    assert tasks["train-component"].retry_policy.max_retry_count == 2


def test_kubernetes_platform_settings(compiled):
    _, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = executors["exec-train-component"]
    assert train["nodeSelector"]["labels"] == {"accelerator": "nvidia-l4"}
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu"
    publish = executors["exec-publish-component"]
    (secret,) = publish["secretAsEnv"]
    assert secret["secretName"] == "cifarflow-model-store"
    # references only: a key name in the Secret, never a value
    assert secret["keyToEnv"] == [
        {"envVar": "S3_ACCESS_KEY", "secretKey": "accesskey"},
        {"envVar": "S3_SECRET_KEY", "secretKey": "secretkey"},
    ]
    assert publish["configMapAsEnv"][0]["configMapName"] == "cifarflow-pipeline-settings"


def test_compile_rejects_bad_options(tmp_path, capsys):
    assert main(["compile", "-o", str(tmp_path / "p.yaml"), "--trial-parallelism", "-1"]) == 2
    assert "--trial-parallelism must be >= 0" in capsys.readouterr().err


def test_the_store_is_checked_before_data_and_training(compiled):
    spec, _ = compiled
    tasks = _all_tasks(spec)
    assert "check-store-component" in tasks["ingest-component"].dependent_tasks
    assert "check-store-component" in tasks["expand-grid-component"].dependent_tasks
    check = tasks["check-store-component"]
    assert not check.dependent_tasks
    assert set(check.inputs.parameters) == {"store", "model_name"}


def test_store_settings_are_optional_so_a_missing_one_fails_the_check_not_the_pod(compiled):
    _, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in (
        "exec-check-store-component",
        "exec-select-best-component",
        "exec-publish-component",
    ):
        assert executors[name]["configMapAsEnv"][0]["optional"] is True, name
        assert executors[name]["secretAsEnv"][0]["optional"] is True, name


def test_train_fits_a_four_cpu_sixteen_gib_gpu_node(compiled):
    spec, _ = compiled
    train = next(
        v for k, v in spec.deployment_spec["executors"].items() if k.startswith("exec-train")
    )["container"]
    resources = train["resources"]
    assert float(resources["resourceCpuRequest"]) <= 3 and float(resources["resourceCpuLimit"]) <= 4
    assert (
        resources["resourceMemoryRequest"] in ("12G", "12Gi")
        or _gib(resources["resourceMemoryRequest"]) <= 12
    )
    assert _gib(resources["resourceMemoryLimit"]) <= 12


def _gib(quantity: str) -> float:
    units = {"Gi": 1.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "M": 1e6 / 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**30


def test_default_images_without_flags_or_environment(compiled):
    spec, _ = compiled
    images = _executor_images(spec)
    assert (
        images.pop("exec-train-component") == "ghcr.io/cifarflow/cifarflow:" + __version__ + "-gpu"
    )
    assert set(images.values()) == {"ghcr.io/cifarflow/cifarflow:" + __version__}


def test_every_executor_follows_the_image_flags(retargeted):
    spec, platform = retargeted
    images = _executor_images(spec)
    assert len(images) >= 9
    assert images.pop("exec-train-component") == "registry.example.com/team/cifarflow:3f2c1ab-gpu"
    assert set(images.values()) == {"registry.example.com/team/cifarflow:3f2c1ab"}, images
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in _executor_images(spec):
        assert [s["secretName"] for s in executors[name]["imagePullSecret"]] == [
            "regcred",
            "mirror-cred",
        ], name


def test_pipeline_root_is_compiled_in(compiled, retargeted):
    assert (
        retargeted[0].default_pipeline_root
        == "minio://mlpipeline/private-artifacts/team-a/cifarflow"
    )
    assert compiled[0].default_pipeline_root == ""  # the namespace's kfp-launcher default applies


def test_environment_is_the_fallback_and_flags_win(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARFLOW_IMAGE_REPOSITORY", "env.example.com/x/cifarflow")
    monkeypatch.setenv("CIFARFLOW_IMAGE_TAG", "from-env")
    spec, _ = _compile(tmp_path / "env.yaml")
    assert set(_executor_images(spec).values()) == {
        "env.example.com/x/cifarflow:from-env",
        "env.example.com/x/cifarflow:from-env-gpu",
    }
    spec, _ = _compile(tmp_path / "flag.yaml", "--image-tag", "from-flag")
    assert set(_executor_images(spec).values()) == {
        "env.example.com/x/cifarflow:from-flag",
        "env.example.com/x/cifarflow:from-flag-gpu",
    }


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--image-repository", "registry.example.com/you/cifarflow:1.0"],
            "--image-repository takes a repository without a tag",
        ),
        (["--image-tag=.bad"], "--image-tag takes a tag"),
        (["--image-pull-secret", "Bad_Name"], "--image-pull-secret takes a Secret name"),
        (["--pipeline-root", "/local/path"], "--pipeline-root takes minio://, s3:// or gs://"),
        (["--pipeline-root", "minio://"], "--pipeline-root takes minio://, s3:// or gs://"),
    ],
)
def test_bad_image_and_root_flags_are_one_line(tmp_path, capsys, flags, message):
    assert main(["compile", "-o", str(tmp_path / "p.yaml"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "p.yaml").exists()


def test_make_builds_the_images_the_flags_name(retargeted):
    """`make image image-gpu IMAGE_REPOSITORY=R IMAGE_TAG=T` tags what `compile --image-repository R --image-tag T` runs."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFARFLOW_IMAGE_")}
    built = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-s",
            "image",
            "image-gpu",
            "IMAGE_BUILDER=echo",
            "IMAGE_REPOSITORY=registry.example.com/team/cifarflow",
            "IMAGE_TAG=3f2c1ab",
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    tags = {built[i + 1] for i, word in enumerate(built) if word == "-t"}
    assert tags == set(_executor_images(retargeted[0]).values())


def test_the_gate_gets_the_gate_split_and_the_preprocess_step_its_size(compiled):
    """select_best can re-score a champion on the run's own gate split, not trust stale predictions."""
    spec, _ = compiled
    tasks = _all_tasks(spec)
    data = tasks["select-best-component"].inputs.artifacts["data"].task_output_artifact
    assert (data.producer_task, data.output_artifact_key) == ("preprocess-component", "splits")
    gate = tasks["preprocess-component"].inputs.parameters["gate_fraction"]
    assert gate.component_input_parameter.endswith("gate_fraction")
    assert spec.root.input_definitions.parameters["gate_fraction"].default_value.number_value == 0.1
