"""A model's version labels with TensorFlow Serving's rules for assigning them.

TF Serving (tensorflow_serving/model_servers/server_core.cc, tag 2.20.0)
assigns labels only when a config is (re)loaded, in UpdateModelVersionLabelMap
(:549-614), which ReloadConfig runs before it adds or changes any model
(:512-524), the first config at start-up included:

- a label may name only a version that is loaded (AVAILABLE) right now;
- with --allow_version_labels_for_unavailable_models, a label may name any
  version, except that a label already assigned to another version may be
  moved only to a loaded one (:563-572);
- the new labels replace the old ones all at once, or, on any refusal, not
  at all (:586, :610-611).

A request by label is resolved through this map alone
(ServableRequestFromModelSpec, GetModelVersionForLabel, :841-890): an unknown
label is INVALID_ARGUMENT; a label whose version is not loaded becomes a
request for that specific version, which the manager answers NOT_FOUND.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from cifarflow.serving.errors import FailedPrecondition, InvalidInput, Unavailable


class VersionLabels:
    """label -> version for one model, changed only through `assign`.

    Args:
        model_name: named in refusals, as TF Serving names it.
        allow_unavailable: --allow_version_labels_for_unavailable_models.
    """

    def __init__(self, model_name: str, allow_unavailable: bool = False) -> None:
        self.model_name = model_name
        self.allow_unavailable = allow_unavailable
        self._lock = threading.Lock()
        self._labels: dict[str, int] | None = None  # None until the first config

    def assign(self, labels: Mapping[str, int], is_available: Callable[[int], bool]) -> None:
        """Replaces the labels with `labels`, or raises FailedPrecondition and changes nothing.

        Args:
            labels: the config's version_labels.
            is_available: whether a version is loaded and serving now.
        """
        with self._lock:
            current = dict(self._labels or {})
        for label, version in labels.items():
            moves_an_assigned_label = label in current and current[label] != version
            may_name_any = self.allow_unavailable and not moves_an_assigned_label
            if not may_name_any and not is_available(version):
                # TF Serving's words; the label in brackets is cifarflow's addition.
                raise FailedPrecondition(
                    f"Request to assign label to version {version} of model {self.model_name}, "
                    f'which is not currently available for inference (label "{label}")'
                )
        with self._lock:
            self._labels = dict(labels)

    def version_for(self, label: str) -> int:
        """The version `label` names; TF Serving's errors when it names none."""
        with self._lock:
            labels = self._labels
        if labels is None:
            raise Unavailable(f"Model labels does not init yet.{label}")
        if label not in labels:
            raise InvalidInput(f"Unrecognized servable version label: {label}")
        return labels[label]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._labels or {})
