"""Hand a call from a worker thread to the event loop, or drop it once the loop has closed.

A model call runs on a worker thread and can finish after the server's loop is gone (the client
shut down mid-request, a test's in-process server stopped). ``call_soon_threadsafe`` then raises
"Event loop is closed" inside the worker's callback, which logs a traceback and tells no one
anything: there is no client left to tell. Every worker-to-loop hand-off goes through ``post``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable


def post(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> bool:
    """Schedule ``callback(*args)`` on ``loop`` from any thread; False when the loop has closed."""
    if loop.is_closed():
        return False
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # closed between the check and the call
        return False
    return True
