"""Watch the inference server's readiness and say when it changes.

Polls ``GET /v2/health/ready`` every ``ready_poll_not_ready`` seconds while it is not ready and every
``ready_poll_ready`` seconds while it is.  A change is a flip of ``ready`` or a different error text;
``since`` is when the current state began, so "refused since 14:00:00" stays true across polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from berth.adapters.base import InferenceServer
from berth.wire.agent import Readiness

log = logging.getLogger("berth.agent.readiness")

OnChange = Callable[[Readiness, Readiness], Awaitable[None]]


class ReadinessWatcher:
    def __init__(self, client: InferenceServer, on_change: OnChange, *, poll_not_ready: float = 0.5,
                 poll_ready: float = 2.0, unresponsive_grace: float = 10.0) -> None:
        self.client = client
        # A ready server that stops answering in time (MLServer's loop busy loading a large model)
        # stays ready this long; a refused connection or an HTTP error counts at once.
        self.unresponsive_grace = unresponsive_grace
        self._slow_since: float | None = None
        self.on_change = on_change
        self.poll_not_ready = poll_not_ready
        self.poll_ready = poll_ready
        self.current = Readiness(ready=False, address=client.ready_url, error="not probed yet",
                                 since=time.time())
        self.probed = asyncio.Event()  # set after the first answer (or failure) of the probe

    async def check(self) -> Readiness:
        """Probe once; update ``current`` and call ``on_change`` when the state changed."""
        probe = await self.client.probe()
        ready = probe.error is None
        previous = self.current
        if not ready and previous.ready and probe.error is not None and probe.error.startswith("timeout"):
            now = time.monotonic()
            self._slow_since = self._slow_since or now
            if now - self._slow_since < self.unresponsive_grace:
                log.info("inference server %s slow to answer (%s); still counted ready", probe.url, probe.error)
                return self.current
        self._slow_since = None
        first = not self.probed.is_set()
        if first or ready != previous.ready or probe.error != previous.error:
            self.current = Readiness(ready=ready, address=probe.url, error=probe.error, since=time.time())
            if ready:
                log.info("inference server %s is ready", probe.url)
            else:
                log.warning("inference server %s not ready: %s", probe.url, probe.error)
            self.probed.set()
            await self.on_change(self.current, previous)
        return self.current

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                current = await self.check()
            except Exception:  # a bug in a callback must not stop the watch
                log.exception("readiness check failed")
                current = self.current
            delay = self.poll_ready if current.ready and self._slow_since is None else self.poll_not_ready
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
