"""Each served version's training reference, read once from the model store.

The model server reports the version of every answer; the first answer of a
version makes this read `<store>/<model>/<version>/reference.json` (on a
thread, never on the event loop) and keep it. A version published without
one (before references existed) is said once in the log and then answered
without a flag: never an error. A store that cannot be read is tried again
after `retry_s`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from cifarflow.errors import CifarflowError
from cifarflow.training_reference import TrainingReference

if TYPE_CHECKING:
    from cifarflow.serving.store.backends import Backend

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.json"  # components/candidate.py's name, without importing the pipeline


class ReferenceSource:
    """`await get(version)`: the version's TrainingReference, or None when it has none.

    Args:
        store: a folder or `s3://bucket/prefix` (S3_* variables for the endpoint
            and credentials); None: no references at all.
        model_name: the model's folder in the store.
        retry_s: how long a failed read is remembered before trying again.
    """

    def __init__(self, store: str | None, model_name: str, retry_s: float = 60.0) -> None:
        self.store = store
        self.model_name = model_name
        self.retry_s = retry_s
        self._known: dict[int, TrainingReference | None] = {}
        self._failed_at: dict[int, float] = {}
        self._loading: dict[int, asyncio.Future] = {}
        self._backend: Backend | None = None  # opened on the first read (a thread)
        if store is None:
            log.info(
                "no model store given (--monitor-store): answers carry the OOD score without "
                "an in/out-of-distribution flag, and drift is not compared"
            )

    async def get(self, version: int) -> TrainingReference | None:
        if version in self._known:
            return self._known[version]
        if self.store is None:
            return None
        failed = self._failed_at.get(version)
        if failed is not None and time.monotonic() - failed < self.retry_s:
            return None
        loading = self._loading.get(version)
        if loading is None:  # concurrent answers of a new version share one read
            loading = asyncio.ensure_future(asyncio.to_thread(self._read, version))
            self._loading[version] = loading
        try:
            reference = await asyncio.shield(loading)
        except (CifarflowError, OSError, ValueError) as exc:
            self._failed_at[version] = time.monotonic()
            log.warning(
                "cannot read the training reference of %s version %s from %s: %s "
                "(answers go out without the OOD flag; retrying in %.0f s)",
                self.model_name,
                version,
                self.store,
                exc,
                self.retry_s,
            )
            return None
        finally:
            self._loading.pop(version, None)
        if version not in self._known:
            self._known[version] = reference
            if reference is None:
                log.warning(
                    "%s version %s has no %s (published before training references): its "
                    "answers carry the OOD score without a flag, and drift is not compared",
                    self.model_name,
                    version,
                    REFERENCE_FILE,
                )
        return reference

    def _read(self, version: int) -> TrainingReference | None:
        """Blocking: one read from the store (a thread)."""
        if self._backend is None:
            from cifarflow.serving.store import open_store

            assert self.store is not None
            self._backend = open_store(self.store).backend
        source = f"{self.model_name}/{version}/{REFERENCE_FILE}"
        data = self._backend.read_bytes(source)
        if data is None:
            return None
        return TrainingReference.from_json(json.loads(data), source)
