"""Guarded tasks: every long-lived coroutine starts through ``guarded`` and never dies silently.

A guarded task has a name; when its coroutine raises, the failure is logged (logger ``berth.tasks``) with
that name and the traceback the moment it happens, not at shutdown.  Then either

- ``restart=True`` (a loop that can resume: the reconciler, a watcher): the coroutine factory is called
  again after an exponential backoff (``backoff=(first, most)`` seconds, back to ``first`` after a run
  that lasted ``healthy_after`` seconds), and ``restarts`` counts the restarts; or
- ``restart=False`` (anything that cannot resume): ``on_fatal(name, exc)`` is called.  Its default,
  ``end_process``, ends the process with exit status 70 so that its supervisor restarts it.

A coroutine that returns ends the task (a loop returns when told to stop).  Cancellation is not a failure:
it is neither logged nor restarted.  ``log_failure`` is the small sibling for fire-and-forget one-shot
tasks: a done-callback that logs an exception instead of letting asyncio drop it.

The habit comes from kopf's ``create_guarded_task``; the code is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("berth.tasks")

FATAL_EXIT = 70  # EX_SOFTWARE: an internal error; the supervisor starts the process again
DEFAULT_BACKOFF = (0.5, 30.0)
DEFAULT_HEALTHY_AFTER = 60.0

CoroFactory = Callable[[], Coroutine[Any, Any, Any]]
OnFatal = Callable[[str, BaseException], None]

_spawned: set[asyncio.Task[Any]] = set()


def end_process(name: str, exc: BaseException) -> None:
    """The default ``on_fatal``: end the process (exit status 70) so that its supervisor restarts it.

    ``SystemExit`` is raised from a loop callback, so it leaves the event loop; ``asyncio.run`` then
    cancels the remaining tasks, whose ``finally`` blocks still run."""
    log.critical("task %s cannot continue (%s: %s); ending the process with exit status %d", name,
                 type(exc).__name__, exc, FATAL_EXIT)

    def _exit() -> None:
        raise SystemExit(FATAL_EXIT)

    asyncio.get_running_loop().call_soon(_exit)


class GuardedTask:
    """A named task that logs its failures and restarts (or ends the process); see the module docstring."""

    def __init__(self, name: str, factory: CoroFactory, *, restart: bool,
                 backoff: tuple[float, float] = DEFAULT_BACKOFF, healthy_after: float = DEFAULT_HEALTHY_AFTER,
                 on_fatal: OnFatal | None = None, stop: asyncio.Event | None = None) -> None:
        first, most = backoff
        if not 0 < first <= most:
            raise ValueError(f"guarded task {name}: backoff must satisfy 0 < first <= most, got {backoff}")
        self.name = name
        self.restart = restart
        self.backoff = (float(first), float(most))
        self.healthy_after = healthy_after
        self.on_fatal: OnFatal = on_fatal if on_fatal is not None else end_process
        self.restarts = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        self._factory = factory
        self._stop = stop
        self.task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._guard(), name=name)

    def __repr__(self) -> str:
        state = "done" if self.task.done() else "running"
        return f"<GuardedTask {self.name} {state} restarts={self.restarts}>"

    def done(self) -> bool:
        return self.task.done()

    def cancel(self) -> None:
        self.task.cancel()

    async def stop(self) -> None:
        """Cancel the task and wait for it to end (quietly)."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def wait(self) -> None:
        """Wait for the task to end (its coroutine returned, it was cancelled, or it failed for good)."""
        await asyncio.gather(asyncio.shield(self.task), return_exceptions=True)

    async def _guard(self) -> None:
        delay = self.backoff[0]
        while True:
            started = time.monotonic()
            try:
                await self._factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.last_error = exc
                if not self.restart:
                    log.error("task %s failed: %s: %s", self.name, type(exc).__name__, exc, exc_info=exc)
                    self.on_fatal(self.name, exc)
                    return
                if time.monotonic() - started >= self.healthy_after:
                    delay = self.backoff[0]
                log.error("task %s failed: %s: %s; restarting it in %.1fs (restart %d)", self.name,
                          type(exc).__name__, exc, delay, self.restarts + 1, exc_info=exc)
            if self._stop is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                if self._stop.is_set():  # stopping while backing off: nothing left to restart
                    return
            delay = min(delay * 2, self.backoff[1])
            self.restarts += 1
            log.info("task %s restarted (restart %d)", self.name, self.restarts)


def guarded(name: str, factory: CoroFactory, *, restart: bool, backoff: tuple[float, float] = DEFAULT_BACKOFF,
            healthy_after: float = DEFAULT_HEALTHY_AFTER, on_fatal: OnFatal | None = None,
            stop: asyncio.Event | None = None) -> GuardedTask:
    """Start ``factory()`` as the guarded task ``name`` on the running loop (see the module docstring).

    ``stop``, when given, cuts a backoff short: once it is set a failed task is not restarted."""
    return GuardedTask(name, factory, restart=restart, backoff=backoff, healthy_after=healthy_after,
                       on_fatal=on_fatal, stop=stop)


def log_failure(task: asyncio.Future[Any], what: str | None = None) -> asyncio.Future[Any]:
    """Have a fire-and-forget task's exception logged when it ends (cancellation stays quiet)."""
    label = what or (task.get_name() if isinstance(task, asyncio.Task) else repr(task))

    def _done(t: asyncio.Future[Any]) -> None:
        if t.cancelled():
            return
        exc = t.exception()
        if exc is not None:
            log.error("task %s failed: %s: %s", label, type(exc).__name__, exc, exc_info=exc)

    task.add_done_callback(_done)
    return task


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """Start a fire-and-forget one-shot task named ``name`` whose failure is logged (``log_failure``)."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _spawned.add(task)  # the loop keeps only a weak reference
    task.add_done_callback(_spawned.discard)
    log_failure(task, name)
    return task
