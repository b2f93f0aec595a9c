"""The two TensorFlow Serving config messages that tensorflow-serving-api does not ship.

`ModelServerConfig` comes from the installed `tensorflow_serving.config`
package, but the wheel (2.21.0) has no `monitoring_config_pb2` and no
`session_bundle_config_pb2`, so `--monitoring_config_file` and
`--batching_parameters_file` could not be parsed with TF Serving's own
messages. These are the same messages described field by field (names,
numbers and types as in `tensorflow_serving/config/monitoring_config.proto`
and `servables/tensorflow/session_bundle_config.proto` at tag 2.20.0), built
in a descriptor pool of their own so they can never clash with a later wheel
that ships the real ones. Text format only needs names and types; the numbers
are kept so the binary form matches too.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

PACKAGE = "tensorflow.serving"

_F = descriptor_pb2.FieldDescriptorProto

# (field name, number, type, type name or None, repeated)
_BATCHING_PARAMETERS = (
    ("max_batch_size", 1, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value", False),
    ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value", False),
    ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value", False),
    ("num_batch_threads", 4, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value", False),
    ("thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue", False),
    ("allowed_batch_sizes", 6, _F.TYPE_INT64, None, True),
    ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, None, False),
    ("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, ".google.protobuf.BoolValue", False),
    ("max_execution_batch_size", 9, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value", False),
)
_PROMETHEUS_CONFIG = (
    ("enable", 1, _F.TYPE_BOOL, None, False),
    ("path", 2, _F.TYPE_STRING, None, False),
)
_MONITORING_CONFIG = (
    ("prometheus_config", 1, _F.TYPE_MESSAGE, f".{PACKAGE}.PrometheusConfig", False),
)


def _message(file: descriptor_pb2.FileDescriptorProto, name: str, fields: tuple) -> None:
    message = file.message_type.add(name=name)
    for field_name, number, field_type, type_name, repeated in fields:
        field = message.field.add(
            name=field_name,
            number=number,
            type=field_type,
            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
        )
        if type_name:
            field.type_name = type_name


@functools.cache
def _classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(
        name="cifarflow/tf_serving_config_messages.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=[wrappers.name],
    )
    _message(file, "BatchingParameters", _BATCHING_PARAMETERS)
    _message(file, "PrometheusConfig", _PROMETHEUS_CONFIG)
    _message(file, "MonitoringConfig", _MONITORING_CONFIG)
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in ("BatchingParameters", "MonitoringConfig")
    }


def batching_parameters() -> Any:
    """An empty `tensorflow.serving.BatchingParameters`."""
    return _classes()["BatchingParameters"]()


def monitoring_config() -> Any:
    """An empty `tensorflow.serving.MonitoringConfig`."""
    return _classes()["MonitoringConfig"]()
