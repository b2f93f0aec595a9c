"""The manifest's sync command lines, run for real, feed a model server that answers.

What a cluster would do, minus the cluster: the model-sync containers'
command lines are taken from the rendered base, their $(VAR)s expanded from
the rendered ConfigMap and a Secret's values the way the kubelet does, and run
against a real S3 server (SeaweedFS) into a folder standing in for the
`models` volume. The only substitutions are the ones a cluster makes: the
store's address (what cluster DNS would resolve), the credentials (what the
Secret would hold) and the volume's place on disk. Then the project's
TensorFlow-Serving-compatible model server is started with the tf-serving
container's exact argument list (TF Serving's own flags and the rendered
ConfigMap's files; only the volume paths and the ports are mapped), so a
manifest TF Serving would refuse is refused here too; it answers the
container's probes and a Predict over TensorFlow Serving's own gRPC API; and
the production gateway, run with its manifest's exact command line and token,
passes its probes and classifies an image through it.
"""

from __future__ import annotations

import dataclasses
import os
import re
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
    OVERLAYS,
    command_line,
    configmap_volume_files,
    container,
    container_env,
    flag_value,
    gateway_deployments,
    model_server_deployments,
    named,
    parse_text_proto,
    render,
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
        pytest.fail(
            "the cifarflow console script is not installed next to this Python (pip install -e .)"
        )
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
                fields = dict(
                    line.split(":", 1)
                    for line in self.status.read_text().splitlines()
                    if ":" in line
                )
            except (FileNotFoundError, ProcessLookupError, ValueError):
                return
            if "VmHWM" in fields:
                self.mib = max(self.mib or 0.0, int(fields["VmHWM"].split()[0]) / 1024)
            time.sleep(0.02)


class Pod:
    """The rendered tf-serving pod, and how its containers would run here."""

    def __init__(self, s3_server, volume_root: Path):
        self.objects = render(BASE)
        (self.deployment,) = [
            d
            for d in model_server_deployments(self.objects)
            if d["metadata"]["name"] == "tf-serving"
        ]
        self.spec = self.deployment["spec"]["template"]["spec"]
        self.s3 = s3_server
        self.volume_root = volume_root
        self.secrets = {
            SECRET: {"accesskey": s3_server.access_key, "secretkey": s3_server.secret_key}
        }

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
                return (
                    self.volume_root / mount["name"] / path[len(mount["mountPath"]) :].lstrip("/")
                )
        raise AssertionError(
            f"{path} is on no volume of {container_name}: it would be on the read-only root filesystem"
        )

    def on_volume(self, container_name: str, path: str) -> bool:
        mounts = [m["mountPath"] for m in container(self.spec, container_name)["volumeMounts"]]
        return any(path == m or path.startswith(m + "/") for m in mounts)

    def tf_serving_argv(self, ports: dict[str, int], drop: tuple[str, ...] = ()) -> list[str]:
        """The tf-serving container's exact arguments, run as `cifarflow serve model`.

        Only what the pod provides differently here is mapped: paths on the
        container's volumes (its config volume's files are the rendered
        ConfigMap's, written out with their own volume paths mapped the same
        way) and the ports (`ports`: flag -> a free port).

        Args:
            ports: e.g. {"--port": 41234, "--rest_api_port": 41235}.
            drop: flags left out (to show what TF Serving does without them).
        """
        name = "tf-serving"
        server = container(self.spec, name)
        argv = command_line(self.objects, server)
        assert argv[0] == "tensorflow_model_server", argv

        def mapped(value: str) -> str:
            return str(self.host_path(name, value)) if self.on_volume(name, value) else value

        config_mount = next(m["mountPath"] for m in server["volumeMounts"] if m["name"] == "config")
        folder = self.host_path(name, config_mount)
        folder.mkdir(parents=True, exist_ok=True)
        for file_name, text in configmap_volume_files(self.objects, self.spec, "config").items():
            (folder / file_name).write_text(
                re.sub(r'"(/[^"]*)"', lambda m: f'"{mapped(m.group(1))}"', text)
            )
        args = []
        for arg in argv[1:]:
            flag, equals, value = arg.partition("=")
            assert flag.startswith("--") and "_" in flag or flag == "--port", (
                f"not a TF Serving flag: {arg}"
            )
            if flag in drop:
                continue
            if flag in ports:
                value = str(ports[flag])
            args.append(flag + equals + mapped(value) if equals else arg)
        assert set(ports) <= {a.partition("=")[0] for a in args}, (
            "a port flag to map is not in the manifest"
        )
        return [_console_script(), "serve", "model", *args]

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
        return {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            **self.env(name),
        }

    def model_config(self) -> dict:
        server = container(self.spec, "tf-serving")
        volume = next(v for v in self.spec["volumes"] if v["name"] == "config")
        files = named(self.objects, "ConfigMap", volume["configMap"]["name"])["data"]
        config_file = Path(flag_value(server["args"], "--model_config_file")).name
        (config,) = parse_text_proto(files[config_file])["model_config_list"][0]["config"]
        return config


@dataclasses.dataclass
class Synced:
    """The state the module's tests share: a store, its synced copy, a model server on it."""

    pod: Pod
    config: dict
    stable: int
    base_path: Path
    home: Path
    sync_output: str
    sync_peak_mib: float | None
    grpc_port: int = 0
    rest_port: int = 0
    after_init: list[str] = dataclasses.field(default_factory=list)
    sidecar_alive: bool = False
    sidecar_output: str = ""
    sidecar_returncode: int | None = None
    newer: int = 0


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def synced(tmp_path_factory) -> Synced:
    """Publish to a fresh S3 server, then run the init container's exact command line."""
    from cifarflow.s3 import S3Location
    from cifarflow.serving.store import open_store, publish_model
    from tests.serving.model_factory import export_test_model
    from tests.support.s3_server import S3Server

    root = tmp_path_factory.mktemp("k8s-e2e")
    test_model = export_test_model(root / "model")
    # A server of its own: the manifest's bucket must start empty.
    s3 = S3Server(root / "s3").start()
    try:
        pod = Pod(s3, root / "volumes")
        home = root / "home"
        home.mkdir()
        store_env = pod.env("model-sync-once")
        model_name, store_uri = store_env["MODEL_NAME"], store_env["MODEL_STORE"]

        # What the pipeline's publish step does, labelled the way
        # docs/kubernetes.md says, so sync keeps it.
        s3.settings.client().make_bucket(S3Location.parse(store_uri).bucket)
        published = publish_model(
            test_model, store_uri, model_name, {"metrics": {"accuracy": 0.5}}, s3.settings
        )
        config = pod.model_config()
        stable = int(
            next(
                label["value"][0]
                for label in config["version_labels"]
                if label["key"] == ["stable"]
            )
        )
        assert published.version == stable, (
            "the base models.config serves the first version a fresh store gets"
        )
        open_store(store_uri, s3.settings).promote(model_name, published.version, "stable")

        once = subprocess.Popen(
            pod.argv("model-sync-once"),
            env=pod.process_env("model-sync-once", home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        peak = _PeakMemory(once.pid)
        output, _ = once.communicate(timeout=120)
        peak.join()
        assert once.returncode == 0, output
        # TF Serving's base_path, seen through its own mount of the same volume.
        base_path = pod.host_path("tf-serving", config["base_path"][0])
        state = Synced(pod, config, stable, base_path, home, output, peak.mib)

        state.after_init = sorted(p.name for p in base_path.iterdir())

        # The sidecar, exactly. The pipeline publishes a newer version; the
        # sidecar's pass brings it in beside the labelled one, and SIGTERM
        # (how the kubelet ends a native sidecar) stops it cleanly.
        newer = publish_model(
            test_model, store_uri, model_name, {"metrics": {"accuracy": 0.6}}, s3.settings
        )
        sidecar = subprocess.Popen(
            pod.argv("model-sync"),
            env=pod.process_env("model-sync", home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(sidecar.stdout), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 60
            while not any(f"added {model_name}/{newer.version}" in line for line in lines):
                assert sidecar.poll() is None, f"the watching sync exited: {''.join(lines)}"
                assert time.monotonic() < deadline, (
                    f"the watching sync did not bring version {newer.version}: {''.join(lines)}"
                )
                time.sleep(0.1)
            time.sleep(1.0)  # its first pass is over; it is waiting for the next
            state.sidecar_alive = sidecar.poll() is None
            sidecar.send_signal(signal.SIGTERM)
            sidecar.wait(15)
            reader.join(5)
            state.sidecar_output = "".join(lines)
            state.sidecar_returncode = sidecar.returncode
            state.newer = newer.version
        finally:
            if sidecar.poll() is None:
                sidecar.kill()
                sidecar.wait()
    finally:
        s3.stop()

    # The model server in TF Serving's place, with the tf-serving container's
    # exact arguments: its config files say which versions it serves (the
    # `stable` one, not the newest) and which labels it may assign.
    state.grpc_port, state.rest_port = _free_port(), _free_port()
    server = subprocess.Popen(
        pod.tf_serving_argv({"--port": state.grpc_port, "--rest_api_port": state.rest_port}),
        env={"PATH": os.environ["PATH"], "HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_http(server, f"http://127.0.0.1:{state.rest_port}/v1/models/{config['name'][0]}", 90)
        yield state
    finally:
        _stop(server)


def _wait_http(
    process: subprocess.Popen, url: str, timeout: float, headers: dict | None = None
) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(
                f"{process.args[1:3]} exited with {process.returncode}: {process.communicate()[0]}"
            )
        try:
            if requests.get(url, timeout=5, headers=headers).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} not answering 200 after {timeout} s")
        time.sleep(0.3)


def test_init_container_fills_the_base_path_tf_serving_reads(synced):
    version_dir = synced.base_path / str(synced.stable)
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "cifarflow.json").is_file()
    assert str(synced.stable) in synced.after_init
    assert not [name for name in synced.after_init if name.startswith(".")], (
        "no half-synced leftovers"
    )
    limit = container(synced.pod.spec, "model-sync-once")["resources"]["limits"]["memory"]
    if synced.sync_peak_mib is not None:
        assert synced.sync_peak_mib < 0.8 * _mebibytes(limit), (
            f"sync peaked at {synced.sync_peak_mib:.0f} MiB; its limit is {limit}"
        )


def test_sidecar_brings_new_versions_and_stops_cleanly_on_sigterm(synced):
    assert synced.sidecar_alive, f"the watching sync exited: {synced.sidecar_output}"
    assert synced.sidecar_returncode == 0, synced.sidecar_output
    for version in (synced.stable, synced.newer):
        assert (synced.base_path / str(version) / "cifarflow.json").is_file()


def test_without_the_label_flag_the_same_arguments_are_refused_at_start_up(synced):
    """What TF Serving does with models.config's labels when the flag is missing: it exits.

    Its ReloadConfig assigns labels before loading anything, so at start-up
    every label names a version that is not loaded (server_core.cc:512-524,
    :574-584 at tag 2.20.0) and main.cc prints the error and returns -1.
    """
    flag = "--allow_version_labels_for_unavailable_models"
    assert any(
        a.startswith(flag)
        for a in command_line(synced.pod.objects, container(synced.pod.spec, "tf-serving"))
    )
    ports = {"--port": _free_port(), "--rest_api_port": _free_port()}
    refused = subprocess.run(
        synced.pod.tf_serving_argv(ports, drop=(flag,)),
        env={"PATH": os.environ["PATH"], "HOME": str(synced.home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert (
        f"Failed to start server. Error: FAILED_PRECONDITION: Request to assign label to version {synced.stable} "
        f"of model {synced.config['name'][0]}, which is not currently available for inference"
    ) in output
    labels = [label["key"][0] for label in synced.config["version_labels"]]
    assert re.search(rf'\(label "({"|".join(map(re.escape, labels))})"\)', output), output


def test_tf_serving_probes_and_a_stock_predict_answer(synced):
    """The manifest's TF Serving probe paths, and Predict over TF Serving's gRPC API."""
    import requests

    server = container(synced.pod.spec, "tf-serving")
    for probe in ("startupProbe", "readinessProbe"):
        path = server[probe]["httpGet"]["path"]
        answer = requests.get(f"http://127.0.0.1:{synced.rest_port}{path}", timeout=10)
        assert answer.status_code == 200, f"{probe} {path}: {answer.status_code} {answer.text}"
    _predict_through_tf_serving_api(synced.grpc_port, synced.config["name"][0], synced.stable)


def test_gateway_from_the_production_manifest_classifies_through_the_model_server(synced):
    """The production gateway's exact command line and token, its probes, a classification."""
    import requests

    objects = render(OVERLAYS / "production")
    (deployment,) = [d for d in gateway_deployments(objects) if d["metadata"]["name"] == "gateway"]
    spec = deployment["spec"]["template"]["spec"]
    gateway = container(spec, "gateway")
    token = "test-" + os.urandom(8).hex()
    # The gateway reads each version's reference.json from the store sync reads.
    secrets = {**synced.pod.secrets, "cifarflow-gateway-token": {"token": token}}
    env = {**container_env(objects, gateway, secrets), "S3_ENDPOINT": synced.pod.s3.endpoint}
    argv = command_line(objects, gateway, secrets)
    # What the pod network gives the container: the Service name resolves to
    # the model server, and the container's ports are its own (here: free ones).
    http_port, grpc_port = _free_port(), _free_port()
    ports = {
        flag_value(argv, "--port"): str(http_port),
        flag_value(argv, "--grpc-port"): str(grpc_port),
    }
    backend = flag_value(argv, "--backend")
    mapped = []
    for i, arg in enumerate(argv):
        previous = argv[i - 1] if i else ""
        if arg == backend:
            mapped.append(f"127.0.0.1:{synced.grpc_port}")
        elif previous in ("--port", "--grpc-port"):
            mapped.append(ports[arg])
        else:
            mapped.append(arg)
    process = subprocess.Popen(
        [_console_script(), *mapped[1:]],
        env={"PATH": os.environ["PATH"], "HOME": str(synced.home), "PYTHONUNBUFFERED": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        # The kubelet's probes carry no token: they must pass without one.
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            _wait_http(process, base + gateway[probe]["httpGet"]["path"], 60)
        metrics_path = deployment["spec"]["template"]["metadata"]["annotations"][
            "prometheus.io/path"
        ]
        assert requests.get(base + metrics_path, timeout=10).status_code == 200

        png = _png()
        assert (
            requests.post(
                base + "/v1/classify", files={"file": ("x.png", png, "image/png")}, timeout=30
            ).status_code
            == 401
        )
        answer = requests.post(
            base + "/v1/classify",
            files={"file": ("x.png", png, "image/png")},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert str(body["version"]) == str(synced.stable)
        assert body["predictions"] and 0.0 <= body["predictions"][0]["probability"] <= 1.0
        assert body["ood"]["score"] == "energy"  # the monitors are on in the manifest

        # docs/kubernetes.md's client command, through the gateway's gRPC port.
        image = synced.home / "cat.png"
        image.write_bytes(png)
        client = [_console_script(), "predict", str(image), "--server", f"127.0.0.1:{grpc_port}"]
        client_env = {"PATH": os.environ["PATH"], "HOME": str(synced.home)}
        refused = subprocess.run(client, env=client_env, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0, "the production gateway answered without its token"
        answered = subprocess.run(
            client,
            env={**client_env, "CIFARFLOW_GATEWAY_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert answered.returncode == 0, answered.stdout + answered.stderr

        # Its memory beside the limit the manifest gives it.
        status = Path(f"/proc/{process.pid}/status")
        if status.exists():
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
            peak_mib = int(fields["VmHWM"].split()[0]) / 1024
            limit = gateway["resources"]["limits"]["memory"]
            assert peak_mib < 0.8 * _mebibytes(limit), (
                f"gateway peaked at {peak_mib:.0f} MiB; its limit is {limit}"
            )
    finally:
        _stop(process)


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 64, 32)).save(buffer, format="PNG")
    return buffer.getvalue()


def _predict_through_tf_serving_api(port: int, model_name: str, version: int) -> None:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([_png()]))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30
        )
    assert response.model_spec.name == model_name
    assert response.model_spec.version.value == version
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (1, 20)
    assert abs(float(probabilities.sum()) - 1.0) < 1e-4
    assert len(response.outputs["class_names"].string_val) == 1
