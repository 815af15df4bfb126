"""Parsed documents a store's readers share, kept by revision.

Every pass of the reconciler lists whole namespaces, and parsing the JSON of each document again was most of
what the store's thread spent on reads (``json.loads`` of 1,000 Models per list, most unchanged since the last
one: docs/responsiveness.md).  :class:`SharedDocs` keeps, per object, the document last parsed or committed
together with the revision it holds; a read whose row carries that revision answers the very same dict, so
only rows written since are parsed.  What a write commits is kept as its event's object (already parsed for
the event's listeners).

**Documents are shared.**  A reader must never change one in place: it copies what it changes
(``{**doc, "status": status}``; nested dicts likewise).  Readers within one process see each other's
documents, and the store's own next answer would carry the change.  With ``BERTH_STORE_CHECK_SHARED=1`` (the
test suite sets it) every shared answer is first compared with the text stored for it, and a document some
reader changed raises :class:`SharedDocumentChanged` naming it: a bug to fix where it was changed.  Any other
value turns the check on too and is a file each such finding is also appended to, so that one made in a
process a test started (a control plane) is not lost in that process's log: the test suite fails on it.

Only committed state is kept: a read inside an open transaction may see that transaction's own writes, which
could still roll back (and their revisions be taken again by other content), so what it parses is not kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from berth.store.base import Event

CHECK_ENV = "BERTH_STORE_CHECK_SHARED"
Key = tuple[str, str, str]  # (kind, namespace, name)


class SharedDocumentChanged(AssertionError):
    """A document the store shares was changed in place by one of its readers (a bug in that reader)."""


class SharedDocs:
    """Documents by (kind, namespace, name) with the revision they hold.  Used under the store's lock."""

    def __init__(self, *, check: bool | None = None) -> None:
        self._docs: dict[Key, tuple[int, dict[str, Any]]] = {}
        setting = os.environ.get(CHECK_ENV, "")
        self.check = setting not in ("", "0") if check is None else check
        self.report_to = setting if check is None and setting not in ("", "0", "1") else None
        self.parses = 0  # documents parsed (the rest of the answers were shared)

    def __len__(self) -> int:
        return len(self._docs)

    def parsed(self, key: Key, revision: int, text: str, pending: bool) -> dict[str, Any]:
        """The document of ``key`` stored as ``text`` at ``revision``: the one kept when it holds that
        revision, else ``text`` parsed (and kept unless ``pending``: read inside an open transaction)."""
        kept = self._docs.get(key)
        if kept is not None and kept[0] == revision:
            if self.check and json.dumps(kept[1], separators=(",", ":"), allow_nan=False) != text:
                self._changed(key, revision)
            return kept[1]
        self.parses += 1
        doc: dict[str, Any] = json.loads(text)
        if not pending:
            self._docs[key] = (revision, doc)
        return doc

    def _changed(self, key: Key, revision: int) -> None:
        error = SharedDocumentChanged(
            f"{key[0]} {key[1]}/{key[2]} (revision {revision}) was changed in place by a reader of the store; "
            "documents a store answers are shared: copy before changing one (berth.store.shared)")
        if self.report_to is not None:
            with open(self.report_to, "a", encoding="utf-8") as out:
                out.write(f"pid {os.getpid()}: {error}\n")
        raise error

    def committed(self, events: Iterable[Event]) -> None:
        """What a transaction wrote, once committed: each object as its event holds it, deleted ones gone."""
        for ev in events:
            key = (ev.kind, ev.namespace, ev.name)
            if ev.type == "DELETED":
                self._docs.pop(key, None)
            else:
                self._docs[key] = (ev.revision, ev.object)

    def clear(self) -> None:
        self._docs.clear()
