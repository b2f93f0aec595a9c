"""The model server killed under load, and broken versions appearing in its folder.

Real processes throughout: `cifarflow serve model` and `cifarflow serve
gateway`, clients on several threads, SIGKILL like an OOM kill or an
evicted pod.
"""

from __future__ import annotations

import base64
import dataclasses
import threading
import time
from pathlib import Path

import pytest
import requests

from cifarflow.serving.store import publish_model
from tests.serving.images import encode
from tests.support.processes import GatewayProcess, ModelServerProcess

pytestmark = pytest.mark.timeout(180)

MODEL = "cifarflow"
# The longest a 503 may take while the backend is down: a client must be told
# to come back quickly, never left hanging until its own timeout.
FAST_503_S = 1.0
SETTLE_S = 0.5  # after the first 200 following a restart, until every answer is a 200


@dataclasses.dataclass
class Answer:
    started: float
    seconds: float
    status: int | None  # None: no HTTP answer at all
    retry_after: str | None = None
    version: int | None = None
    error: str = ""


class Load:
    """Client threads classifying one image through the gateway's REST API, recording every answer."""

    def __init__(self, url: str, image: bytes, threads: int = 4, pause_s: float = 0.02) -> None:
        self.url = url
        self.pause_s = (
            pause_s  # paced, so the 2-core test machine is not saturated by the clients themselves
        )
        self.body = {"image_b64": base64.b64encode(image).decode(), "top_k": 1}
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(threads)]

    def _client(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = session.post(self.url, json=self.body, timeout=10)
            except requests.RequestException as exc:  # a reset, a refused connection, a hang
                self.answers.append(
                    Answer(started, time.monotonic() - started, None, error=repr(exc))
                )
            else:
                version = response.json().get("version") if response.status_code == 200 else None
                self.answers.append(
                    Answer(
                        started,
                        time.monotonic() - started,
                        response.status_code,
                        response.headers.get("Retry-After"),
                        version,
                        response.text[:200],
                    )
                )
            self._stop.wait(self.pause_s)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def wait_for(self, condition, timeout: float, what: str) -> float:
        """Waits until `condition(answer)` holds for an answer; returns when that answer started."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for answer in self.answers[seen:]:
                if condition(answer):
                    return answer.started
            seen = max(0, len(self.answers) - 1)
            time.sleep(0.02)
        raise AssertionError(f"no answer {what} within {timeout}s; last: {self.answers[-3:]}")


def assert_grpc_unavailable_fast(address: str, image: bytes) -> None:
    """The gateway's own gRPC service says UNAVAILABLE (clients retry on it) as quickly as REST says 503."""
    import grpc

    from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb2.ClassifyRequest(image=image), timeout=10
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value
        assert time.monotonic() - started < FAST_503_S


@pytest.fixture
def store(exported_model, tmp_path) -> Path:
    store = tmp_path / "store"
    publish_model(exported_model, store, MODEL, {})
    return store


def test_killed_model_server_gives_fast_503s_and_the_gateway_recovers_without_a_restart(
    store, cifar, tmp_path
):
    model_server = ModelServerProcess(str(store), MODEL, tmp_path / "model-server.log")
    gateway = GatewayProcess(
        model_server.grpc_address, tmp_path / "gateway.log", "--model-name", MODEL
    )
    restarted = None
    try:
        image = encode(cifar[0][0], "PNG")
        with Load(f"{gateway.url}/v1/classify", image) as load:
            load.wait_for(lambda a: a.status == 200, 30, "200 before the kill")
            model_server.kill()  # SIGKILL: no drain, connections reset mid-request
            killed = time.monotonic()
            # Requests already on the wire when it died may fail either way; the
            # ones sent after must all be quick 503s.
            load.wait_for(
                lambda a: a.started > killed and a.status == 503, 10, "503 after the kill"
            )
            assert requests.get(f"{gateway.url}/readyz", timeout=5).status_code == 503
            assert (
                requests.get(f"{gateway.url}/healthz", timeout=5).status_code == 200
            )  # the gateway itself is fine
            assert_grpc_unavailable_fast(gateway.grpc_address, image)
            # Same port; it takes seconds to start (TensorFlow, the model): all of that is outage.
            restarted = ModelServerProcess(
                str(store),
                MODEL,
                tmp_path / "model-server-2.log",
                grpc_port=model_server.grpc_port,
                rest_port=-1,
            )
            back = time.monotonic()
            recovered = load.wait_for(
                lambda a: a.started > back and a.status == 200, 15, "200 after the restart"
            )
            time.sleep(2.0)  # answers after the recovery settled
        answers = load.answers
        assert requests.get(f"{gateway.url}/readyz", timeout=5).status_code == 200
    finally:
        for process in (restarted, gateway, model_server):
            if process is not None:
                process.kill()
    not_http = [a for a in answers if a.status is None]
    assert not not_http, f"{len(not_http)} requests got no HTTP answer: {not_http[:3]}"
    assert {a.status for a in answers} <= {200, 503}, sorted(
        {(a.status, a.error) for a in answers if a.status not in (200, 503)}
    )
    outage = [a for a in answers if killed < a.started and a.started + a.seconds < back]
    assert len(outage) >= 20 and all(a.status == 503 for a in outage)
    unavailable = [a for a in answers if a.status == 503]
    assert all(a.retry_after and int(a.retry_after) >= 1 for a in unavailable)
    slowest = max(a.seconds for a in unavailable)
    assert slowest < FAST_503_S, f"a 503 took {slowest:.2f}s"
    # Requests already racing the reconnection when the first 200 came back may
    # still meet the refused connection (seen once: a 503 2 ms after it); from
    # half a second on, every answer must be a 200 from the restarted server.
    settled = recovered + SETTLE_S
    after = [a for a in answers if a.started > settled]
    assert after, "no answers after the recovery settled"
    late = [(round(a.started - recovered, 3), a.status, a.error) for a in after if a.status != 200]
    assert not late, (
        f"non-200 answers after the recovery settled (seconds after it, status, body): {late}"
    )
    assert all(a.version == 1 for a in after)
    print(
        f"\n{len(answers)} answers, {len(outage)} during {back - killed:.1f}s down, slowest 503 {slowest * 1000:.0f} ms, "
        f"200s again {recovered - back:.2f}s after the restart"
    )


def truncated_copy(model: Path, dest: Path) -> Path:
    """The model with its variables cut in half, as a failed copy or a bad disk leaves it."""
    import shutil

    shutil.copytree(model, dest)
    data = next((dest / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    return dest


def export_incompatible_model(dest: Path) -> Path:
    """A valid SavedModel with another serving API: float images in, `scores` out (a model of another project)."""
    import tensorflow as tf

    class Other(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
        def serving_default(self, images):
            return {"scores": tf.reduce_mean(images, axis=[1, 2])}

    module = Other()
    tf.saved_model.save(module, str(dest), signatures={"serving_default": module.serving_default})
    return dest


def test_broken_new_versions_are_refused_reported_and_the_served_one_keeps_answering(
    store, exported_model, favour7_model, tmp_path, cifar
):
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    from cifarflow.serving.model_server.server import ModelServer, ModelServerConfig

    server = ModelServer(
        ModelServerConfig(
            str(store), MODEL, host="127.0.0.1", grpc_port=0, rest_port=0, poll_interval_s=0.1
        )
    ).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
    get_status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
    rest = f"http://127.0.0.1:{server.rest_port}"
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["image_bytes"].CopyFrom(
        tf.make_tensor_proto(np.array([encode(cifar[0][1], "PNG")], dtype=object))
    )
    answers, failures, stop_traffic = [], [], threading.Event()

    def traffic() -> None:
        while not stop_traffic.is_set():
            try:
                answers.append(predict(request, timeout=10).model_spec.version.value)
            except grpc.RpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")
            stop_traffic.wait(0.01)

    def states() -> dict[int, tuple[int, int, str]]:
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = MODEL
        return {
            s.version: (s.state, s.status.error_code, s.status.error_message)
            for s in get_status(status_request, timeout=5).model_version_status
        }

    def wait_for_state(version: int, state: int, timeout: float = 30) -> tuple[int, int, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = states().get(version)
            if now is not None and now[0] == state:
                return now
            time.sleep(0.05)
        raise AssertionError(f"version {version} never reached state {state}: {states()}")

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        # One at a time: like TF Serving's latest-version policy, a poll that finds
        # two new versions only tries the newest.
        publish_model(
            truncated_copy(exported_model, tmp_path / "truncated"), store, MODEL, {}
        )  # version 2
        corrupt = wait_for_state(2, 50)
        publish_model(export_incompatible_model(tmp_path / "other"), store, MODEL, {})  # version 3
        incompatible = wait_for_state(3, 50)
        served_through_failures = len(answers)
        rest_status = requests.get(f"{rest}/v1/models/{MODEL}", timeout=5).json()
        metrics = requests.get(f"{rest}/monitoring/prometheus/metrics", timeout=5)
        # A good version after the bad ones: the loader is not wedged.
        publish_model(favour7_model, store, MODEL, {})  # version 4
        wait_for_state(4, 30)
        deadline = time.monotonic() + 10
        while answers[-1] != 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics_after = requests.get(f"{rest}/metrics", timeout=5).text
    finally:
        stop_traffic.set()
        for thread in threads:
            thread.join(15)
        channel.close()
        server.stop()

    assert not failures, failures[:3]
    assert served_through_failures > 10 and set(answers[:served_through_failures]) == {1}
    assert answers[-1] == 4
    # TF Serving's shape for a failed load: state END, status UNKNOWN with the reason.
    assert corrupt[1] == 2 and "Read less bytes" in corrupt[2]
    assert (
        incompatible[1] == 2
        and "not compatible with version 1" in incompatible[2]
        and "image_bytes" in incompatible[2]
    )
    by_version = {s["version"]: s for s in rest_status["model_version_status"]}
    assert (
        by_version["1"]["state"] == "AVAILABLE" and by_version["1"]["status"]["error_code"] == "OK"
    )
    for version in ("2", "3"):
        assert by_version[version]["state"] == "END"
        assert (
            by_version[version]["status"]["error_code"] == "UNKNOWN"
            and by_version[version]["status"]["error_message"]
        )
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.text
    for version, outcome in ((1, "success"), (2, "fail"), (3, "fail")):
        assert (
            f'cifarflow_model_server_load_attempts_total{{model="{MODEL}",status="{outcome}",version="{version}"}} 1.0'
            in text
        )
    assert f'cifarflow_model_server_version_load_failed{{model="{MODEL}",version="2"}} 1.0' in text
    assert f'cifarflow_model_server_serving_version{{model="{MODEL}"}} 1.0' in text
    # TensorFlow Serving's own metric, for dashboards and alerts written against it.
    assert (
        f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{store / MODEL / "2"}",status="fail"}} 1.0'
        in text
    )
    assert f'cifarflow_model_server_serving_version{{model="{MODEL}"}} 4.0' in metrics_after
