"""Long passes on the event loop in short slices, so the loop keeps answering while they run.

A reconcile pass over a namespace of 1,000 models is milliseconds of pure Python per hundred models;
run in one go it holds the loop (and with it ``/healthz``, the API and the agents' WebSockets) for the
whole pass.  A :class:`Slicer` is ticked between items and hands the loop back once a slice's budget is
spent, so no caller waits more than about one slice behind a pass.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

SLICE_SECONDS = 0.002  # work between two hand-backs to the loop
WRITE_CHUNK = 64 * 1024  # bytes of a large response written between two hand-backs to the loop


class Slicer:
    """``await slicer.tick()`` between the items of a long pass: yields to the loop every ``budget`` seconds."""

    def __init__(self, budget: float = SLICE_SECONDS) -> None:
        self.budget = budget
        self.yields = 0
        self._since = time.perf_counter()

    async def tick(self) -> None:
        if time.perf_counter() - self._since >= self.budget:
            await asyncio.sleep(0)
            self.yields += 1
            self._since = time.perf_counter()


async def let_go(slicer: Slicer, *holders: list[Any] | dict[Any, Any]) -> None:
    """Empty ``holders`` (a pass's own lists and dicts, which nothing else keeps) item by item between ticks.

    What only they hold is then freed a little at a time.  Dropped at once when the pass returns, the
    documents of 1,000 models are tens of thousands of objects freed by reference counting in one C call,
    which holds the loop (and the interpreter lock) for 10-30 ms and cannot be interrupted."""
    for holder in holders:
        if isinstance(holder, dict):
            while holder:
                holder.popitem()
                await slicer.tick()
        else:
            while holder:
                holder.pop()
                await slicer.tick()


async def respond_in_slices(request: web.Request, body: bytes, content_type: str) -> web.StreamResponse:
    """Send ``body`` in chunks of ``WRITE_CHUNK`` bytes, handing the loop back between two.

    The socket write of a response runs on the loop's thread with the interpreter lock held (uvloop writes
    at once what the kernel takes): the 1.5 MB list of 1,000 Models held the loop 5-10 ms on loopback,
    every time someone listed them.  Chunks of 64 KiB hold it for a fraction of a millisecond each."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = len(body)
    await response.prepare(request)
    view = memoryview(body)
    for start in range(0, len(body), WRITE_CHUNK):
        await response.write(view[start:start + WRITE_CHUNK])
        await asyncio.sleep(0)
    await response.write_eof()
    return response
