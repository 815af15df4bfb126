"""An in-memory store: the same semantics as SQLite, gone when the process ends (tests, ephemeral runs).

Objects and events are kept as JSON text, as SQLite keeps them, so every read hands out a fresh copy and
a value that is not plain JSON is refused the same way by both implementations.
"""

from __future__ import annotations

import builtins
import json
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

from berth.store.base import Event, EventType
from berth.store.common import DEFAULT_MAX_EVENTS, BaseStore, Key, Transaction, encode, event_matches

_Logged = tuple[int, EventType, Key, str]  # (revision, type, key, object JSON)


class _MemoryTransaction(Transaction):
    """Collects every write aside; commit applies them all at once, rollback forgets them."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store._rev)
        self._target = store
        self._pending: dict[Key, str | None] = {}
        self._logged: list[_Logged] = []

    def read(self, key: Key) -> dict[str, Any] | None:
        text = self._pending[key] if key in self._pending else self._target._objects.get(key)
        return json.loads(text) if text is not None else None

    def _store(self, key: Key, text: str | None, revision: int) -> None:
        self._pending[key] = text

    def _log(self, event_type: EventType, key: Key, revision: int, text: str) -> None:
        self._logged.append((revision, event_type, key, text))

    def commit(self) -> None:
        store = self._target
        for key, text in self._pending.items():
            if text is None:
                store._objects.pop(key, None)
            else:
                store._objects[key] = text
        store._events.extend(self._logged)
        while len(store._events) > store.max_events:
            store._compacted_rev = store._events.popleft()[0]
        store._rev = self.revision

    def rollback(self) -> None:
        self._pending.clear()
        self._logged.clear()


class MemoryStore(BaseStore):
    """A :class:`berth.store.base.Store` held in this process's memory."""

    def __init__(self, *, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        super().__init__(max_events=max_events)
        self._objects: dict[Key, str] = {}
        self._events: deque[_Logged] = deque()
        self._rev = 0
        self._compacted_rev = 0

    def __repr__(self) -> str:
        return "MemoryStore()"

    def _begin(self) -> Transaction:
        return _MemoryTransaction(self)

    def _read_one(self, key: Key) -> dict[str, Any] | None:
        text = self._objects.get(key)
        return json.loads(text) if text is not None else None

    def _read_all(self, kind: str | None, namespace: str | None) -> builtins.list[dict[str, Any]]:
        keys = sorted(k for k in self._objects
                      if (kind is None or k[0] == kind) and (namespace is None or k[1] == namespace))
        return [json.loads(self._objects[k]) for k in keys]

    def _revision(self) -> int:
        return self._rev

    def _compacted(self) -> int:
        return self._compacted_rev

    def _read_events(self, after: int, kinds: tuple[str, ...] | None, namespace: str | None,
                     limit: int) -> builtins.list[Event]:
        out: builtins.list[Event] = []
        if not self._events or after >= self._events[-1][0]:
            return out
        start = max(0, after - self._events[0][0] + 1)  # revisions are dense: one event per revision
        for revision, event_type, key, text in islice(self._events, start, None):
            if revision > after and event_matches(key[0], key[1], kinds, namespace):
                out.append(Event(event_type, revision, json.loads(text)))
                if len(out) >= limit:
                    break
        return out

    def _rewrite_events(self, kind: str, rewrite: Callable[[dict[str, Any]], dict[str, Any] | None]) -> int:
        changed = 0
        for i, (revision, event_type, key, text) in enumerate(self._events):
            if key[0] != kind:
                continue
            new = rewrite(json.loads(text))
            if new is not None:
                self._events[i] = (revision, event_type, key, encode(new))
                changed += 1
        return changed

    def _close(self) -> None:
        self._objects.clear()
        self._events.clear()
