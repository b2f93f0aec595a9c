"""The model store (local folder or S3/MinIO) and publishing into it."""

from cifarflow.serving.store.backends import MANIFEST
from cifarflow.serving.store.model_store import (
    LABELS,
    ModelStore,
    VersionInfo,
    check_model_name,
    local_store,
    open_store,
    verify_files,
)
from cifarflow.serving.store.publish import PublishResult, publish_model

__all__ = [
    "LABELS",
    "MANIFEST",
    "ModelStore",
    "PublishResult",
    "VersionInfo",
    "check_model_name",
    "local_store",
    "open_store",
    "publish_model",
    "verify_files",
]
