"""Fire-and-forget copies of requests to an experiment's mirror model.

A copy is started after the main answer is ready and runs as a task of its own: its answer is read and
dropped, its failure is counted and logged at debug level, and it never delays or fails the request it
copies.  At most ``limit`` copies are in flight; beyond that a copy is dropped (and counted), so a slow
mirror cannot pile up memory in the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from berth.gateway.metrics import Labels, Metrics

log = logging.getLogger("berth.gateway")


class Mirrors:
    """Owns the copies in flight (so none is garbage-collected midway) and cancels them on close."""

    def __init__(self, metrics: Metrics, *, limit: int = 256) -> None:
        self.metrics = metrics
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def send(self, labels: Labels, protocol: str, copy: Coroutine[Any, Any, str]) -> None:
        """Run ``copy`` (which answers its outcome: "ok", "error", ...) in the background."""
        if len(self._tasks) >= self.limit:
            copy.close()
            self.metrics.mirrored(labels, protocol, "dropped")
            return
        task = asyncio.ensure_future(self._run(labels, protocol, copy))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, labels: Labels, protocol: str, copy: Coroutine[Any, Any, str]) -> None:
        try:
            outcome = await copy
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a mirror's failure must never reach the main request
            log.debug("mirror copy to model %s failed: %r", labels[1], exc)
            outcome = "error"
        self.metrics.mirrored(labels, protocol, outcome)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
