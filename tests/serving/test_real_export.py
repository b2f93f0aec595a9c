"""The serving stack on the trainer's real SavedModel export (an untrained small ResNet).

The rest of the serving tests use tests/serving/model_factory.py; this one
checks that what cifarflow/components/train/export.py writes is served to the same
contract, end to end through publish, the model server and the gateway.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.server import Gateway
from cifarflow.serving.model_server.server import ModelServer, ModelServerConfig
from cifarflow.serving.store import open_store, publish_model
from tests.serving.images import encode, exif_rotated_jpeg

export = pytest.importorskip(
    "cifarflow.components.train.export", reason="the trainer's export is not installed"
)


@pytest.fixture(scope="module")
def trainer_export(tmp_path_factory):
    from cifarflow.components.train.config import TrialConfig
    from cifarflow.components.train.models.build import build_model

    out = tmp_path_factory.mktemp("trainer") / "model"
    out.mkdir()
    export.export_saved_model(
        build_model(TrialConfig(architecture="resnet", depth=8)).inference, out, COARSE_CLASS_NAMES
    )
    (out / "test_predictions.npy").write_bytes(b"stand-in for the champion gate's file")
    return out


def test_trainer_export_published_served_and_classified(trainer_export, tmp_path, cifar):
    store = tmp_path / "store"
    result = publish_model(
        trainer_export, store, "cifar", {"metrics": {"accuracy": 0.05}, "run_id": "untrained"}
    )
    assert "test_predictions.npy" in open_store(store).manifest("cifar", result.version)["files"]
    server = ModelServer(
        ModelServerConfig(str(store), "cifar", host="127.0.0.1", grpc_port=0, rest_port=-1)
    ).start()
    gateway = Gateway(
        GatewayConfig(
            backend=f"127.0.0.1:{server.grpc_port}",
            host="127.0.0.1",
            port=0,
            grpc_port=-1,
            model_name="cifar",
        )
    ).start()
    try:
        pixels = cifar[0][:4]
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            by_bytes = predict_pb2.PredictRequest()
            by_bytes.model_spec.name = "cifar"
            by_bytes.inputs["image_bytes"].CopyFrom(
                tf.make_tensor_proto([encode(p, "PNG") for p in pixels])
            )
            response = stub.Predict(by_bytes, timeout=20)
            by_pixels = predict_pb2.PredictRequest()
            by_pixels.model_spec.name = "cifar"
            by_pixels.model_spec.signature_name = "predict_pixels"
            by_pixels.inputs["images"].CopyFrom(tf.make_tensor_proto(pixels))
            pixel_response = stub.Predict(by_pixels, timeout=20)
        outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        assert outputs["probabilities"].dtype == np.float32 and outputs["probabilities"].shape == (
            4,
            20,
        )
        assert outputs["logits"].shape == (4, 20) and outputs["class_ids"].dtype == np.int64
        assert [n.decode() for n in outputs["class_names"]] == [
            COARSE_CLASS_NAMES[i] for i in outputs["class_ids"]
        ]
        # Lossless 32x32 PNG decoded in the graph == the same pixels sent raw.
        np.testing.assert_allclose(
            outputs["probabilities"],
            tf.make_ndarray(pixel_response.outputs["probabilities"]),
            atol=1e-5,
        )
        base = f"http://127.0.0.1:{gateway.port}"
        for data in (
            encode(pixels[0], "JPEG", 300, quality=90),
            exif_rotated_jpeg(pixels[0]),
            encode(pixels[0], "PNG", 64, mode="RGBA"),
        ):
            answer = requests.post(f"{base}/v1/classify", files={"file": ("x", data)}, timeout=20)
            assert answer.status_code == 200, answer.text
            assert (
                answer.json()["version"] == result.version
                and len(answer.json()["predictions"]) == 5
            )
    finally:
        gateway.stop(1)
        server.stop()
