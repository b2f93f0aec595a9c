"""An ASGI app whose start-up fails, as a gateway worker's does when it cannot start.

In a module of its own, with no imports: uvicorn's spawned workers unpickle it by
importing this module, and a test module would drag TensorFlow into each of them.
"""

from __future__ import annotations


class FailingApp:
    async def __call__(self, scope, receive, send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "cannot start"})
