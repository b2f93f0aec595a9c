"""TensorFlow Serving's gRPC API over a ModelManager.

PredictionService.Predict and GetModelMetadata, ModelService.GetModelStatus,
with TensorFlow Serving's status codes and wording, so the stock
`tensorflow_serving.apis` stubs cannot tell the difference. Classify,
Regress and MultiInference answer UNIMPLEMENTED (the base class default).
"""

from __future__ import annotations

import functools
import logging

from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cifarflow.serving.errors import InvalidInput, ServingError, as_serving_error
from cifarflow.serving.model_server.model import ModelManager, ServedVersion
from cifarflow.serving.tensors import fill_tensor_proto, from_tensor_proto

log = logging.getLogger(__name__)


def _aborts_on_error(method):
    """Turns ServingErrors into gRPC statuses; anything else is INTERNAL and logged."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as exc:
            error = exc
        except Exception as exc:
            log.exception("unhandled error in %s", method.__name__)
            error = as_serving_error(exc)
        context.abort(error.grpc_code, error.message)

    return wrapper


def resolve(manager: ModelManager, spec) -> ServedVersion:
    if not spec.name:
        raise InvalidInput("Missing ModelSpec")
    which = spec.WhichOneof("version_choice")
    version = spec.version.value if which == "version" else None
    label = spec.version_label if which == "version_label" else None
    return manager.get(spec.name, version, label)


def fill_spec(target, served: ServedVersion, signature_name: str) -> None:
    target.name = served.model_name
    target.version.value = served.version
    target.signature_name = signature_name


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    @_aborts_on_error
    def Predict(self, request, context):
        served = resolve(self.manager, request.model_spec)
        inputs = {name: from_tensor_proto(proto, name) for name, proto in request.inputs.items()}
        signature, outputs = served.predict(
            request.model_spec.signature_name, inputs, list(request.output_filter)
        )
        response = predict_pb2.PredictResponse()
        fill_spec(response.model_spec, served, signature)
        for name, value in outputs.items():
            fill_tensor_proto(
                response.outputs[name], value, served.signatures[signature].outputs[name].dtype
            )
        return response

    @_aborts_on_error
    def GetModelMetadata(self, request, context):
        return model_metadata(self.manager, request)


def model_metadata(manager: ModelManager, request):
    served = resolve(manager, request.model_spec)
    fields = list(request.metadata_field)
    if not fields:
        raise InvalidInput("GetModelMetadataRequest must specify at least one metadata_field")
    unsupported = [f for f in fields if f != "signature_def"]
    if unsupported:
        raise InvalidInput(f"Metadata field {unsupported[0]} is not supported")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    fill_spec(response.model_spec, served, "")
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, definition in served.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(definition)
    response.metadata["signature_def"].Pack(signature_map)
    return response


def model_status(manager: ModelManager, request):
    spec = request.model_spec
    if not spec.name:
        raise InvalidInput("Missing model name in request.")
    # Like TF Serving (get_model_status_impl.cc:82-106), only a version
    # narrows the answer: a version_label is not resolved, every version of
    # the model is reported, so a probe on /labels/<l> says nothing of <l>.
    version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in manager.statuses(spec.name, version):
        entry = response.model_version_status.add()
        entry.version = status.version
        entry.state = status.state
        entry.status.SetInParent()  # TF Serving always reports a status (OK included)
        if status.error:
            entry.status.error_code = (
                2  # tensorflow.error.UNKNOWN, as TF Serving reports a failed load
            )
            entry.status.error_message = status.error
    return response


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    @_aborts_on_error
    def GetModelStatus(self, request, context):
        return model_status(self.manager, request)
