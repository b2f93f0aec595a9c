"""Importing TensorFlow Serving's protos without importing TensorFlow.

`tensorflow_serving.apis` imports `tensorflow.core.framework.*_pb2`, and
importing any `tensorflow.*` module runs `tensorflow/__init__.py`: 2+ s and
~550 MB for a process (the gateway, the client) that only needs message
classes. `use_protos_only()` registers a bare package object for
`tensorflow` whose search path is TensorFlow's own folder, so the generated
`_pb2` modules load on their own (~40 MB). It does nothing when TensorFlow is
already imported, and must not be used in a process that imports TensorFlow
later (the model server).
"""

from __future__ import annotations

import importlib.util
import sys
import types

_MARK = "_cifarflow_protos_only"


def use_protos_only() -> bool:
    """Returns True when the light stand-in was installed (or already was)."""
    existing = sys.modules.get("tensorflow")
    if existing is not None:
        return bool(getattr(existing, _MARK, False))
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return False
    package = types.ModuleType(
        "tensorflow", "stand-in: TensorFlow's protos only (cifarflow.serving.protos)"
    )
    package.__path__ = list(spec.submodule_search_locations)
    setattr(package, _MARK, True)
    sys.modules["tensorflow"] = package
    return True
