"""`cifarflow serve model` under TensorFlow Serving's flags and config files, with TF Serving's rules.

The servers here are built from the command line (`cifarflow serve model
--model_config_file=...`, parsed by the real CLI parser) and answer over real
gRPC channels and real HTTP. The rules checked are TF Serving's own
(tensorflow_serving/model_servers/server_core.cc at tag 2.20.0; docs/serving.md
lists each with its line): labels may name only loaded versions unless
--allow_version_labels_for_unavailable_models, a label already assigned moves
only to a loaded version, a refused reload leaves the old config serving,
model_version_policy picks the versions, and the model-status endpoint
ignores labels.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cifarflow.cli.main import build_parser, main
from cifarflow.cli.serve import model_server_config
from cifarflow.serving.model_server.server import ModelServer, ModelServerConfig
from cifarflow.serving.model_server.tf_serving_config import ServerStartError
from cifarflow.serving.store import publish_model
from tests.support.processes import cifarflow_command
from tests.support.waiting import wait_until

AVAILABLE, END = 30, 50
FAVOURED = 7  # the class version 2 answers for every image


@pytest.fixture(scope="module")
def base_path(exported_model, favour7_model, tmp_path_factory) -> Path:
    """A model folder as the sync leaves it: versions 1 (seed 0), 2 (always class 7), 3 (seed 0)."""
    store = tmp_path_factory.mktemp("tfs-store")
    for model in (exported_model, favour7_model, exported_model):
        publish_model(model, store, "cifar", {})
    return store / "cifar"


def model_config(
    base_path: Path | str,
    policy: str = "",
    labels: dict[str, int] | None = None,
    name: str = "cifar",
    platform: str = 'model_platform: "tensorflow"',
) -> str:
    lines = [f'name: "{name}"', f'base_path: "{base_path}"', platform]
    if policy:
        lines.append(f"model_version_policy {{ {policy} }}")
    lines += [f'version_labels {{ key: "{k}" value: {v} }}' for k, v in (labels or {}).items()]
    return "model_config_list { config { " + " ".join(lines) + " } }\n"


def write(path: Path, text: str) -> Path:
    # Written aside and renamed, the way a ConfigMap update lands: a poll never reads half a file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def server_config(*flags: str) -> ModelServerConfig:
    """What `cifarflow serve model <flags>` runs, on loopback and free ports."""
    args = build_parser().parse_args(
        ["serve", "model", "--host", "127.0.0.1", "--grpc-port", "0", "--rest-port", "0", *flags]
    )
    return model_server_config(args)


@contextlib.contextmanager
def running(*flags: str) -> Iterator[ModelServer]:
    server = ModelServer(server_config(*flags)).start()
    try:
        yield server
    finally:
        server.stop()


def png() -> bytes:
    return tf.io.encode_png(np.full((32, 32, 3), 90, np.uint8)).numpy()


def predict(port: int, *, label: str = "", version: int = 0) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "cifar"
    if label:
        request.model_spec.version_label = label
    elif version:
        request.model_spec.version.value = version
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([png()]))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30
        )


def statuses(port: int, label: str = "") -> list[tuple[int, int]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "cifar"
    if label:
        request.model_spec.version_label = label
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, timeout=10
        )
    return [(s.version, s.state) for s in response.model_version_status]


# -- bad flags and files: one line, no server ---------------------------------------------------------


BAD_CONFIGS = {
    "syntax": (
        'model_config_list { config { name: "cifar" ',
        "INVALID_ARGUMENT: Invalid protobuf file",
    ),
    "unknown-field": (
        'model_config_list { config { name: "cifar" base_path: "/m" model_platform: "tensorflow" versions: 1 } }',
        'has no field named "versions"',
    ),
    "relative-base-path": (
        model_config("models/cifar"),
        "INVALID_ARGUMENT: Expected model cifar to have an absolute path or URI; got base_path()=models/cifar",
    ),
    "listed-twice": (
        "model_config_list { " + model_config("/m").split("{", 1)[1].rsplit("}", 1)[0] * 2 + " }",
        "Illegal to list model cifar multiple times in config list",
    ),
    "unsupported-platform": (
        model_config("/m", platform='model_platform: "pytorch"'),
        "Model cifar requests unsupported platform pytorch",
    ),
    "no-platform": (
        model_config("/m", platform=""),
        "Illegal setting neither ModelServerConfig::model_type",
    ),
    "two-models": (
        "model_config_list { "
        + model_config("/a").split("{", 1)[1].rsplit("}", 1)[0]
        + model_config("/b", name="other").split("{", 1)[1].rsplit("}", 1)[0]
        + " }",
        "lists 2 models; cifarflow serve model serves exactly one",
    ),
    "uri-base-path": (model_config("s3://bucket/cifar"), "is a URI"),
}


@pytest.mark.parametrize("text, message", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_a_bad_model_config_refuses_to_start_with_one_line(tmp_path, capsys, text, message):
    config = write(tmp_path / "models.config", text)
    assert (
        main(
            [
                "serve",
                "model",
                f"--model_config_file={config}",
                "--port=8500",
                "--rest_api_port=8501",
            ]
        )
        == 255
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cifarflow serve: error: Failed to start server. Error: ")
    assert message in err


@pytest.mark.parametrize(
    "files, flags, message",
    [
        (
            {},
            ["--model_config_file={d}/missing.config"],
            "NOT_FOUND: {d}/missing.config; No such file or directory",
        ),
        (
            {"b.config": "max_batch_size { value: 8 }"},
            ["--batching_parameters_file={d}/b.config"],
            "INVALID_ARGUMENT: server_options.batching_parameters_file is set without setting server_options.enable_batching to true.",
        ),
        (
            {"b.config": "max_batch_size: 8"},
            ["--enable_batching", "--batching_parameters_file={d}/b.config"],
            "INVALID_ARGUMENT: Invalid protobuf file: '{d}/b.config'",
        ),
        (
            {"b.config": "num_batch_threads { value: 0 }"},
            ["--enable_batching=true", "--batching_parameters_file={d}/b.config"],
            "num_batch_threads must be 1 or more",
        ),
        (
            {"m.config": "prometheus_config { enable: true path: '/m' port: 9 }"},
            ["--monitoring_config_file={d}/m.config"],
            'has no field named "port"',
        ),
        (
            {},
            ["--port=0"],
            "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set.",
        ),
    ],
    ids=[
        "missing-config",
        "batching-file-without-batching",
        "bad-batching-file",
        "zero-batch-threads",
        "bad-monitoring-file",
        "grpc-port-zero",
    ],
)
def test_bad_tf_serving_flags_and_files_refuse_to_start(
    base_path, tmp_path, capsys, files, flags, message
):
    for name, text in files.items():
        write(tmp_path / name, text)
    config = write(tmp_path / "models.config", model_config(base_path))
    flags = [f.format(d=tmp_path) for f in flags]
    if not any(f.startswith("--model_config_file") for f in flags):
        flags.append(f"--model_config_file={config}")
    assert main(["serve", "model", *flags]) == 255
    err = capsys.readouterr().err
    assert (
        err.startswith("cifarflow serve: error: Failed to start server. Error: ")
        and message.format(d=tmp_path) in err
    )


def test_booleans_take_tensorflows_forms_only(base_path, tmp_path, capsys):
    config = write(tmp_path / "models.config", model_config(base_path))
    for value, expected in (("", True), ("=true", True), ("=false", False)):
        parsed = server_config(
            f"--model_config_file={config}",
            f"--allow_version_labels_for_unavailable_models{value}",
            f"--enable_batching{value}",
        )
        assert (
            parsed.tf_serving.allow_version_labels_for_unavailable_models is expected
            and parsed.batching is expected
        )
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(
            ["serve", "model", f"--model_config_file={config}", "--enable_batching=yes"]
        )
    assert exit_info.value.code == 2
    assert "Couldn't interpret value =yes" in capsys.readouterr().err


def test_the_two_ways_in_do_not_mix(base_path, tmp_path, capsys):
    config = write(tmp_path / "models.config", model_config(base_path))
    assert (
        main(["serve", "model", f"--model_config_file={config}", "--store", str(base_path.parent)])
        == 2
    )
    assert "drop --store, --model-name and --label" in capsys.readouterr().err
    assert main(["serve", "model", "--port=8500"]) == 2
    assert (
        "give --store and --model-name, or TF Serving's --model_config_file"
        in capsys.readouterr().err
    )


def test_batching_and_monitoring_files_map_onto_the_servers_options(base_path, tmp_path, caplog):
    config = write(tmp_path / "models.config", model_config(base_path))
    batching = write(
        tmp_path / "batching.config",
        "max_batch_size { value: 8 } batch_timeout_micros { value: 3000 }\n"
        "num_batch_threads { value: 1 } max_enqueued_batches { value: 4 } allowed_batch_sizes: 8\n",
    )
    monitoring = write(tmp_path / "monitoring.config", "prometheus_config { enable: true }")
    with caplog.at_level(logging.WARNING):
        parsed = server_config(
            f"--model_config_file={config}",
            "--enable_batching=true",
            f"--batching_parameters_file={batching}",
            f"--monitoring_config_file={monitoring}",
            "--file_system_poll_wait_seconds=7",
            "--model_config_file_poll_wait_seconds=3",
        )
    assert (
        parsed.batching,
        parsed.max_batch_size,
        parsed.batch_timeout_s,
        parsed.num_batch_threads,
        parsed.max_queued_requests,
    ) == (True, 8, 0.003, 1, 32)
    assert "ignoring allowed_batch_sizes" in caplog.text
    assert (
        parsed.metrics_path == "/monitoring/prometheus/metrics"
    )  # TF Serving's default when path is empty
    assert (parsed.poll_interval_s, parsed.tf_serving.config_poll_s) == (7, 3.0)
    assert (parsed.store, parsed.model_name) == (str(base_path), "cifar")
    assert (
        server_config(f"--model_config_file={config}", "--enable_batching=false").batching is False
    )
    assert (
        server_config(f"--model_config_file={config}", "--rest_api_port=0").rest_port == -1
    )  # 0: no REST


def test_grpc_channel_arguments_reach_the_grpc_server(base_path, tmp_path, capsys):
    """max_connection_age makes the server close connections, so round-robin clients re-resolve and find new pods."""
    config = write(tmp_path / "models.config", model_config(base_path))
    assert server_config(
        f"--model_config_file={config}",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=300,grpc.some_name=text",
    ).grpc_channel_arguments == (("grpc.max_connection_age_ms", 300), ("grpc.some_name", "text"))
    assert (
        main(["serve", "model", f"--model_config_file={config}", "--grpc_channel_arguments=grpc.x"])
        == 255
    )
    assert "'grpc.x' is not KEY=VALUE" in capsys.readouterr().err
    with running(
        f"--model_config_file={config}",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=300,"
        "grpc.max_connection_age_grace_ms=100",
    ) as server:
        seen: list[grpc.ChannelConnectivity] = []
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            channel.subscribe(seen.append)
            grpc.channel_ready_future(channel).result(timeout=10)
            ready = grpc.ChannelConnectivity.READY

            def aged_out() -> (
                bool
            ):  # the server ends a 300 ms old connection: the channel leaves READY by itself
                return ready in seen and any(
                    state != ready for state in seen[seen.index(ready) + 1 :]
                )

            wait_until(aged_out, 10, "the connection aged out")


# -- labels at start-up ---------------------------------------------------------------------------------


def test_a_label_on_a_version_not_loaded_refuses_the_start_without_the_flag(base_path, tmp_path):
    """TF Serving assigns labels before it loads anything: at start-up no label can name a loaded version."""
    config = write(
        tmp_path / "models.config",
        model_config(base_path, "specific { versions: 1 }", {"stable": 1}),
    )
    for flags in ([], ["--allow_version_labels_for_unavailable_models=false"]):
        server = ModelServer(server_config(f"--model_config_file={config}", *flags))
        with pytest.raises(ServerStartError) as info:
            server.start()
        assert str(info.value) == (
            "Failed to start server. Error: FAILED_PRECONDITION: Request to assign label to version 1 of model cifar, "
            'which is not currently available for inference (label "stable")'
        )
        assert (
            server.grpc_server is None
            and server.rest is None
            and not server.manager.is_available(1)
        )
    # The same as a real process: exit status 255 (main.cc returns -1), the reason on one line.
    process = subprocess.run(
        [
            *cifarflow_command(),
            "serve",
            "model",
            f"--model_config_file={config}",
            "--port=1",
            "--rest_api_port=2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 255, process.stdout + process.stderr
    assert (
        'Request to assign label to version 1 of model cifar, which is not currently available for inference (label "stable")'
        in process.stderr
    )


def test_with_the_flag_a_label_may_name_a_version_not_loaded_yet(base_path, tmp_path):
    config = write(
        tmp_path / "models.config",
        model_config(base_path, "specific { versions: 1 }", {"stable": 1}),
    )
    with running(
        f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models"
    ) as server:
        assert predict(server.grpc_port, label="stable").model_spec.version.value == 1
        rest = f"http://127.0.0.1:{server.rest_port}/v1/models/cifar/labels/stable"
        assert requests.get(rest + "/metadata", timeout=10).json()["model_spec"]["version"] == "1"


# -- reloads ----------------------------------------------------------------------------------------------


def test_moving_a_label_to_a_version_not_loaded_is_refused_on_reload_and_the_old_config_keeps_serving(
    base_path, tmp_path, caplog
):
    config = write(
        tmp_path / "models.config",
        model_config(base_path, "specific { versions: 1 }", {"stable": 1}),
    )
    with (
        caplog.at_level(logging.INFO),
        running(
            f"--model_config_file={config}",
            "--allow_version_labels_for_unavailable_models=true",
            "--model_config_file_poll_wait_seconds=1",
            "--file_system_poll_wait_seconds=1",
        ) as server,
    ):
        port = server.grpc_port
        assert predict(port, label="stable").model_spec.version.value == 1

        # The edit the review's finding 10 is about: even with the flag, an
        # assigned label moves only to a loaded version, and since the label
        # check comes before loading, version 2 is never loaded either.
        write(config, model_config(base_path, "specific { versions: 2 }", {"stable": 2}))
        refusal = (
            "PollFilesystemAndReloadConfig failed to ReloadConfig: Request to assign label to version 2 of model "
            "cifar, which is not currently available for inference"
        )
        wait_until(
            lambda: caplog.text.count(refusal) >= 2, what="two refused polls"
        )  # it keeps failing, as TF Serving does
        assert predict(port, label="stable").model_spec.version.value == 1
        assert predict(port).model_spec.version.value == 1
        assert statuses(port) == [(1, AVAILABLE)]

        # TF Serving's documented way: first serve both versions (a label new
        # to the server may name a version not loaded yet, with the flag) ...
        write(
            config,
            model_config(
                base_path, "specific { versions: 1 versions: 2 }", {"stable": 1, "canary": 2}
            ),
        )
        wait_until(lambda: server.manager.is_available(2), what="version 2 loaded")
        answer = predict(port, label="canary")
        assert answer.model_spec.version.value == 2
        assert int(tf.make_ndarray(answer.outputs["class_ids"])[0]) == FAVOURED
        assert predict(port, label="stable").model_spec.version.value == 1
        # ... then move the label to the loaded version.
        write(config, model_config(base_path, "specific { versions: 2 }", {"stable": 2}))
        wait_until(lambda: dict(statuses(port)).get(1) == END, what="version 1 unloaded")
        assert predict(port, label="stable").model_spec.version.value == 2
        with pytest.raises(grpc.RpcError) as info:  # labels missing from the new config are gone
            predict(port, label="canary")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # A config that no longer parses is logged and changes nothing.
        write(config, "model_config_list {")
        wait_until(
            lambda: "Failed to read ModelServerConfig file: Invalid protobuf file" in caplog.text,
            what="parse error logged",
        )
        assert predict(port, label="stable").model_spec.version.value == 2


# -- version policy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, served",
    [
        ("", [3]),
        ("latest { num_versions: 2 }", [3, 2]),
        ("all { }", [3, 2, 1]),
        ("specific { versions: 1 versions: 3 versions: 9 }", [3, 1]),
    ],
    ids=["default-latest-1", "latest-2", "all", "specific"],
)
def test_model_version_policy_picks_the_versions_served(base_path, tmp_path, policy, served):
    config = write(tmp_path / "models.config", model_config(base_path, policy))
    with running(f"--model_config_file={config}", "--file_system_poll_wait_seconds=0") as server:
        assert statuses(server.grpc_port) == [(v, AVAILABLE) for v in served]
        # A request naming no version gets the newest served (TF Serving's Latest).
        assert predict(server.grpc_port).model_spec.version.value == served[0]
        missing = ({1, 2, 3} - set(served)) or {9}
        with pytest.raises(grpc.RpcError) as info:
            predict(server.grpc_port, version=min(missing))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


# -- requests by label, over gRPC and HTTP ---------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(base_path, tmp_path_factory) -> Iterator[ModelServer]:
    """Versions 1 and 2 served; stable -> 1, canary -> 2, next -> 3 (not served); metrics at a path of its own."""
    folder = tmp_path_factory.mktemp("tfs-labelled")
    config = write(
        folder / "models.config",
        model_config(
            base_path, "specific { versions: 1 versions: 2 }", {"stable": 1, "canary": 2, "next": 3}
        ),
    )
    monitoring = write(
        folder / "monitoring.config",
        'prometheus_config { enable: true path: "/custom/prometheus" }',
    )
    with running(
        f"--model_config_file={config}",
        "--allow_version_labels_for_unavailable_models",
        f"--monitoring_config_file={monitoring}",
    ) as server:
        yield server


def test_version_label_requests_over_grpc(labelled):
    port = labelled.grpc_port
    canary = predict(port, label="canary")
    assert (
        canary.model_spec.version.value == 2
        and int(tf.make_ndarray(canary.outputs["class_ids"])[0]) == FAVOURED
    )
    assert predict(port, label="stable").model_spec.version.value == 1

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name, request.model_spec.version_label = "cifar", "canary"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert (
            prediction_service_pb2_grpc.PredictionServiceStub(channel)
            .GetModelMetadata(request, timeout=10)
            .model_spec.version.value
            == 2
        )

    for label, code, message in (
        ("next", grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(cifar, 3)"),
        ("nope", grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: nope"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            predict(port, label=label)
        assert (info.value.code(), info.value.details()) == (code, message)


def test_version_label_requests_over_http(labelled):
    rest = f"http://127.0.0.1:{labelled.rest_port}/v1/models/cifar"
    body = {
        "signature_name": "predict_pixels",
        "instances": np.zeros((1, 32, 32, 3), np.uint8).tolist(),
    }
    canary = requests.post(f"{rest}/labels/canary:predict", json=body, timeout=10)
    assert canary.status_code == 200 and canary.json()["predictions"][0]["class_ids"] == FAVOURED
    stable = requests.post(f"{rest}/labels/stable:predict", json=body, timeout=10).json()
    assert stable["predictions"][0]["class_ids"] != FAVOURED
    assert (
        requests.get(f"{rest}/labels/canary/metadata", timeout=10).json()["model_spec"]["version"]
        == "2"
    )
    for path, status, message in (
        ("/labels/next/metadata", 404, "Specific(cifar, 3)"),
        ("/labels/nope/metadata", 400, "Unrecognized servable version label: nope"),
    ):
        answer = requests.get(rest + path, timeout=10)
        assert (answer.status_code, message in answer.json()["error"]) == (status, True), (
            answer.text
        )
    assert requests.post(f"{rest}/labels/next:predict", json=body, timeout=10).status_code == 404
    assert requests.post(f"{rest}/labels/nope:predict", json=body, timeout=10).status_code == 400


def test_model_status_ignores_labels(labelled):
    """get_model_status_impl.cc: only a version narrows the answer; a label, known or not, is not resolved."""
    rest = f"http://127.0.0.1:{labelled.rest_port}/v1/models/cifar"
    everything = requests.get(rest, timeout=10).json()
    assert [s["version"] for s in everything["model_version_status"]] == ["2", "1"]
    for label in ("stable", "canary", "next", "nope"):
        answer = requests.get(f"{rest}/labels/{label}", timeout=10)
        assert answer.status_code == 200 and answer.json() == everything, label
        assert statuses(labelled.grpc_port, label) == [(2, AVAILABLE), (1, AVAILABLE)]
    assert (
        requests.get(f"{rest}/versions/1", timeout=10).json()["model_version_status"][0]["version"]
        == "1"
    )
    assert requests.get(f"{rest}/versions/3", timeout=10).status_code == 404


def test_the_monitoring_configs_path_serves_the_metrics(labelled):
    answer = requests.get(f"http://127.0.0.1:{labelled.rest_port}/custom/prometheus", timeout=10)
    assert answer.status_code == 200
    assert 'cifarflow_model_server_serving_version{model="cifar"} 2.0' in answer.text
