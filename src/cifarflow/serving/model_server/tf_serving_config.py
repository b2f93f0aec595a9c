"""TensorFlow Serving's config files, read the way `tensorflow_model_server` reads them.

`--model_config_file` (ModelServerConfig), `--batching_parameters_file`
(BatchingParameters) and `--monitoring_config_file` (MonitoringConfig) are
text protobufs; they are parsed here with TF Serving's message definitions
and `google.protobuf.text_format`, and checked with the rules TF Serving
applies before it serves anything (tensorflow_serving/model_servers/
server_core.cc at tag 2.20.0: ValidateModelConfigList, GetPlatform). A file
TF Serving would refuse raises a ServingError whose `status_text` reads like
TF Serving's status ("INVALID_ARGUMENT: Invalid protobuf file: ...").

cifarflow's server serves one model from a local folder, so a config must
list exactly one model with a local absolute base_path; anything else is
refused with a message that says so, rather than half-served.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from google.protobuf import text_format

from cifarflow.errors import CifarflowError
from cifarflow.serving.errors import InvalidInput, NotFound, ServingError
from cifarflow.serving.model_server.batching import BatchingConfig

log = logging.getLogger(__name__)

# PrometheusExporter::kPrometheusPath (util/prometheus_exporter.cc:156-157).
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
TENSORFLOW_PLATFORM = "tensorflow"


def status_text(error: ServingError) -> str:
    """The error as absl::Status prints it: `CODE: message`."""
    return f"{error.grpc_code.name}: {error.message}"


class ServerStartError(CifarflowError):
    """TF Serving would not start: main.cc:342-345 prints this and returns -1 (exit status 255)."""

    exit_code = 255

    def __init__(self, error: ServingError) -> None:
        super().__init__(f"Failed to start server. Error: {status_text(error)}")
        self.error = error


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """A model_version_policy: which versions found under base_path are served.

    Attributes:
        choice: "latest", "all" or "specific" (TF Serving's policy_choice;
            unset means latest, file_system_storage_path_source.cc:293-295).
        num_versions: for latest, how many of the newest (at least 1, :148-149).
        versions: for specific, the versions named (those present are served).
    """

    choice: str = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    @classmethod
    def from_proto(cls, policy: Any) -> VersionPolicy:
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            return cls("all")
        if choice == "specific":
            if not policy.specific.versions:
                log.warning(
                    "model_version_policy specific names no versions: nothing will be served"
                )
            return cls("specific", versions=frozenset(policy.specific.versions))
        return cls("latest", num_versions=max(policy.latest.num_versions, 1))

    def select(self, available: Sequence[int]) -> set[int]:
        """The versions to serve among `available` (the complete versions on disk)."""
        if self.choice == "all":
            return set(available)
        if self.choice == "specific":
            return set(available) & self.versions
        return set(sorted(available)[-self.num_versions :])


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """The one model of a ModelServerConfig, as this server serves it.

    Attributes:
        name: the model name requests ask for.
        base_path: the folder holding its numbered version folders.
        policy: which versions are served.
        labels: version_labels, label -> version.
    """

    name: str
    base_path: Path
    policy: VersionPolicy
    labels: Mapping[str, int]


@dataclasses.dataclass(frozen=True)
class TfServingOptions:
    """What TF Serving's flags set besides the server's ports, batching and poll interval.

    Attributes:
        model_config_file: --model_config_file, re-read on every reload.
        model: what that file held at start-up.
        config_poll_s: --model_config_file_poll_wait_seconds; 0 or less:
            read once (server.cc:337-350 polls only when > 0).
        allow_version_labels_for_unavailable_models: the flag of that name.
    """

    model_config_file: Path
    model: ServedModel
    config_poll_s: float = 0.0
    allow_version_labels_for_unavailable_models: bool = False


def read_text_proto(path: str | Path, message: Any) -> Any:
    """Parses `path` into `message` (util/proto_util.h ParseProtoTextFile's errors)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise NotFound(f"{path}; No such file or directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"Invalid protobuf file: '{path}' ({exc})") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as exc:
        # TF Serving says only "Invalid protobuf file"; the parser's line and
        # column are added here because they are what a person needs.
        raise InvalidInput(f"Invalid protobuf file: '{path}' ({exc})") from None


def load_model_config(path: str | Path) -> ServedModel:
    """Reads and checks a `--model_config_file`; raises InvalidInput/NotFound as TF Serving would refuse it."""
    return served_model(read_model_server_config(path), path)


def read_model_server_config(path: str | Path) -> Any:
    """The file as a ModelServerConfig, unchecked."""
    from tensorflow_serving.config import model_server_config_pb2

    return read_text_proto(path, model_server_config_pb2.ModelServerConfig())


def served_model(config: Any, path: str | Path) -> ServedModel:
    """The one model a ModelServerConfig lists, after TF Serving's checks and this server's."""
    which = config.WhichOneof("config")
    if which == "custom_model_config":
        raise InvalidInput(
            f"{path}: custom_model_config is not supported by cifarflow serve model; use model_config_list"
        )
    models = list(config.model_config_list.config) if which else []
    _validate_model_config_list(models)
    if len(models) != 1:
        raise InvalidInput(
            f"{path} lists {len(models)} models; cifarflow serve model serves exactly one"
        )
    (model,) = models
    if "://" in model.base_path:
        raise InvalidInput(
            f"model {model.name}: base_path {model.base_path} is a URI; cifarflow serve model reads a "
            "local folder (sync the store into one, as the manifests' sync containers do)"
        )
    return ServedModel(
        name=model.name,
        base_path=Path(model.base_path),
        policy=VersionPolicy.from_proto(model.model_version_policy),
        labels=MappingProxyType(dict(model.version_labels)),
    )


def _validate_model_config_list(models: list) -> None:
    """TF Serving's checks on a model_config_list, in its order (server_core.cc, tag 2.20.0)."""
    seen: set[str] = set()
    for model in models:  # ValidateModelConfigList, :117-127
        if model.name in seen:
            raise InvalidInput(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
    for model in models:  # all base paths absolute without model_config_list_root_dir, :140-148
        if "://" not in model.base_path and not model.base_path.startswith("/"):
            raise InvalidInput(
                f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}"
            )
    for model in models:
        platform = _platform(model)
        if platform != TENSORFLOW_PLATFORM:  # CreateStoragePathRoutes, :662-666
            raise InvalidInput(f"Model {model.name} requests unsupported platform {platform}")


def _platform(model: Any) -> str:
    """GetPlatform (server_core.cc:77-104): model_type is the deprecated spelling of model_platform."""
    if model.model_type:  # MODEL_TYPE_UNSPECIFIED is 0
        if model.model_platform:
            raise InvalidInput(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                f"ModelServerConfig::model_platform, model name is {model.name}"
            )
        if model.model_type != 1:  # ModelType::TENSORFLOW
            raise InvalidInput(
                f"ModelServerConfig::model_type choice {model.model_type} not supported."
            )
        return TENSORFLOW_PLATFORM
    if not model.model_platform:
        raise InvalidInput(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            f"ModelServerConfig::model_platform, model name is {model.name}"
        )
    return model.model_platform


# BatchingParameters fields with a BatchingConfig counterpart, and how each maps.
_BATCHING_FIELDS: dict[str, Callable[[int], tuple[str, Any]]] = {
    "max_batch_size": lambda v: ("max_batch_size", v),
    "batch_timeout_micros": lambda v: ("timeout_s", v / 1e6),
    "num_batch_threads": lambda v: ("num_threads", v),
}


def load_batching_parameters(path: str | Path, base: BatchingConfig) -> BatchingConfig:
    """`--batching_parameters_file` as the server's BatchingConfig.

    Fields the file sets replace `base` (the server's own settings); fields
    it leaves out keep them. TF Serving queues whole batches
    (max_enqueued_batches); this batcher queues requests, so its queue holds
    max_enqueued_batches x max_batch_size requests, the most that many full
    batches could hold. Fields with no counterpart here (allowed_batch_sizes,
    padding, large-batch splitting, thread pool names) are logged and ignored.
    """
    from cifarflow.serving.model_server.tf_serving_messages import batching_parameters

    params = read_text_proto(path, batching_parameters())
    values: dict[str, Any] = {}
    for field, convert in _BATCHING_FIELDS.items():
        if params.HasField(field):
            value = getattr(params, field).value
            minimum = 0 if field == "batch_timeout_micros" else 1
            if value < minimum:
                raise InvalidInput(f"{path}: {field} must be {minimum} or more, got {value}")
            key, converted = convert(value)
            values[key] = converted
    if params.HasField("max_enqueued_batches"):
        batches = params.max_enqueued_batches.value
        if batches < 1:
            raise InvalidInput(f"{path}: max_enqueued_batches must be 1 or more, got {batches}")
        values["max_queued"] = batches * values.get("max_batch_size", base.max_batch_size)
    ignored = [
        f.name
        for f, _ in params.ListFields()
        if f.name not in _BATCHING_FIELDS and f.name != "max_enqueued_batches"
    ]
    if ignored:
        log.warning(
            "%s: ignoring %s (no counterpart in cifarflow's batcher)", path, ", ".join(ignored)
        )
    return dataclasses.replace(base, **values)


def load_prometheus_path(path: str | Path) -> str | None:
    """`--monitoring_config_file`: the path Prometheus metrics are served at, None when not enabled.

    An empty path means TF Serving's default (http_server.cc:225-232).
    """
    from cifarflow.serving.model_server.tf_serving_messages import monitoring_config

    config = read_text_proto(path, monitoring_config())
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
