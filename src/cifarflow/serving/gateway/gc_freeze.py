"""Keeping the gateway's start-up objects out of the garbage collector's full collections.

Once it has imported FastAPI, pydantic, grpc and TF Serving's messages and
built its app, a gateway process tracks about 87,000 container objects,
and nearly all of them live as long as the process. A full (generation 2)
collection walks every one of them, on the event loop. Under load, the
objects each request leaves behind set one off every few seconds: at
600-700 req/s, measured with `gc.callbacks`, they stopped the loop for
about 50-60 ms each (up to 77 ms, wall time on busy cores), and every
request in flight waited it out (the p99).

`gc.freeze()` moves every object alive at that moment into a permanent
generation that collections skip, so a full collection walks only what
was made since (about 11,000 objects, at most 7 ms in the same runs).
A frozen object that its reference count frees still goes, but a frozen
reference cycle is never collected. That suits a process whose start-up
objects are its working set, so this is for the gateway only. The model
server loads and unloads models, whose reference cycles would then never
be freed; it also makes almost no garbage per request (no full
collection in 15 s of load). Figures: docs/serving.md, "Performance".
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collects what start-up left behind, then freezes every object still alive.

    Call it once, when the process has built everything it serves with and
    before it takes load.

    Returns:
        How many objects are frozen.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("gateway: %d objects made at start left out of full garbage collections", frozen)
    return frozen
