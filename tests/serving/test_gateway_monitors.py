"""The gateway's monitors over real gRPC to the model server: an OOD verdict on every answer, drift gauges.

The test model (a linear layer, tests/serving/model_factory.py) carries a
reference.json built from the shipped sample's real train images; the
expected energy of each answer is computed in NumPy from the same weights.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re

import grpc
import numpy as np
import pytest
import requests

from cifarflow.ood_scores import energy
from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.monitoring.config import DEFAULT_DRIFT_THRESHOLD, MonitorConfig
from cifarflow.serving.gateway.monitoring.references import ReferenceSource
from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc
from cifarflow.serving.gateway.server import Gateway
from cifarflow.serving.store import publish_model
from cifarflow.training_reference import TrainingReference
from tests.serving.conftest import model_server_for
from tests.serving.images import encode
from tests.serving.model_factory import reference_logits
from tests.serving.monitoring_support import model_with_reference

WINDOW = 400


@pytest.fixture(scope="module")
def referenced_model(exported_model, tmp_path_factory):
    return model_with_reference(exported_model, tmp_path_factory.mktemp("ref") / "model")


@pytest.fixture(scope="module")
def reference(referenced_model) -> TrainingReference:
    return TrainingReference.from_json(
        json.loads((referenced_model / "reference.json").read_text())
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("monitor-store")


@pytest.fixture(scope="module")
def model_server(referenced_model, store):
    with model_server_for(referenced_model, store, "cifar") as server:
        yield server


def start_gateway(model_server, monitors: MonitorConfig) -> Gateway:
    return Gateway(
        GatewayConfig(
            backend=f"127.0.0.1:{model_server.grpc_port}",
            host="127.0.0.1",
            port=0,
            grpc_port=0,
            model_name="cifar",
            monitors=monitors,
        )
    ).start()


@pytest.fixture(scope="module")
def gateway(model_server, store):
    gw = start_gateway(
        model_server, MonitorConfig(store=str(store), window=WINDOW, update_every=10)
    )
    yield gw
    gw.stop(1)


def classifier_stub(gateway: Gateway):
    channel = grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}")
    return channel, classifier_pb2_grpc.ClassifierStub(channel)


def test_every_answer_carries_the_ood_verdict_of_the_served_reference(gateway, cifar, reference):
    pixels = cifar[0][:6]
    rng = np.random.default_rng(0)
    unlike = np.stack(
        [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), np.full((32, 32, 3), 200, np.uint8)]
    )
    images = np.concatenate([pixels, unlike])
    expected = energy(reference_logits(images))
    threshold = reference.scores.scores["energy"].threshold
    base = f"http://127.0.0.1:{gateway.port}"
    for image, value in zip(images, expected, strict=True):
        data = encode(image, "PNG")  # lossless: the model sees exactly these pixels
        answers = [
            requests.post(f"{base}/v1/classify", files={"file": ("i.png", data)}, timeout=10),
            requests.post(
                f"{base}/v1/classify",
                json={"image_b64": base64.b64encode(data).decode()},
                timeout=10,
            ),
            requests.post(
                f"{base}/v1/classify", data=data, headers={"Content-Type": "image/png"}, timeout=10
            ),
        ]
        for answer in answers:
            assert answer.status_code == 200, answer.text
            ood = answer.json()["ood"]
            assert ood["score"] == "energy" and ood["threshold"] == threshold
            assert ood["value"] == pytest.approx(value, abs=1e-3)
            assert ood["in_distribution"] is bool(value <= threshold)
    channel, stub = classifier_stub(gateway)
    with channel:
        one = stub.Classify(classifier_pb2.ClassifyRequest(image=encode(images[-1], "PNG")))
        assert one.ood.score == "energy" and one.ood.value == pytest.approx(expected[-1], abs=1e-3)
        assert one.ood.HasField("in_distribution") and one.ood.threshold == pytest.approx(threshold)
        assert one.ood.in_distribution is bool(expected[-1] <= threshold)
        batch = stub.ClassifyBatch(
            classifier_pb2.ClassifyBatchRequest(images=[encode(i, "PNG") for i in images])
        )
    got = [r.ood.value for r in batch.results]
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert [r.ood.in_distribution for r in batch.results] == [
        bool(v <= threshold) for v in expected
    ]
    # The threshold passes 95 % of the reference's own "val" images: it is not trivially all or none.
    assert 0 < reference.scores.scores["energy"].passed < reference.scores.images


def gauges(base: str) -> dict[str, float]:
    text = requests.get(f"{base}/metrics", timeout=5).text
    found = {
        match[1]: float(match[2])
        for match in re.finditer(
            r'^cifarflow_gateway_drift_psi\{feature="(\w+)"\} (\S+)$', text, re.M
        )
    }
    for name in ("cifarflow_gateway_drift_window_images", "cifarflow_gateway_ood_rate"):
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        found[name] = float(match[1]) if match else float("nan")
    return found


def test_drift_gauges_stay_low_on_real_images_and_rise_on_dark_or_gray_ones(gateway, cifar):
    base = f"http://127.0.0.1:{gateway.port}"
    pixels = cifar[0][:WINDOW]
    channel, stub = classifier_stub(gateway)
    crossed: dict[str, int] = {}

    def send(images: np.ndarray, watch: str | None = None, step: int = 50) -> None:
        for start in range(0, len(images), step):
            stub.ClassifyBatch(
                classifier_pb2.ClassifyBatchRequest(
                    images=[encode(i, "PNG") for i in images[start : start + step]]
                )
            )
            if watch and watch not in crossed and gauges(base)[watch] > DEFAULT_DRIFT_THRESHOLD:
                crossed[watch] = start + step

    image_features = ("brightness", "contrast", "saturation", "pixels_R", "pixels_G", "pixels_B")
    with channel:
        send(pixels)  # a full window of real test images: every image feature compared, and low
        seen = gauges(base)
        assert seen["cifarflow_gateway_drift_window_images"] == WINDOW
        assert max(seen[f] for f in image_features) < DEFAULT_DRIFT_THRESHOLD, seen
        # Darkened to 40 %: brightness drifts within a quarter of the window.
        send((pixels[:200] * 0.4).astype(np.uint8), watch="brightness", step=10)
        assert crossed.get("brightness", 10**6) <= WINDOW // 4, crossed
        send(pixels)  # real images again: the dark ones leave the window
        assert gauges(base)["brightness"] < DEFAULT_DRIFT_THRESHOLD
        # Grayscale (luma in all three channels): saturation drifts.
        luma = np.round(pixels[:200] @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
        send(np.repeat(luma[..., None], 3, axis=-1), watch="saturation", step=10)
        assert crossed.get("saturation", 10**6) <= WINDOW // 4, crossed
    text = requests.get(f"{base}/metrics", timeout=5).text
    assert 'cifarflow_gateway_ood_answers_total{verdict="in"}' in text
    assert 0.0 <= gauges(base)["cifarflow_gateway_ood_rate"] <= 1.0


def test_a_version_without_reference_answers_with_the_score_but_no_flag(
    model_server, tmp_path, cifar, caplog
):
    # The monitor store has no reference.json for version 1 (an older version's store).
    gw = start_gateway(model_server, MonitorConfig(store=str(tmp_path)))
    try:
        with caplog.at_level(logging.WARNING):
            for image in cifar[0][:3]:
                answer = requests.post(
                    f"http://127.0.0.1:{gw.port}/v1/classify",
                    files={"file": ("i.png", encode(image, "PNG"))},
                    timeout=10,
                )
                assert answer.status_code == 200, answer.text
                ood = answer.json()["ood"]
                assert set(ood) == {"score", "value"}
                assert ood["value"] == pytest.approx(
                    energy(reference_logits(image[None]))[0], abs=1e-3
                )
    finally:
        gw.stop(1)
    said = [r for r in caplog.records if "has no reference.json" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]


def test_monitors_off_leaves_answers_and_metrics_as_before(model_server, cifar):
    gw = start_gateway(model_server, MonitorConfig(enabled=False))
    try:
        data = encode(cifar[0][0], "PNG")
        answer = requests.post(
            f"http://127.0.0.1:{gw.port}/v1/classify", files={"file": ("i.png", data)}, timeout=10
        )
        assert answer.status_code == 200 and "ood" not in answer.json()
        channel, stub = classifier_stub(gw)
        with channel:
            assert not stub.Classify(classifier_pb2.ClassifyRequest(image=data)).HasField("ood")
        assert gw.backend.want_logits is False
        text = requests.get(f"http://127.0.0.1:{gw.port}/metrics", timeout=5).text
        assert "cifarflow_gateway_drift_psi" not in text and "ood" not in text
    finally:
        gw.stop(1)


def test_references_are_read_from_an_s3_store(s3_server, s3_bucket, referenced_model, monkeypatch):
    publish_model(referenced_model, f"s3://{s3_bucket}/models", "cifar", {}, s3_server.settings)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    source = ReferenceSource(f"s3://{s3_bucket}/models", "cifar")

    async def read() -> tuple:
        return await asyncio.gather(source.get(1), source.get(1), source.get(7))

    first, again, absent = asyncio.run(read())
    expected = json.loads((referenced_model / "reference.json").read_text())
    assert first is not None and first is again  # concurrent answers share one read
    assert (
        first.scores.scores["energy"].threshold
        == expected["scores"]["scores"]["energy"]["threshold"]
    )
    assert absent is None
