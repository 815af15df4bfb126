"""``slices.let_go``: a pass's own containers emptied item by item between ticks, so what only they hold is
freed a little at a time instead of all at once when the pass returns."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

from berth.control.slices import Slicer, let_go


class Doc(dict[str, Any]):
    """A dict that can be weakly referenced (to see when it is freed)."""


def test_it_empties_the_holders_freeing_items_between_ticks() -> None:
    docs = [Doc(n=i) for i in range(50)]
    by_name = {i: d for i, d in enumerate(docs)}
    refs = [weakref.ref(d) for d in docs]
    freed_at_tick: list[int] = []

    class Counting(Slicer):
        async def tick(self) -> None:
            freed_at_tick.append(sum(r() is None for r in refs))
            await super().tick()

    gc.disable()  # freed by reference counting alone, as the pass's documents are
    try:
        asyncio.run(let_go(Counting(budget=0.0), docs, by_name))
    finally:
        gc.enable()
    assert docs == [] and by_name == {}
    assert all(r() is None for r in refs)
    # none freed while the list was emptied (the dict still held them), then one per tick
    assert freed_at_tick[:50] == [0] * 50 and freed_at_tick[50:] == list(range(1, 51))
