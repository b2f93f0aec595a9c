"""A served model's lifecycle: find versions, load, swap, predict.

`ModelManager` watches a model's folder (`<base path>/<version>/`, complete
when `cifarflow.json` exists), loads the versions it should serve (the
newest, or the one a store label names; or, under a TensorFlow Serving
config, those its model_version_policy picks) in the background, swaps them
in atomically and only then unloads old ones, so requests never fail during
a rollout. A version that fails to load, or that drops or changes a
signature the served version offers (`check_compatible`), is recorded
(GetModelStatus and the metrics show its error) and the old one keeps
serving.

`ServedVersion.predict` is the KServe-style pipeline for one request:
`preprocess` (check the inputs against the signature, like TensorFlow
Serving: alias names, dtypes, shapes, no empty batch), `run` (through the
batcher), `postprocess` (output filter).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.serving.errors import FailedPrecondition, InvalidInput, NotFound, Unavailable
from cifarflow.serving.model_server.batching import Batcher, BatchingConfig
from cifarflow.serving.model_server.periodic import PeriodicTask
from cifarflow.serving.model_server.tf_serving_config import VersionPolicy
from cifarflow.serving.model_server.version_labels import VersionLabels
from cifarflow.serving.store.backends import MANIFEST
from cifarflow.serving.store.model_store import LABELS, complete_versions

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"

# TensorFlow Serving's ModelVersionStatus.State values.
STATE_START, STATE_LOADING, STATE_AVAILABLE, STATE_UNLOADING, STATE_END = 10, 20, 30, 40, 50


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    dtype: int  # a tensorflow DataType enum value
    shape: tuple[int | None, ...] | None  # None: unknown rank

    def check(self, name: str, array: np.ndarray) -> np.ndarray:
        """Casts/validates one input the way TensorFlow Serving would refuse it."""
        from cifarflow.serving.tensors import DT_STRING, DTYPE_NAMES, NUMPY_FOR_DTYPE

        if self.dtype == DT_STRING:
            if array.dtype.kind not in "OSU":
                raise InvalidInput(f"input {name!r} must be DT_STRING, got {array.dtype}")
        else:
            want = NUMPY_FOR_DTYPE.get(self.dtype)
            if want is None:
                raise InvalidInput(f"input {name!r}: unsupported dtype {self.dtype}")
            if array.dtype != want:
                if array.dtype.kind in "OSU":
                    raise InvalidInput(
                        f"input {name!r} must be {DTYPE_NAMES[self.dtype]}, got strings"
                    )
                converted = array.astype(want)
                if (
                    array.dtype.kind == "f"
                    and want.kind in "iu"
                    and not np.array_equal(converted, array)
                ):
                    raise InvalidInput(
                        f"input {name!r} must be {DTYPE_NAMES[self.dtype]}: got non-integer values"
                    )
                if (
                    want.kind in "iu"
                    and array.dtype.kind in "iuf"
                    and array.size
                    and (array.min() < np.iinfo(want).min or array.max() > np.iinfo(want).max)
                ):
                    raise InvalidInput(
                        f"input {name!r}: values outside the range of {DTYPE_NAMES[self.dtype]}"
                    )
                array = converted
        if self.shape is not None:
            if array.ndim != len(self.shape):
                raise InvalidInput(
                    f"input {name!r} must have rank {len(self.shape)} (shape {_shape_text(self.shape)}), got shape {list(array.shape)}"
                )
            for want_dim, got in zip(self.shape, array.shape, strict=True):
                if want_dim is not None and want_dim != got:
                    raise InvalidInput(
                        f"input {name!r} must have shape {_shape_text(self.shape)}, got {list(array.shape)}"
                    )
        if array.ndim == 0 or array.shape[0] == 0:
            # An empty batch crashes oneDNN kernels: refuse it here (docs/training.md, "Signatures").
            raise InvalidInput(f"input {name!r} is an empty batch: send at least one row")
        return array


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


@dataclasses.dataclass
class Signature:
    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    function: Callable[..., Any]


class ServedVersion:
    """One loaded version: its signatures, manifest and batchers."""

    def __init__(
        self,
        model_name: str,
        version: int,
        path: Path,
        batching: BatchingConfig | None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        import tensorflow as tf

        self.model_name = model_name
        self.version = version
        self.path = path
        self.manifest = json.loads((path / MANIFEST).read_text())
        self._loaded = tf.saved_model.load(str(path))
        self.signatures: dict[str, Signature] = {}
        for name, function in self._loaded.signatures.items():
            _, kwargs = function.structured_input_signature
            self.signatures[name] = Signature(
                name,
                {k: _spec(v) for k, v in kwargs.items()},
                {k: _spec(v) for k, v in function.structured_outputs.items()},
                _own_concrete_function(function, kwargs),
            )
        self.signature_defs = _read_signature_defs(path)
        self._batchers: dict[str, Batcher] = {}
        if batching is not None:
            for name in self.signatures:
                self._batchers[name] = Batcher(self._runner(name), batching, on_batch)
        self._on_batch = on_batch or (lambda rows: None)

    def _runner(
        self, signature: str
    ) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
        import tensorflow as tf

        function = self.signatures[signature].function

        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            try:
                outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
            except tf.errors.InvalidArgumentError as exc:
                raise InvalidInput(_first_line(exc.message)) from None
            return {k: v.numpy() for k, v in outputs.items()}

        return run

    def warm_up(self) -> None:
        """Runs each signature once so the first real request does not pay for tracing."""
        for signature in self.signatures.values():
            try:
                self._runner(signature.name)({k: _dummy(s) for k, s in signature.inputs.items()})
            except Exception as exc:  # a model may take inputs we cannot fake; it still serves
                log.info(
                    "warm-up of %s v%d %s skipped: %s",
                    self.model_name,
                    self.version,
                    signature.name,
                    exc,
                )

    def signature(self, name: str) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            # TensorFlow Serving's wording and code for an unknown signature.
            raise FailedPrecondition(f'Serving signature key "{name}" not found.')
        return self.signatures[name]

    def preprocess(
        self, signature: Signature, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        sent, expected = set(inputs), set(signature.inputs)
        if sent != expected:
            raise InvalidInput(
                f"input size does not match signature: {len(sent)}!={len(expected)} len({sorted(sent)}) != "
                f"len({sorted(expected)}). Sent extra: {sorted(sent - expected)}. Missing but required: {sorted(expected - sent)}."
            )
        checked = {
            name: signature.inputs[name].check(name, array) for name, array in inputs.items()
        }
        rows = {a.shape[0] for a in checked.values()}
        if len(rows) > 1:
            raise InvalidInput(f"inputs have different batch sizes: {sorted(rows)}")
        return checked

    def postprocess(
        self, signature: Signature, outputs: dict[str, np.ndarray], output_filter: list[str]
    ) -> dict[str, np.ndarray]:
        if not output_filter:
            return outputs
        unknown = sorted(set(output_filter) - set(signature.outputs))
        if unknown:
            raise InvalidInput(f"output tensor alias not found in signature: {unknown[0]}")
        return {k: outputs[k] for k in output_filter}

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: list[str] | None = None,
    ) -> tuple[str, dict[str, np.ndarray]]:
        signature = self.signature(signature_name)
        checked = self.preprocess(signature, inputs)
        batcher = self._batchers.get(signature.name)
        if batcher is not None:
            outputs = batcher.submit(checked)
        else:
            outputs = self._runner(signature.name)(checked)
            self._on_batch(next(iter(checked.values())).shape[0])
        return signature.name, self.postprocess(signature, outputs, list(output_filter or []))

    def close(self) -> None:
        for batcher in self._batchers.values():
            batcher.close()


def _own_concrete_function(signature, input_specs: dict) -> Callable[..., Any]:
    """The loaded signature wrapped in a function traced here, which is cheaper to call.

    Calling a restored signature maps every captured variable through Python
    helpers on each call (108 for the ResNet-20); the wrapper's call does
    not. Same graph, same outputs, less Python per call (measured in
    docs/serving.md, "Why the model server's defaults").
    """
    import tensorflow as tf

    try:
        wrapper = tf.function(lambda **inputs: signature(**inputs))
        return wrapper.get_concrete_function(
            **{k: tf.TensorSpec(v.shape, v.dtype, name=k) for k, v in input_specs.items()}
        )
    except Exception as exc:  # an unusual signature still serves through its own call
        log.info("serving signature %s without a wrapper: %s", getattr(signature, "name", "?"), exc)
        return signature


def _spec(tensor_spec) -> TensorSpec:
    shape = None if tensor_spec.shape.rank is None else tuple(tensor_spec.shape.as_list())
    return TensorSpec(int(tensor_spec.dtype.as_datatype_enum), shape)


def _dummy(spec: TensorSpec) -> np.ndarray:
    from cifarflow.serving.tensors import DT_STRING, NUMPY_FOR_DTYPE

    shape = tuple(1 if d is None else d for d in (spec.shape or (1,)))
    if spec.dtype == DT_STRING:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (128, 128, 128)).save(buffer, "PNG")
        return np.full(shape, buffer.getvalue(), dtype=object)
    return np.zeros(shape, NUMPY_FOR_DTYPE[spec.dtype])


def _read_signature_defs(path: Path) -> dict[str, Any]:
    """The SignatureDefs as TensorFlow Serving reports them (from saved_model.pb)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    for meta_graph in saved.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    return dict(saved.meta_graphs[0].signature_def) if saved.meta_graphs else {}


def _first_line(text: str) -> str:
    # "{{function_node __inference_...}}" names the graph function the error came from: noise to a client.
    lines = [
        re.sub(r"^(\{\{function_node [^}]*\}\}\s*)+", "", line.strip())
        for line in str(text).splitlines()
        if line.strip()
    ]
    # TF graph errors put the useful sentence after a "Detected at node" preamble.
    for line in reversed(lines):
        if not line.startswith(("[[", "Detected at", "<stack", "Graph execution")):
            return line
    return lines[0] if lines else "invalid argument"


def check_compatible(new: ServedVersion, current: ServedVersion) -> None:
    """Raises FailedPrecondition when `new` cannot answer what clients of `current` send.

    Every signature `current` serves must still be there, take the same
    inputs (names, dtypes, shapes it accepted), and return the outputs it
    returned. A version that breaks this would fail every request after the
    swap, so it is refused like one that does not load. Extra signatures and
    outputs are fine.
    """
    problems = []
    for name in sorted(current.signatures):
        old, got = current.signatures[name], new.signatures.get(name)
        if got is None:
            problems.append(f"signature {name!r} is missing")
            continue
        if set(got.inputs) != set(old.inputs):
            problems.append(
                f"signature {name!r} takes inputs {sorted(got.inputs)}, not {sorted(old.inputs)}"
            )
        for key in sorted(set(got.inputs) & set(old.inputs)):
            if got.inputs[key].dtype != old.inputs[key].dtype or not _accepts(
                got.inputs[key].shape, old.inputs[key].shape
            ):
                problems.append(f"signature {name!r} input {key!r} changed type or shape")
        for key in sorted(old.outputs):
            if key not in got.outputs or got.outputs[key].dtype != old.outputs[key].dtype:
                problems.append(f"signature {name!r} lost output {key!r} or changed its type")
    if problems:
        raise FailedPrecondition(
            f"version {new.version} is not compatible with version {current.version} being served: "
            + "; ".join(problems)
        )


def _accepts(new: tuple[int | None, ...] | None, old: tuple[int | None, ...] | None) -> bool:
    """Whether a tensor of shape `new` takes everything one of shape `old` took."""
    if new is None:
        return True
    if old is None or len(new) != len(old):
        return False
    return all(n is None or n == o for n, o in zip(new, old, strict=True))


@dataclasses.dataclass
class VersionStatus:
    version: int
    state: int
    error: str = ""


@dataclasses.dataclass(frozen=True)
class ManagerConfig:
    """How the model manager picks, loads and swaps versions.

    Attributes:
        label: serve the version this label names instead of the newest
            (the newest while the label is not set).
        poll_interval_s: how often the folder is checked for new versions;
            0 or less: only once, at start (TF Serving's
            --file_system_poll_wait_seconds=0).
        batching: None turns server-side batching off.
        warm_up: run each signature once after loading, before serving.
        policy: a TensorFlow Serving model_version_policy; when set it decides
            which versions are served, requests naming no version get the
            newest loaded one (TF Serving's Latest), and `label` and the
            store's labels file play no part.
    """

    label: str | None = None
    poll_interval_s: float = 5.0
    batching: BatchingConfig | None = dataclasses.field(default_factory=BatchingConfig)
    warm_up: bool = True
    policy: VersionPolicy | None = None


class ModelManager:
    """The versions of one model in a local folder, loaded and hot-swapped.

    Args:
        base_path: the model's folder, holding one folder per version.
        model_name: the name requests use.
        config: what to serve and how.
        refresh: run before each poll (an s3:// store syncs here).
        on_batch: told the rows of each model call.
        labels: TensorFlow Serving's configured labels; when given, requests
            by label resolve through them instead of the store's labels file.
    """

    def __init__(
        self,
        base_path: Path,
        model_name: str,
        config: ManagerConfig,
        refresh: Callable[[], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        labels: VersionLabels | None = None,
    ) -> None:
        self.base_path = Path(base_path)
        self.model_name = model_name
        self.config = config
        self._policy = config.policy
        self._configured_labels = labels
        self._poll_lock = threading.Lock()  # the poller and a config reload never poll at once
        self._refresh = refresh or (lambda: None)
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._served: dict[int, ServedVersion] = {}
        self._default: int | None = None
        self._labels: dict[str, int] = {}
        self._status: dict[int, VersionStatus] = {}
        self._failed: dict[int, float] = {}  # version -> manifest mtime when it failed
        self._load_attempts: collections.Counter[tuple[int, bool]] = (
            collections.Counter()
        )  # (version, ok) -> count
        self._poller = PeriodicTask(
            "version-poller",
            self.config.poll_interval_s,
            self.poll,
            f"polling {self.base_path} for new versions",
        )
        self._warned_label = False

    # -- requests ---------------------------------------------------------------

    def get(
        self, model_name: str, version: int | None = None, label: str | None = None
    ) -> ServedVersion:
        """The version a request asks for, with TensorFlow Serving's NOT_FOUND wording."""
        if model_name != self.model_name:
            what = f"Specific({model_name}, {version})" if version else f"Latest({model_name})"
            raise NotFound(f"Servable not found for request: {what}")
        if label and self._configured_labels is not None:
            version = self._configured_labels.version_for(label)
        with self._lock:
            if label and self._configured_labels is None:
                if label not in self._labels:
                    # TF Serving's GetModelVersionForLabel: INVALID_ARGUMENT, not NOT_FOUND.
                    raise InvalidInput(f"Unrecognized servable version label: {label}")
                version = self._labels[label]
            if version:
                served = self._served.get(version)
                if served is None:
                    raise NotFound(
                        f"Servable not found for request: Specific({model_name}, {version})"
                    )
                return served
            if self._default is None:
                raise NotFound(f"Servable not found for request: Latest({model_name})")
            return self._served[self._default]

    def statuses(self, model_name: str, version: int | None = None) -> list[VersionStatus]:
        if model_name != self.model_name:
            raise NotFound(f"Could not find any versions of model {model_name}")
        with self._lock:
            if version:
                if version not in self._status:
                    raise NotFound(f"Could not find version {version} of model {model_name}")
                return [self._status[version]]
            if not self._status:
                raise NotFound(f"Could not find any versions of model {model_name}")
            return [self._status[v] for v in sorted(self._status, reverse=True)]

    def snapshot(self) -> tuple[list[VersionStatus], dict[tuple[int, bool], int], int | None]:
        """(every version's status, load attempts by (version, succeeded), the default version), for metrics."""
        with self._lock:
            statuses = [dataclasses.replace(self._status[v]) for v in sorted(self._status)]
            return statuses, dict(self._load_attempts), self._default

    def version_path(self, version: int) -> Path:
        return self.base_path / str(version)

    def is_available(self, version: int) -> bool:
        """Whether `version` is loaded and answering (TF Serving's AVAILABLE)."""
        with self._lock:
            return version in self._served

    def set_policy(self, policy: VersionPolicy) -> None:
        """Serves what `policy` picks from the next poll on (a TF Serving config reload)."""
        if self._policy is None:
            raise ValueError("only a manager started with a version policy takes a new one")
        self._policy = policy

    @property
    def ready(self) -> bool:
        return self._default is not None

    @property
    def default_version(self) -> int | None:
        return self._default

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> ModelManager:
        """Loads what is there now, then polls in the background."""
        self.poll()
        self._poller.start()
        return self

    def stop(self) -> None:
        self._poller.stop()
        with self._lock:
            for served in self._served.values():
                served.close()

    def _read_labels(self) -> dict[str, int]:
        path = self.base_path / LABELS
        try:
            return {k: int(v) for k, v in json.loads(path.read_text()).get("labels", {}).items()}
        except (FileNotFoundError, ValueError):
            return {}

    def poll(self) -> None:
        """One pass: load wanted versions that are new, swap, unload unwanted ones."""
        with self._poll_lock:
            self._refresh()
            available = complete_versions(self.base_path.parent, self.base_path.name)
            if self._policy is not None:
                self._poll_by_policy(self._policy, available)
            else:
                self._poll_by_store_labels(available)

    def _poll_by_policy(self, policy: VersionPolicy, available: list[int]) -> None:
        """TF Serving's way: serve what the policy picks; the newest loaded answers unversioned requests."""
        wanted = policy.select(available)
        for version in sorted(wanted - set(self._served), reverse=True):
            self._load(version)
        with self._lock:
            loaded = set(self._served)
            serving = wanted & loaded
            # Availability first (TF Serving's AvailabilityPreservingPolicy):
            # while no wanted version has loaded, the old one keeps answering.
            keep = serving or ({self._default} if self._default in loaded else set())
            self._default = max(keep) if keep else None
            retired = [self._served.pop(v) for v in sorted(loaded - keep)]
            for served in retired:
                self._status[served.version] = VersionStatus(served.version, STATE_END)
        self._close(retired)

    def _poll_by_store_labels(self, available: list[int]) -> None:
        """cifarflow's way: the newest, or the version --label names, plus every labelled version."""
        labels = {k: v for k, v in self._read_labels().items() if v in available}
        target = available[-1] if available else None
        if self.config.label:
            if self.config.label in labels:
                target = labels[self.config.label]
            elif available and not self._warned_label:
                # Before the first promotion there is no label yet: serve the newest.
                log.warning(
                    "label %r names no complete version of %s yet; serving the newest, %d",
                    self.config.label,
                    self.model_name,
                    target,
                )
                self._warned_label = True
        wanted = ({target} if target is not None else set()) | set(labels.values())
        for version in sorted(wanted - set(self._served), reverse=True):
            self._load(version)
        with self._lock:
            loaded = set(self._served)
            if target in loaded:
                self._default = target
            elif self._default is None and loaded:
                self._default = max(loaded)
            # Keep what is still wanted, the default (even when a newer version
            # failed to load), and versions labels point at.
            keep = (wanted & loaded) | ({self._default} if self._default is not None else set())
            self._labels = {k: v for k, v in labels.items() if v in loaded}
            retired = [self._served.pop(v) for v in sorted(loaded - keep)]
            for served in retired:
                self._status[served.version] = VersionStatus(served.version, STATE_END)
        self._close(retired)

    def _close(self, retired: list[ServedVersion]) -> None:
        for served in retired:
            served.close()
            log.info("unloaded %s version %d", self.model_name, served.version)

    def _load(self, version: int) -> None:
        manifest = self.version_path(version) / MANIFEST
        stamp = manifest.stat().st_mtime if manifest.exists() else 0.0
        if self._failed.get(version) == stamp:
            return  # failed before and unchanged: do not retry every poll
        with self._lock:
            self._status[version] = VersionStatus(version, STATE_LOADING)
        started = time.monotonic()
        served = None
        try:
            served = ServedVersion(
                self.model_name,
                version,
                self.version_path(version),
                self.config.batching,
                self._on_batch,
            )
            with self._lock:
                current = self._served.get(self._default) if self._default is not None else None
            if current is not None:
                check_compatible(served, current)
            if self.config.warm_up:
                served.warm_up()
        except Exception as exc:
            if served is not None:
                served.close()
            self._failed[version] = stamp
            message = _first_line(str(exc))[:1000]
            log.error(
                "loading %s version %d failed, keeping the current one: %s",
                self.model_name,
                version,
                message,
            )
            with self._lock:
                self._status[version] = VersionStatus(
                    version, STATE_END, f"{type(exc).__name__}: {message}"
                )
                self._load_attempts[version, False] += 1
            return
        with self._lock:
            self._served[version] = served
            self._status[version] = VersionStatus(version, STATE_AVAILABLE)
            self._load_attempts[version, True] += 1
        log.info(
            "loaded %s version %d in %.2fs", self.model_name, version, time.monotonic() - started
        )


def require_ready(manager: ModelManager) -> None:
    if not manager.ready:
        raise Unavailable(f"no version of {manager.model_name} is loaded yet")
