"""The control plane's garbage collector: full collections short, the long one only when the loop is quiet.

CPython 3.11's collector is generational and not incremental: a full (generation 2) collection walks every
object the collector tracks, and every thread, the event loop's included, waits meanwhile.  The heap of a
control plane holding 1,000 models (documents, plans, statuses, routes) made each one 60-250 ms here, and they
fall wherever allocation triggers them: in the middle of a burst of applies, loads and statuses.

:class:`GcPolicy` keeps each full collection to the objects promoted since the previous one:

- full collections are its own: after every ``FULL_EVERY`` collections of generation 1, on the loop (CPython's
  own rule, a quarter of the heap new since the last one, is held off);
- what survives a full collection is **frozen** at once (``gc.freeze()``, from the collector's ``stop``
  callback): the next full collection walks only what was promoted since, and costs about what a young one
  does (the objects a reconcile pass holds while it runs, at most);
- what is frozen is still freed by reference counting when dropped; only cyclic garbage among frozen objects
  waits, so a **sweep** (``gc.unfreeze()``, a full collection, ``gc.freeze()``) reclaims it: every
  ``sweep_every`` seconds at a moment the loop has been quiet for ``quiet_for`` seconds (its heartbeat never
  late by more than the watch's ``quiet_lag``), or after ``sweep_at_most`` seconds in any case.  Its pause is
  the walk of the whole heap (what every full collection was before), rare, and when nothing is waiting.

The policy is the process's (the collector is global): ``berth control`` installs it; in-process control
planes (tests) do not, unless asked.  ``bench/gc_pauses.py`` compares it with CPython's default;
``bench/responsiveness.py`` prints the collections ``berth up``'s control plane made under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

from berth.control.loopwatch import LoopWatch
from berth.scheduler import collector

log = logging.getLogger("berth.control.gc")
FULL_EVERY = 2  # collections of generation 1 between two full ones
OLD_THRESHOLD = 1000  # CPython's own full collections (after 10 of generation 1 and a quarter of the heap new): rare


class GcPolicy:
    """See the module docstring.  ``start()`` on the running loop; ``stop()`` restores the collector."""

    def __init__(self, watch: LoopWatch, *, sweep_every: float = 600.0, quiet_for: float = 5.0,
                 sweep_at_most: float = 3600.0) -> None:
        self.watch = watch
        self.sweep_every, self.quiet_for, self.sweep_at_most = sweep_every, quiet_for, sweep_at_most
        self.sweeps = 0
        self.last_sweep_seconds = 0.0
        self._thresholds = gc.get_threshold()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._middle = 0  # collections of generation 1 since the last full one
        self._due = False  # a full collection is asked of the loop
        self.fulls = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        gc.collect()
        gc.freeze()  # start-up's modules, classes and schemas: never walked again
        young, middle, _ = self._thresholds
        gc.set_threshold(young, middle, OLD_THRESHOLD)  # full collections are ours (see _after)
        gc.callbacks.append(self._after)
        collector.frozen_objects_are_swept(True)  # a plan's objects may join the frozen ones (its sweep reclaims)
        self._task = self._loop.create_task(self._sweeper(), name="gc-sweeper")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._after)
        gc.set_threshold(*self._thresholds)
        collector.frozen_objects_are_swept(False)
        gc.unfreeze()  # the collector as it was (an in-process control plane ends; the process goes on)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _after(self, phase: str, info: dict[str, Any]) -> None:
        """The collector's callback (in whichever thread collected): a full collection's survivors are frozen
        at once; every ``FULL_EVERY`` collections of generation 1 a full one follows, on the loop."""
        if phase != "stop":
            return
        if info.get("generation") == 2:
            self._middle, self._due = 0, False
            gc.freeze()
        elif info.get("generation") == 1:
            self._middle += 1
            if self._middle >= FULL_EVERY and not self._due and self._loop is not None:
                self._due = True  # on the loop, soon: not from here, a collection is under way
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    self._loop.call_soon_threadsafe(self._full)

    def _full(self) -> None:
        self.fulls += 1
        self._due = False
        gc.collect(2)  # walks what was promoted since the last one; _after freezes what survives

    def sweep(self) -> float:
        """Collect everything, frozen objects included, and freeze what survives; the seconds it took."""
        start = time.perf_counter()
        gc.unfreeze()
        gc.collect()  # its callback freezes the survivors
        self.last_sweep_seconds = took = time.perf_counter() - start
        self.sweeps += 1
        return took

    async def _sweeper(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(self.quiet_for, self.sweep_every))
            since = time.monotonic() - last
            if since < self.sweep_every:
                continue
            if since < self.sweep_at_most and not self.watch.quiet(self.quiet_for):
                continue
            took = self.sweep()
            last = time.monotonic()
            log.info("swept the collector's frozen objects: a full collection of %d objects took %.0f ms",
                     gc.get_freeze_count(), took * 1000)
