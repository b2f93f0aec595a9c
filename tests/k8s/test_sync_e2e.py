"""The manifest's sync command lines, run for real, feed a model server that answers.

What a cluster would do, minus the cluster: the model-sync containers'
command lines are taken from the rendered base, their $(VAR)s expanded from
the rendered ConfigMap and a Secret's values the way the kubelet does, and run
against a real S3 server (SeaweedFS) into a folder standing in for the
`models` volume. The only substitutions are the ones a cluster makes: the
store's address (what cluster DNS would resolve), the credentials (what the
Secret would hold) and the volume's place on disk. Then the project's
TensorFlow-Serving-compatible model server, started on that folder the way
TensorFlow Serving is (the same base path and model name), answers a Predict
over TensorFlow Serving's own gRPC API.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.k8s.manifests import (
    BASE,
    command_line,
    container,
    container_env,
    flag_value,
    model_server_deployments,
    named,
    parse_text_proto,
    render,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("cifarflow.serving.sync") is None
    or importlib.util.find_spec("cifarflow.serving.model_server") is None,
    reason="needs `cifarflow serve sync` and `cifarflow serve model` (cifarflow.serving.sync, "
    "cifarflow.serving.model_server), built by the serving issue (#6)",
)

SECRET = "cifarflow-model-store"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def _console_script() -> str:
    script = Path(sys.executable).with_name("cifarflow")
    if not script.exists():
        pytest.fail("the cifarflow console script is not installed next to this Python (pip install -e .)")
    return str(script)


class _PeakMemory(threading.Thread):
    """The high-water resident memory of a running process, from /proc.

    Not the rusage of the child: that counts the forked copy of this test
    process (TensorFlow included) before the exec.
    """

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.status = Path(f"/proc/{pid}/status")
        self.mib: float | None = None
        self.start()

    def run(self) -> None:
        while True:
            try:
                fields = dict(line.split(":", 1) for line in self.status.read_text().splitlines() if ":" in line)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                return
            if "VmHWM" in fields:
                self.mib = max(self.mib or 0.0, int(fields["VmHWM"].split()[0]) / 1024)
            time.sleep(0.02)


class Pod:
    """The rendered tf-serving pod, and how its containers would run here."""

    def __init__(self, s3_server, volume_root: Path):
        self.objects = render(BASE)
        (self.deployment,) = [d for d in model_server_deployments(self.objects) if d["metadata"]["name"] == "tf-serving"]
        self.spec = self.deployment["spec"]["template"]["spec"]
        self.s3 = s3_server
        self.volume_root = volume_root
        self.secrets = {SECRET: {"accesskey": s3_server.access_key, "secretkey": s3_server.secret_key}}

    def env(self, name: str) -> dict[str, str]:
        env = container_env(self.objects, container(self.spec, name), self.secrets)
        # Cluster DNS would resolve the manifest's endpoint to the store; here
        # the store is the test's S3 server.
        env["S3_ENDPOINT"] = self.s3.endpoint
        return env

    def host_path(self, container_name: str, path: str) -> Path:
        """Where a path inside the container lives here: volumes by name."""
        for mount in container(self.spec, container_name)["volumeMounts"]:
            if path == mount["mountPath"] or path.startswith(mount["mountPath"] + "/"):
                return self.volume_root / mount["name"] / path[len(mount["mountPath"]):].lstrip("/")
        raise AssertionError(f"{path} is on no volume of {container_name}: it would be on the read-only root filesystem")

    def argv(self, name: str) -> list[str]:
        """The container's exact command line, with paths mapped onto the volumes here."""
        spec = container(self.spec, name)
        env = container_env(self.objects, spec, self.secrets)
        argv = command_line(self.objects, spec, self.secrets)
        assert argv[0] == "cifarflow"
        to = flag_value(argv, "--to")
        mapped = [str(self.host_path(name, to)) if arg == to else arg for arg in argv]
        assert env["MODEL_STORE"] in argv
        return [_console_script(), *mapped[1:]]

    def process_env(self, name: str, home: Path) -> dict[str, str]:
        """Only what the container would have: its env, not the test's S3_* variables."""
        return {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONUNBUFFERED": "1", **self.env(name)}

    def model_config(self) -> dict:
        server = container(self.spec, "tf-serving")
        volume = next(v for v in self.spec["volumes"] if v["name"] == "config")
        files = named(self.objects, "ConfigMap", volume["configMap"]["name"])["data"]
        config_file = Path(flag_value(server["args"], "--model_config_file")).name
        (config,) = parse_text_proto(files[config_file])["model_config_list"][0]["config"]
        return config


@pytest.fixture
def own_s3(tmp_path):
    """A fresh S3 server: the manifest's bucket name must start empty here."""
    from tests.support.s3_server import S3Server

    server = S3Server(tmp_path / "s3").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def test_model(tmp_path_factory) -> Path:
    try:
        from tests.serving.model_factory import export_test_model
    except ImportError:
        pytest.skip("needs the serving tests' model factory (tests/serving/model_factory.py)")
    return export_test_model(tmp_path_factory.mktemp("k8s-model") / "model")


def test_manifest_sync_feeds_a_model_server_that_answers_predict(own_s3, test_model, tmp_path):
    from cifarflow.s3 import S3Location
    from cifarflow.serving.store import open_store, publish_model

    pod = Pod(own_s3, tmp_path / "volumes")
    home = tmp_path / "home"
    home.mkdir()
    store_env = pod.env("model-sync-once")
    model_name, store_uri = store_env["MODEL_NAME"], store_env["MODEL_STORE"]

    # What the pipeline's publish step does: a new version, labelled the way
    # docs/kubernetes.md says, so sync keeps it.
    own_s3.settings.client().make_bucket(S3Location.parse(store_uri).bucket)
    published = publish_model(test_model, store_uri, model_name, {"metrics": {"accuracy": 0.5}}, own_s3.settings)
    config = pod.model_config()
    stable = int(next(label["value"][0] for label in config["version_labels"] if label["key"] == ["stable"]))
    assert published.version == stable, "the base models.config serves the first version a fresh store gets"
    open_store(store_uri, own_s3.settings).promote(model_name, published.version, "stable")

    # The init container, exactly; its own peak memory must fit its limit
    # with room to spare.
    once = subprocess.Popen(pod.argv("model-sync-once"), env=pod.process_env("model-sync-once", home),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = _PeakMemory(once.pid)
    output, _ = once.communicate(timeout=120)
    peak.join()
    assert once.returncode == 0, output
    limit = container(pod.spec, "model-sync-once")["resources"]["limits"]["memory"]
    if peak.mib is not None:
        assert peak.mib < 0.8 * _mebibytes(limit), f"sync peaked at {peak.mib:.0f} MiB; its limit is {limit}"

    # TF Serving's base_path, seen through its own mount of the same volume.
    base_path = pod.host_path("tf-serving", config["base_path"][0])
    version_dir = base_path / str(stable)
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "cifarflow.json").is_file()
    assert not [p for p in base_path.iterdir() if p.name.startswith(".")], "no half-synced leftovers"

    # The sidecar, exactly: it keeps running and stops cleanly on SIGTERM,
    # which is how the kubelet ends a native sidecar.
    sidecar = subprocess.Popen(pod.argv("model-sync"), env=pod.process_env("model-sync", home),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        assert sidecar.poll() is None, f"the watching sync exited: {sidecar.communicate()[0]}"
        sidecar.send_signal(signal.SIGTERM)
        output, _ = sidecar.communicate(timeout=15)
        assert sidecar.returncode == 0, output
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
            sidecar.wait()

    # The model server on the folder TF Serving would read: the store root is
    # the volume's mount, the model name is models.config's.
    grpc_port, rest_port = _free_port(), _free_port()
    models_root = base_path.parent
    server = subprocess.Popen(
        [_console_script(), "serve", "model", "--store", str(models_root), "--model-name", config["name"][0],
         "--grpc-port", str(grpc_port), "--rest-port", str(rest_port), "--host", "127.0.0.1"],
        env={"PATH": os.environ["PATH"], "HOME": str(home)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _predict_through_tf_serving_api(server, grpc_port, config["name"][0], stable)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _predict_through_tf_serving_api(server: subprocess.Popen, port: int, model_name: str, version: int) -> None:
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_default"
    png = tf.io.encode_png(np.full((32, 32, 3), 128, np.uint8)).numpy()
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([png]))

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    deadline = time.monotonic() + 90
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"the model server exited with {server.returncode}: {server.communicate()[0]}")
            try:
                response = stub.Predict(request, timeout=10)
                break
            except grpc.RpcError as exc:  # not listening or not loaded yet
                if time.monotonic() > deadline:
                    raise AssertionError(f"no Predict answer in 90 s: {exc}") from exc
                time.sleep(0.5)
    finally:
        channel.close()
    assert response.model_spec.name == model_name
    assert response.model_spec.version.value == version
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (1, 20)
    assert abs(float(probabilities.sum()) - 1.0) < 1e-4
    assert len(response.outputs["class_names"].string_val) == 1
