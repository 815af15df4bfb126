"""The Store protocol: resources as plain JSON-able dicts keyed by (kind, namespace, name).

Semantics (shared by every implementation and checked by one contract test suite):

* ``resourceVersion`` is a global, strictly increasing revision (as in etcd), stored as a string in
  ``metadata.resourceVersion``.  Every write of any object takes the next revision.
* ``apply`` creates or updates.  ``metadata.generation`` starts at 1 and bumps only when the spec
  changes (for ``Secret``: ``data``/``stringData``/``type``, and ``sealed``, the ciphertext a
  sealing wrapper stores instead of the values).  Labels/annotations changes do not bump it.
  Status given to ``apply`` is ignored; the stored status is kept.
* Compare-and-swap: when ``expect_version`` is given (or the body carries ``metadata.resourceVersion``)
  and differs from the stored one, the write raises :class:`berth.errors.Conflict` and changes nothing.
* ``update_status`` replaces ``status`` only; it never bumps ``generation``.  ``update_statuses`` writes
  many in one transaction (one commit), each item with its own compare-and-swap: an item that conflicts or
  is gone is skipped and answered as the error, the others are written.
* ``watch``: every write appends an event (ADDED / MODIFIED / DELETED with the object as written);
  ``events_since(rv)`` returns the events with revision > rv, oldest first.  Old events may be compacted;
  asking for a revision older than what is kept raises :class:`berth.errors.Expired` (HTTP 410),
  after which the caller lists and watches again from the list's revision.
* Listeners registered with ``add_listener`` are called synchronously, in the writer's thread, after the
  write is committed, with the event.  They must not block.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from berth.errors import Conflict, NotFound

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
ApplyAction = Literal["created", "configured", "unchanged"]


@dataclass(frozen=True)
class Event:
    type: EventType
    revision: int
    object: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.object["kind"])

    @property
    def namespace(self) -> str:
        return str(self.object["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.object["metadata"]["name"])

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "revision": self.revision, "object": self.object}


Listener = Callable[[Event], None]


@dataclass(frozen=True)
class StatusUpdate:
    """One item of :meth:`Store.update_statuses`: replace this object's status (CAS on ``expect_version``)."""

    kind: str
    namespace: str
    name: str
    status: dict[str, Any]
    expect_version: str | None = None


class Store(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """The stored object; raises NotFound naming kind, namespace and name."""

    def list(self, kind: str | None = None, namespace: str | None = None,
             selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Objects sorted by (kind, namespace, name); ``selector`` matches labels exactly.  The documents may
        be shared with other readers (berth.store.shared): read them, copy before changing one."""

    def apply(self, body: dict[str, Any], *, expect_version: str | None = None
              ) -> tuple[dict[str, Any], ApplyAction]:
        """Create or update from a validated document; returns (stored object, action)."""

    def apply_many(self, bodies: builtins.list[dict[str, Any]]
                   ) -> builtins.list[tuple[dict[str, Any], ApplyAction]]:
        """Apply several documents in one transaction: all are written or none (a Conflict undoes all)."""

    def update_status(self, kind: str, namespace: str, name: str, status: dict[str, Any], *,
                      expect_version: str | None = None) -> dict[str, Any]:
        """Replace the status; raises NotFound / Conflict."""

    def update_statuses(self, updates: builtins.list[StatusUpdate]
                        ) -> builtins.list[dict[str, Any] | Conflict | NotFound]:
        """Replace several statuses in one transaction; per item the stored object, or the Conflict /
        NotFound that skipped it (the others are written)."""

    def delete(self, kind: str, namespace: str, name: str, *,
               expect_version: str | None = None) -> dict[str, Any]:
        """Remove and return the object (as it was); raises NotFound / Conflict."""

    def revision(self) -> int:
        """The latest revision written (0 for an empty store)."""

    def events_since(self, revision: int, *, kinds: tuple[str, ...] | None = None,
                     namespace: str | None = None, limit: int = 1000) -> builtins.list[Event]:
        """Events with revision > ``revision``; raises Expired when compacted past it."""

    def add_listener(self, listener: Listener) -> None: ...

    def remove_listener(self, listener: Listener) -> None: ...

    def close(self) -> None: ...
