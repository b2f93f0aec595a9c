"""Server-side batching: concurrent requests run through the model together.

Like TensorFlow Serving's `--enable_batching` (`max_batch_size`,
`batch_timeout_micros`, `num_batch_threads`): under load a request waits at
most `timeout_s` for others to join (an idle server runs a lone request at
once, on the request's own thread); rows are concatenated along the batch
dimension, run once, and the outputs split back. Only requests with the same
inputs, dtypes and per-row shapes are merged. When a merged batch fails (one
undecodable image fails the whole batch), each request is re-run alone so
only the bad one gets the error.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future

import numpy as np

log = logging.getLogger(__name__)

Tensors = Mapping[str, np.ndarray]
Runner = Callable[[Tensors], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """How concurrent requests are gathered into one model call.

    Attributes:
        max_batch_size: most rows in one model call (larger requests run alone).
        timeout_s: longest a request waits for company.
        num_threads: batches that may run at once.
        max_queued: requests waiting beyond this are refused (backpressure).
    """

    max_batch_size: int = 32
    timeout_s: float = 0.0
    num_threads: int = 2
    max_queued: int = 1024


@dataclasses.dataclass
class _Item:
    inputs: Tensors
    rows: int
    key: tuple
    future: Future


def _key(inputs: Tensors) -> tuple:
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items()))


class Batcher:
    """Merges concurrent `submit` calls into batched `runner` calls."""

    def __init__(
        self, runner: Runner, config: BatchingConfig, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self._runner = runner
        self._config = config
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=config.max_queued)
        self._on_batch = on_batch or (lambda rows: None)
        self._pending: list[_Item] = []  # items taken from the queue that did not fit a batch
        self._pending_lock = threading.Lock()
        self._running = 0  # batches executing now
        self._running_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
            for i in range(config.num_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs: Tensors) -> dict[str, np.ndarray]:
        """Runs `inputs` (leading dimension = rows) in some batch; blocks until done."""
        rows = len(next(iter(inputs.values())))
        with self._running_lock:
            # An idle batcher runs the request on the caller's thread: no hand-off
            # to a batch thread and back for a lone request. Requests that arrive
            # meanwhile see it running and queue up to form the next batch.
            inline = self._running == 0 and self._queue.empty()
            if inline:
                self._running += 1
        if inline:
            try:
                result = self._runner(inputs)
                self._on_batch(rows)
                return result
            finally:
                with self._running_lock:
                    self._running -= 1
        item = _Item(inputs, rows, _key(inputs), Future())
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            from cifarflow.serving.errors import Unavailable

            raise Unavailable("the batching queue is full; retry shortly") from None
        return item.future.result()

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def _next(self, timeout: float | None) -> _Item | None:
        with self._pending_lock:
            if self._pending:
                return self._pending.pop(0)
        if timeout is None:
            return self._queue.get()
        return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()

    def _work(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch = [first]
            rows = first.rows
            # Wait for company only under load (others queued, or another batch
            # running): an idle server answers a lone request at once instead of
            # adding the batch timeout to every request of a single client.
            with self._running_lock:
                busy = self._running > 0
            wait_s = self._config.timeout_s if busy or not self._queue.empty() else 0.0
            deadline = time.monotonic() + wait_s
            while rows < self._config.max_batch_size:
                try:
                    item = self._next(max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:  # closing: finish this batch, let another thread see the sentinel
                    self._queue.put(None)
                    break
                if item.key != first.key or rows + item.rows > self._config.max_batch_size:
                    with self._pending_lock:
                        self._pending.append(item)
                    break
                batch.append(item)
                rows += item.rows
            self._run(batch, rows)

    def _run(self, batch: list[_Item], rows: int) -> None:
        with self._running_lock:
            self._running += 1
        try:
            self._run_batch(batch, rows)
        finally:
            with self._running_lock:
                self._running -= 1

    def _run_batch(self, batch: list[_Item], rows: int) -> None:
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        try:
            merged = {
                name: np.concatenate([i.inputs[name] for i in batch]) for name in batch[0].inputs
            }
            outputs = self._runner(merged)
            self._on_batch(rows)
        except Exception:
            log.debug("batch of %d requests failed; re-running them one by one", len(batch))
            for item in batch:
                self._run_alone(item)
            return
        start = 0
        for item in batch:
            end = start + item.rows
            item.future.set_result({name: value[start:end] for name, value in outputs.items()})
            start = end

    def _run_alone(self, item: _Item) -> None:
        try:
            result = self._runner(item.inputs)
            self._on_batch(item.rows)
            item.future.set_result(result)
        except Exception as exc:
            item.future.set_exception(exc)
