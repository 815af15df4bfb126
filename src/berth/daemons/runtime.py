"""Running a long-lived process: logging set-up and a stop event tied to SIGINT/SIGTERM.

Both keep the event loop free (issue 18):

- log records are written by a thread of their own (``berth-log``): the loop only queues them, so a burst
  of warnings (1,000 models failing to load) or a slow reader of stderr (a supervisor's pipe) never stalls
  it, and times are formatted there too;
- the interpreter's thread switch interval is lowered to ``SWITCH_INTERVAL`` so that the loop's thread gets
  the GIL back within a millisecond when a worker thread (the store's, the planner's) is busy computing;
- what exists once start-up imports are done (modules, classes, schemas: most of the heap of an idle
  process) is moved out of the collector's reach with ``gc.freeze()``, so a full collection later walks only
  the objects made since, not every import again (a full collection of the whole heap was 60-100 ms here).
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import logging.handlers
import queue
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SWITCH_INTERVAL = 0.001  # seconds (CPython's default is 0.005)
_listener: logging.handlers.QueueListener | None = None


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is written (a test runner swaps and closes it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr through a queue and its writer thread (once per process; later calls set the level)."""
    global _listener
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in ("aiohttp.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if _listener is not None:
        return
    # FORMAT shows none of: the caller's file, line and function (found by walking the stack for each record),
    # the thread and process names.  Not gathering them saves ~16% of what a record costs the thread that logs
    # it (25 -> 21 us measured), often the event loop's.  The logging HOWTO's "Optimization".
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = _Stderr()
    writer.setFormatter(logging.Formatter(FORMAT))
    _listener = logging.handlers.QueueListener(records, writer, respect_handler_level=True)
    _listener.start()
    root.addHandler(logging.handlers.QueueHandler(records))
    atexit.register(stop_logging)


def stop_logging() -> None:
    """Write what is queued and stop the writer thread (at exit; idempotent)."""
    global _listener
    listener, _listener = _listener, None
    if listener is not None:
        listener.stop()
        for handler in [h for h in logging.getLogger().handlers
                        if isinstance(h, logging.handlers.QueueHandler)]:
            logging.getLogger().removeHandler(handler)


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop)`` on uvloop when available; SIGINT/SIGTERM set ``stop``."""
    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with the serve extra
        runner = asyncio.run

    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    runner(wrapper())
