"""Batch frames of the agent protocol (version 2): many loads, or many model outcomes, in one WebSocket frame.

Sending 1,000 loads as 1,000 frames cost the control plane 1,000 ``send`` calls on its event loop, each
contending for the interpreter lock with the store, gateway and watch threads (docs/loading.md).  A sender
encodes each item once (``wire.dump``) and :func:`frames` packs the encoded items into as few frames as the
bounds allow:

* at most :data:`~berth.wire.agent.MAX_BATCH_ITEMS` items per frame;
* at most :data:`~berth.wire.agent.MAX_BATCH_CHARS` characters of JSON per frame; an item alone larger than
  that (a load carrying a big Secret) goes in a frame of its own, as its single-item frame;
* a frame of one item is that item's own frame (``load``, ``model``), so a peer sees exactly today's frames
  when there is nothing to batch.

A receiver validates a batch as a whole; :func:`salvage` takes the valid items of a batch whose whole failed to
validate (one malformed item must not cost the others), with the problem of each item left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from berth.wire import agent as wire

# batch type -> the field holding its items
BATCHES = {"loads": "loads", "models": "events"}
_M = TypeVar("_M", bound=BaseModel)


def frames(kind: str, items: Iterable[str], *, max_items: int = wire.MAX_BATCH_ITEMS,
           max_chars: int = wire.MAX_BATCH_CHARS) -> Iterator[tuple[str, int]]:
    """The frames carrying ``items`` (each an encoded single-item frame, in order) as batches of ``kind``,
    each with the number of items it carries."""
    field = BATCHES[kind]
    head = f'{{"type":"{kind}","{field}":['
    budget = max_chars - len(head) - 2  # "]}"
    chunk: list[str] = []
    size = 0
    for item in items:
        if chunk and (len(chunk) >= max_items or size + 1 + len(item) > budget):
            yield _frame(head, chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + (1 if len(chunk) > 1 else 0)
    if chunk:
        yield _frame(head, chunk)


def _frame(head: str, chunk: list[str]) -> tuple[str, int]:
    return (chunk[0] if len(chunk) == 1 else head + ",".join(chunk) + "]}"), len(chunk)


def salvage(text: str | bytes, item: type[_M]) -> tuple[list[_M], list[str]]:
    """The valid items of a batch frame that failed validation as a whole, and what was wrong with each other
    one (``"item 3: name: Field required"``).  Not a batch, or more items than a batch may hold: none, and why."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return [], [f"not JSON: {exc}"]
    if not isinstance(doc, dict) or doc.get("type") not in BATCHES:
        return [], ["not a batch frame"]
    entries = doc.get(BATCHES[doc["type"]])
    if not isinstance(entries, list) or not 1 <= len(entries) <= wire.MAX_BATCH_ITEMS:
        count = len(entries) if isinstance(entries, list) else "no list of"
        return [], [f"a batch holds 1 to {wire.MAX_BATCH_ITEMS} items, this one {count}"]
    good: list[_M] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        try:
            good.append(item.model_validate(entry))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"item {i}: {where + ': ' if where else ''}{err['msg']}")
    return good, problems


def items_of(msg: Any) -> list[Any]:
    """The items of a parsed batch message (``LoadBatch.loads``, ``ModelEvents.events``), else the message alone."""
    if isinstance(msg, wire.LoadBatch):
        return list(msg.loads)
    if isinstance(msg, wire.ModelEvents):
        return list(msg.events)
    return [msg]
