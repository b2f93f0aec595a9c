"""`cifarflow predict`: classify images over gRPC, through the gateway or straight to TF Serving.

Inputs may be files, folders (their images, sorted) and http(s) URLs (fetched
here, with a size and time limit). Talking to the gateway uses its Classifier
service; `tf_serving=True` calls PredictionService.Predict on a TensorFlow
Serving (or `cifarflow serve model`) endpoint and ranks the probabilities
itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

import grpc
import numpy as np

from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.defaults import MODEL_NAME
from cifarflow.errors import BadInputError, RemoteError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}
TOKEN_ENV = "CIFARFLOW_GATEWAY_TOKEN"


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Where and how `cifarflow predict` calls.

    Attributes:
        server: HOST:PORT of the gateway's gRPC port, or of TF Serving with tf_serving.
        tf_serving: talk TensorFlow Serving's PredictionService instead of the gateway's service.
        model_name: the model to ask TF Serving for.
        top_k: classes to return per image.
        timeout_s: deadline of each call (and of each URL fetch).
        max_image_bytes: refuse larger files or URL bodies before sending.
        token: bearer token for a gateway with auth on (default: CIFARFLOW_GATEWAY_TOKEN).
    """

    server: str
    tf_serving: bool = False
    model_name: str = MODEL_NAME
    top_k: int = 5
    timeout_s: float = 10.0
    max_image_bytes: int = 8 * 1024 * 1024
    token: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class ImagePrediction:
    source: str
    model: str = ""
    version: int = 0
    predictions: tuple[tuple[str, float], ...] = ()
    error: str = ""


def collect_inputs(
    items: Iterable[str], config: ClientConfig
) -> list[tuple[str, bytes | None, str]]:
    """(name, bytes, error) for each image; folders expand to their image files."""
    collected: list[tuple[str, bytes | None, str]] = []
    for item in items:
        if item.startswith(("http://", "https://")):
            collected.append(_fetch(item, config))
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise BadInputError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            collected.extend(_read(p, config) for p in files)
        elif path.is_file():
            collected.append(_read(path, config))
        else:
            raise BadInputError(f"no such file, folder or URL: {item}")
    if not collected:
        raise BadInputError("no images given")
    return collected


def _read(path: Path, config: ClientConfig) -> tuple[str, bytes | None, str]:
    size = path.stat().st_size
    if size > config.max_image_bytes:
        return str(path), None, f"{size} bytes is over the {config.max_image_bytes}-byte limit"
    return str(path), path.read_bytes(), ""


def _fetch(url: str, config: ClientConfig) -> tuple[str, bytes | None, str]:
    import requests

    try:
        with requests.get(url, timeout=config.timeout_s, stream=True) as response:
            if response.status_code != 200:
                return url, None, f"HTTP {response.status_code}"
            data = b""
            for chunk in response.iter_content(64 * 1024):
                data += chunk
                if len(data) > config.max_image_bytes:
                    return url, None, f"over the {config.max_image_bytes}-byte limit"
            return url, data, ""
    except requests.RequestException as exc:
        return url, None, f"cannot fetch: {type(exc).__name__}"


def _channel(config: ClientConfig) -> grpc.Channel:
    limit = 2 * config.max_image_bytes + 1024 * 1024
    return grpc.insecure_channel(
        config.server,
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        ],
    )


def _fail(exc: grpc.RpcError, config: ClientConfig) -> Exception | None:
    """Errors that end the whole run (server unreachable, model missing); None for per-image ones."""
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return RemoteError(f"cannot reach {config.server}: {exc.details()}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return RemoteError(f"{config.server} did not answer within {config.timeout_s:g}s")
    if code == grpc.StatusCode.NOT_FOUND:
        return RemoteError(
            f"model {config.model_name!r} not found on {config.server}: {exc.details()}"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return RemoteError(
            f"{config.server} refused the request: {exc.details()} (set {TOKEN_ENV})"
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        hint = "" if config.tf_serving else " (is it TensorFlow Serving? add --tf-serving)"
        return RemoteError(f"{config.server} does not offer this service{hint}")
    return None


def predict(items: Iterable[str], config: ClientConfig) -> list[ImagePrediction]:
    """Classifies every image; bad images get an `error`, an unreachable server raises.

    Raises:
        BadInputError: a path that does not exist, a folder without images.
        RemoteError: the server is unreachable, the model is missing, auth failed.
    """
    inputs = collect_inputs(items, config)
    token = config.token if config.token is not None else os.environ.get(TOKEN_ENV) or None
    metadata = (("authorization", f"Bearer {token}"),) if token and not config.tf_serving else None
    results = []
    with _channel(config) as channel:
        call = (
            _tf_serving_call(channel, config)
            if config.tf_serving
            else _gateway_call(channel, config, metadata)
        )
        for name, data, error in inputs:
            if data is None:
                results.append(ImagePrediction(name, error=error))
                continue
            try:
                results.append(call(name, data))
            except grpc.RpcError as exc:
                fatal = _fail(exc, config)
                if fatal is not None:
                    raise fatal from None
                results.append(ImagePrediction(name, error=exc.details() or exc.code().name))
    return results


def _gateway_call(channel: grpc.Channel, config: ClientConfig, metadata):
    from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc

    stub = classifier_pb2_grpc.ClassifierStub(channel)

    def call(name: str, data: bytes) -> ImagePrediction:
        response = stub.Classify(
            classifier_pb2.ClassifyRequest(image=data, top_k=config.top_k),
            timeout=config.timeout_s,
            metadata=metadata,
        )
        return ImagePrediction(
            name,
            response.model,
            response.version,
            tuple((p.class_name, p.probability) for p in response.predictions),
        )

    return call


def _tf_serving_call(channel: grpc.Channel, config: ClientConfig):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from cifarflow.serving.tensors import DT_STRING, fill_tensor_proto, from_tensor_proto

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def call(name: str, data: bytes) -> ImagePrediction:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = config.model_name
        request.model_spec.signature_name = "serving_default"
        fill_tensor_proto(request.inputs["image_bytes"], np.array([data], dtype=object), DT_STRING)
        request.output_filter.append("probabilities")
        response = stub.Predict(request, timeout=config.timeout_s)
        probabilities = from_tensor_proto(response.outputs["probabilities"])[0]
        order = np.argsort(-probabilities, kind="stable")[: config.top_k]
        names = [
            COARSE_CLASS_NAMES[i] if i < len(COARSE_CLASS_NAMES) else f"class_{i}" for i in order
        ]
        return ImagePrediction(
            name,
            response.model_spec.name,
            int(response.model_spec.version.value),
            tuple((n, float(probabilities[i])) for n, i in zip(names, order, strict=True)),
        )

    return call


def format_table(results: list[ImagePrediction]) -> str:
    """A plain-text table: one row per (image, rank); errors on the image's row."""
    width = max(12, *(len(r.source) for r in results))
    lines = [f"{'IMAGE':<{width}}  RANK  {'CLASS':<31}  PROBABILITY"]
    for result in results:
        if result.error:
            lines.append(f"{result.source:<{width}}  -     error: {result.error}")
            continue
        for rank, (name, probability) in enumerate(result.predictions, 1):
            label = result.source if rank == 1 else ""
            lines.append(f"{label:<{width}}  {rank:<4}  {name:<31}  {probability:.4f}")
    versions = sorted({(r.model, r.version) for r in results if not r.error})
    if versions:
        lines.append("model: " + ", ".join(f"{m} v{v}" for m, v in versions))
    return "\n".join(lines)
