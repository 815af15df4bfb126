"""Store calls off the event loop: one dedicated thread runs them, so the loop keeps serving while SQLite
reads, writes and syncs.

Every caller on the loop awaits :func:`off_loop`; the calls run one after another in the thread
``berth-store`` (the store's own lock keeps them consistent with any synchronous caller).  Store listeners
run in the writer's thread, which is then this one: a listener that touches asyncio objects hands its work
to its loop with :func:`on_loop`.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
THREAD_NAME = "berth-store"
_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """The one store thread of this process (started on first use)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        return _executor


async def off_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in the store thread; the loop serves others meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(executor(), functools.partial(fn, *args, **kwargs))


def on_loop(loop: asyncio.AbstractEventLoop | None, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on ``loop``: now when called from the loop's own thread (or with no loop known),
    else soon, handed over thread-safely.  A loop already closed drops it (it has no one left to tell)."""
    if loop is None or _running() is loop:
        fn(*args)
        return
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed
        pass


def _running() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
