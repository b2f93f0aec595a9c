"""TensorFlow Serving's REST API over a ModelManager.

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            model status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature defs
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    row or columnar
    GET  /monitoring/prometheus/metrics (and /metrics)          Prometheus
         (and the path a --monitoring_config_file names)

Request and response JSON follow TensorFlow Serving's documented formats:
"instances" (row) -> "predictions", "inputs" (columnar) -> "outputs";
binary strings as {"b64": ...}; string outputs whose name ends in `_bytes`
come back base64-encoded, other strings as text.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from google.protobuf import json_format
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from cifarflow.serving.api_docs import add_offline_docs
from cifarflow.serving.asgi import NO_FASTAPI_TELEMETRY, install_error_handlers
from cifarflow.serving.errors import InvalidInput, MethodNotAllowed, NotFound
from cifarflow.serving.model_server.grpc_servicer import model_metadata, model_status
from cifarflow.serving.model_server.metrics import ModelServerMetrics
from cifarflow.serving.model_server.model import ModelManager, Signature
from cifarflow.serving.tensors import DT_STRING

# TensorFlow Serving's default monitoring path, and the usual one.
METRICS_PATHS = ("/monitoring/prometheus/metrics", "/metrics")
# A model is addressed by name, by name and version, or by name and label.
_MODEL_PATHS = (
    "/v1/models/{name}",
    "/v1/models/{name}/versions/{version}",
    "/v1/models/{name}/labels/{label}",
)


class PredictBody(BaseModel):
    """A predict request: row format (`instances`) or columnar (`inputs`), not both."""

    signature_name: str = Field("", description="default: serving_default")
    instances: list[Any] | None = Field(None, description='rows; binary strings as {"b64": ...}')
    inputs: Any = Field(None, description="columns: a tensor, or {input name: tensor}")


class Predictions(BaseModel):
    """`predictions` answers `instances`, `outputs` answers `inputs`."""

    predictions: Any = None
    outputs: Any = None


class ModelStatus(BaseModel):
    model_version_status: list[dict[str, Any]]


class ModelMetadata(BaseModel):
    model_spec: dict[str, Any]
    metadata: dict[str, Any]


def _json(payload: Any) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")


def _version(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidInput(f"Failed to convert version: {value} to numeric.")
    return int(value)


class RestApi:
    """TensorFlow Serving's REST API over a ModelManager, as a FastAPI app (`app`).

    Args:
        manager: the model served.
        prometheus_path: one more path for the metrics, from TF Serving's
            monitoring config (prometheus_config.path).
    """

    def __init__(self, manager: ModelManager, prometheus_path: str | None = None) -> None:
        self.manager = manager
        self.metrics = ModelServerMetrics(manager)
        self.metrics_paths = METRICS_PATHS + ((prometheus_path,) if prometheus_path else ())
        self.app = self._create_app()

    def _create_app(self) -> FastAPI:
        app = FastAPI(
            title="cifarflow model server (TensorFlow Serving REST API)",
            version="1",
            docs_url=None,  # add_offline_docs serves /docs without a CDN
            redoc_url=None,
            telemetry=NO_FASTAPI_TELEMETRY,
        )
        add_offline_docs(app)
        for path in dict.fromkeys(self.metrics_paths):
            app.add_api_route(
                path,
                self._metrics,
                methods=["GET", "HEAD"],
                summary="Prometheus metrics",
                response_class=Response,
                responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
            )
        for path in _MODEL_PATHS:
            app.add_api_route(
                path,
                self._status,
                methods=["GET"],
                response_model=ModelStatus,
                summary="model status (a label is ignored, as TF Serving does)",
            )
            app.add_api_route(
                path + "/metadata",
                self._metadata,
                methods=["GET"],
                response_model=ModelMetadata,
                summary="signature defs",
            )
            app.add_api_route(
                path + ":predict",
                self._predict,
                methods=["POST"],
                response_model=Predictions,
                summary="predict, row or columnar format",
                openapi_extra={
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": PredictBody.model_json_schema()}
                        },
                    }
                },
            )
        for path in _MODEL_PATHS:  # any other verb: TF Serving's "Malformed request"
            app.add_api_route(
                path + ":{verb}", self._other_verb, methods=["GET", "POST"], include_in_schema=False
            )
        install_error_handlers(app)
        return app

    async def _other_verb(self, request: Request, verb: str) -> Response:
        raise NotFound(
            f"Malformed request: {request.method} {request.url.path} (only :predict is served)"
        )

    async def _metrics(self) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def _status(
        self, name: str, version: str | None = None, label: str | None = None
    ) -> Response:
        if ":" in name:  # /v1/models/M:verb reached with GET
            verb = name.partition(":")[2]
            if verb != "predict":
                raise NotFound(
                    f"Malformed request: GET /v1/models/{name} (only :predict is served)"
                )
            raise MethodNotAllowed(f"use POST for :{verb}")
        return _json(await run_in_threadpool(self.status, name, _version(version), label))

    async def _metadata(
        self, name: str, version: str | None = None, label: str | None = None
    ) -> Response:
        return _json(await run_in_threadpool(self.metadata, name, _version(version), label))

    async def _predict(
        self, request: Request, name: str, version: str | None = None, label: str | None = None
    ) -> Response:
        body = await request.body()
        return _json(await run_in_threadpool(self.predict, name, _version(version), label, body))

    def status(self, name: str, version: int | None, label: str | None) -> dict[str, Any]:
        request = get_model_status_pb2.GetModelStatusRequest()
        _spec(request.model_spec, name, version, label)
        response = model_status(self.manager, request)
        return json_format.MessageToDict(
            response,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )

    def metadata(self, name: str, version: int | None, label: str | None) -> dict[str, Any]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        _spec(request.model_spec, name, version, label)
        response = model_metadata(self.manager, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {
            "model_spec": json_format.MessageToDict(
                response.model_spec,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            ),
            "metadata": {
                "signature_def": json_format.MessageToDict(
                    signature_map, preserving_proto_field_name=True
                )
            },
        }

    def predict(
        self, name: str, version: int | None, label: str | None, raw_body: bytes
    ) -> dict[str, Any]:
        served = self.manager.get(name, version, label)
        try:
            body = json.loads(raw_body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: [[[[... nested too deep
            raise InvalidInput(f"malformed JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidInput("JSON body must be an object with 'instances' or 'inputs'")
        signature_name = body.get("signature_name") or ""
        if not isinstance(signature_name, str):
            raise InvalidInput(
                f"'signature_name' must be a string, got {type(signature_name).__name__}"
            )
        signature = served.signature(signature_name)
        if ("instances" in body) == ("inputs" in body):
            raise InvalidInput(
                "Missing 'inputs' or 'instances' key"
                if "instances" not in body
                else "Only one of 'instances' or 'inputs' can be specified"
            )
        if "instances" in body:
            inputs = _rows_to_inputs(body["instances"], signature)
        else:
            inputs = _columns_to_inputs(body["inputs"], signature)
        signature_name, outputs = served.predict(signature.name, inputs)
        encoded = {k: _encode(k, v, signature.outputs[k].dtype) for k, v in outputs.items()}
        if "instances" in body:
            rows = len(next(iter(outputs.values())))
            if len(encoded) == 1:
                predictions: Any = next(iter(encoded.values()))
            else:
                predictions = [{k: v[i] for k, v in encoded.items()} for i in range(rows)]
            return {"predictions": predictions}
        return {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded}


def _spec(spec, name: str, version: int | None, label: str | None) -> None:
    spec.name = name
    if version is not None:
        spec.version.value = version
    elif label:
        spec.version_label = label


def _decode_value(value: Any, is_string: bool, where: str) -> Any:
    """Nested lists with {"b64": ...} leaves -> plain values (bytes for strings)."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise InvalidInput(f'{where}: an object value must be {{"b64": "..."}}')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"{where}: malformed base64: {exc}") from None
    if isinstance(value, list):
        return [_decode_value(v, is_string, where) for v in value]
    if is_string:
        if not isinstance(value, str):
            raise InvalidInput(
                f'{where}: expected a string or {{"b64": ...}}, got {type(value).__name__}'
            )
        return value.encode()
    if isinstance(value, str):
        raise InvalidInput(f"{where}: expected a number, got a string")
    return value


def _to_array(value: Any, is_string: bool, where: str) -> np.ndarray:
    decoded = _decode_value(value, is_string, where)
    try:
        if is_string:
            array = np.array(decoded, dtype=object)
            if array.dtype != object or any(not isinstance(v, bytes) for v in array.reshape(-1)):
                raise ValueError("ragged")
            return array
        return np.array(decoded)
    except ValueError:
        raise InvalidInput(f"{where}: the values do not form a rectangular tensor") from None


def _rows_to_inputs(instances: Any, signature: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise InvalidInput("'instances' must be a list")
    if not instances:
        raise InvalidInput("'instances' is empty: send at least one instance")
    names = list(signature.inputs)
    if all(isinstance(i, dict) and "b64" not in i for i in instances):
        columns: dict[str, list] = {n: [] for n in names}
        for i, instance in enumerate(instances):
            if set(instance) != set(names):
                raise InvalidInput(
                    f"instance {i} has keys {sorted(instance)}; the signature takes {names}"
                )
            for n in names:
                columns[n].append(instance[n])
        return {
            n: _to_array(v, signature.inputs[n].dtype == DT_STRING, f"instances[*].{n}")
            for n, v in columns.items()
        }
    if len(names) != 1:
        raise InvalidInput(
            f"the signature takes several inputs {names}: each instance must be an object"
        )
    return {
        names[0]: _to_array(instances, signature.inputs[names[0]].dtype == DT_STRING, "instances")
    }


def _columns_to_inputs(inputs: Any, signature: Signature) -> dict[str, np.ndarray]:
    names = list(signature.inputs)
    if isinstance(inputs, dict) and "b64" not in inputs:
        return {
            n: _to_array(
                v,
                signature.inputs.get(n) is not None and signature.inputs[n].dtype == DT_STRING,
                f"inputs.{n}",
            )
            for n, v in inputs.items()
        }
    if len(names) != 1:
        raise InvalidInput(
            f"the signature takes several inputs {names}: 'inputs' must be an object"
        )
    return {names[0]: _to_array(inputs, signature.inputs[names[0]].dtype == DT_STRING, "inputs")}


def _encode(name: str, array: np.ndarray, dtype: int) -> Any:
    if dtype == DT_STRING or array.dtype == object:
        as_b64 = name.endswith("_bytes")
        flat = [
            {"b64": base64.b64encode(v).decode()} if as_b64 else v.decode("utf-8", "replace")
            for v in array.reshape(-1)
        ]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    return array.tolist()
