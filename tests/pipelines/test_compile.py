"""The compiled pipeline: it parses back into kfp's PipelineSpec with every step and setting."""

from __future__ import annotations

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from cifarflow.cli.main import main
from cifarflow.images import cpu_image, gpu_image


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    assert main(["compile", "-o", str(path), "--gpu-node-selector", "accelerator=nvidia-l4", "--trial-parallelism", "4"]) == 0
    documents = list(yaml.safe_load_all(path.read_text()))
    spec = json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
    platform = documents[1] if len(documents) > 1 else {}
    return spec, platform


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
    for step in ("ingest", "preprocess", "eda", "expand-grid", "train", "evaluate", "select-best", "publish", "record-status"):
        assert any(name.startswith(step) for name in tasks), step
    loops = [t for t in tasks.values() if t.WhichOneof("iterator") == "parameter_iterator"]
    assert len(loops) == 1 and loops[0].iterator_policy.parallelism_limit == 4
    exit_tasks = [n for n, t in tasks.items() if t.trigger_policy.strategy == pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.ALL_UPSTREAM_TASKS_COMPLETED]
    assert exit_tasks == ["record-status-component"]


def test_pipeline_parameters(compiled):
    spec, _ = compiled
    params = spec.root.input_definitions.parameters
    assert set(params) == {
        "source", "expected_md5", "grid", "val_fraction", "seed", "model_name", "store", "gate_metric", "alpha", "force_publish",
    }
    assert params["source"].default_value.string_value == "sample"
    assert params["grid"].default_value.string_value == "quick"


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
        assert "resourceMemoryLimit" in container["resources"] and "resourceCpuLimit" in container["resources"], name
        assert ":latest" not in container["image"]


def test_caching_and_retries(compiled):
    spec, _ = compiled
    tasks = _all_tasks(spec)
    for name in ("ingest-component", "preprocess-component", "eda-component"):
        assert tasks[name].caching_options.enable_cache, name
    assert not tasks["publish-component"].caching_options.enable_cache
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
