"""Where resources live: the Store protocol, an in-memory store and the durable SQLite store."""

from __future__ import annotations

from pathlib import Path

from berth.store.base import ApplyAction, Event, EventType, Listener, StatusUpdate, Store
from berth.store.common import DEFAULT_MAX_EVENTS
from berth.store.memory import MemoryStore
from berth.store.sqlite import SQLiteStore

__all__ = ["ApplyAction", "Event", "EventType", "Listener", "MemoryStore", "SQLiteStore", "StatusUpdate", "Store",
           "open_store"]


def open_store(path: str | Path | None, *, max_events: int = DEFAULT_MAX_EVENTS) -> Store:
    """The SQLite store at ``path`` (parent directories created), or a memory store when ``path`` is None."""
    if path is None:
        return MemoryStore(max_events=max_events)
    return SQLiteStore(path, max_events=max_events)
