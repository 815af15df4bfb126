"""What every store implementation shares: stamping, CAS checks, selectors, errors, the write path.

An implementation supplies a :class:`Transaction` (read an object, write or remove one, log an event,
commit, roll back) and a handful of read primitives; :class:`BaseStore` turns those into the
:class:`berth.store.base.Store` protocol, so the semantics live in one place.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from berth.errors import Conflict, Expired, InvalidInput, NotFound, Unavailable
from berth.store.base import ApplyAction, Event, EventType, Listener, StatusUpdate

log = logging.getLogger("berth.store")

Key = tuple[str, str, str]  # (kind, namespace, name)
T = TypeVar("T")
DEFAULT_MAX_EVENTS = 10_000
SERVER_FIELDS = ("uid", "creationTimestamp", "generation", "resourceVersion", "deletionTimestamp",
                 "managedFields")
# A Secret's "spec": its values and type.  ``sealed`` is the ciphertext a sealing wrapper stores in place of
# the values (berth.control.sealing); the wrapper re-uses it unchanged when the values do not change.
SECRET_SPEC_FIELDS = ("data", "stringData", "type", "sealed")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode(obj: dict[str, Any]) -> str:
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{describe(key_of(obj))} cannot be stored: it is not plain JSON ({exc}); "
                           "send only strings, numbers, booleans, null, lists and objects") from exc


def canonical(value: Any) -> str:
    """A comparison form in which ``1`` and ``true`` differ and key order does not matter."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def same_json(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same JSON (``canonical`` forms equal), encoding them only when Python
    finds them equal: ``1 == True`` and ``1 == 1.0`` hold in Python but not in JSON.  Values Python finds
    different are answered different without encoding (the common case, a status that changed: two sorted
    encodings saved, in the store's thread, which holds the interpreter lock while it encodes).  A tuple
    where the other has a list is then taken as a difference: at worst one write too many, never a change
    lost."""
    return a == b and canonical(a) == canonical(b)


def describe(key: Key) -> str:
    return f"{key[0]} {key[1]}/{key[2]}"


def key_of(body: dict[str, Any]) -> Key:
    kind = body.get("kind") if isinstance(body, dict) else None
    meta = body.get("metadata") if isinstance(body, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    namespace = meta.get("namespace", "default") if isinstance(meta, dict) else None
    if not isinstance(kind, str) or not kind:
        raise InvalidInput("cannot store a document without a kind; validate manifests before applying")
    if not isinstance(name, str) or not name or not isinstance(namespace, str) or not namespace:
        raise InvalidInput(f"cannot store a {kind} without metadata.name and metadata.namespace strings; "
                           "validate manifests before applying")
    return kind, namespace, name


def spec_of(obj: dict[str, Any]) -> Any:
    """What bumps ``generation`` when it changes: ``spec``, or a Secret's data/stringData/type/sealed."""
    if obj.get("kind") == "Secret":
        return {k: obj[k] for k in SECRET_SPEC_FIELDS if k in obj}
    return obj.get("spec")


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if k not in ("status", "metadata")}
    out["metadata"] = {k: v for k, v in obj.get("metadata", {}).items() if k not in SERVER_FIELDS}
    return out


def matches_selector(obj: dict[str, Any], selector: dict[str, str] | None) -> bool:
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def event_matches(kind: str, namespace: str, kinds: tuple[str, ...] | None, want_ns: str | None) -> bool:
    return (kinds is None or kind in kinds) and (want_ns is None or namespace == want_ns)


def expected_version(body: dict[str, Any], expect_version: str | None) -> str | None:
    if expect_version is not None and str(expect_version) != "":
        return str(expect_version)
    rv = (body.get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv not in (None, "") else None


def check_expected(current: dict[str, Any] | None, key: Key, expect: str | None) -> None:
    """Compare-and-swap: raise NotFound / Conflict when the caller's version is not the stored one."""
    if expect is None:
        return
    if current is None:
        raise NotFound(f"{describe(key)} not found (you had resourceVersion {expect}; it was deleted since); "
                       "apply it without a resourceVersion to create it again",
                       details={"kind": key[0], "namespace": key[1], "name": key[2]})
    stored = str(current["metadata"]["resourceVersion"])
    if stored != expect:
        raise Conflict(f"{describe(key)} was modified (resourceVersion {stored}, you had {expect}); "
                       "get it again and retry",
                       details={"kind": key[0], "namespace": key[1], "name": key[2],
                                "resourceVersion": stored, "expected": expect})


def not_found(key: Key) -> NotFound:
    return NotFound(f"{key[0]} {key[2]!r} not found in namespace {key[1]!r}; check the name and namespace",
                    details={"kind": key[0], "namespace": key[1], "name": key[2]})


def prepare_create(body: dict[str, Any], key: Key) -> dict[str, Any]:
    """The object to store for a new document (``resourceVersion`` is set when written)."""
    obj = {k: v for k, v in body.items() if k != "status"}
    meta = {k: v for k, v in body["metadata"].items() if k not in SERVER_FIELDS}
    meta["namespace"] = key[1]
    meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
    obj["metadata"] = meta
    return obj


def prepare_update(current: dict[str, Any], body: dict[str, Any], key: Key) -> dict[str, Any] | None:
    """The object to store over ``current``, or None when nothing but status/server fields differ."""
    obj = {k: v for k, v in body.items() if k != "status"}
    meta = {k: v for k, v in body["metadata"].items() if k not in SERVER_FIELDS}
    meta["namespace"] = key[1]
    obj["metadata"] = meta
    if same_json(_content(obj), _content(current)):
        return None
    old = current["metadata"]
    bump = canonical(spec_of(obj)) != canonical(spec_of(current))
    meta.update(uid=old["uid"], creationTimestamp=old["creationTimestamp"],
                generation=int(old["generation"]) + (1 if bump else 0))
    if "status" in current:
        obj["status"] = current["status"]
    return obj


class Transaction(ABC):
    """One atomic unit of writes; reads inside it see its own earlier writes."""

    def __init__(self, revision: int) -> None:
        self.revision = revision  # the last revision taken so far
        self.events: list[Event] = []

    @abstractmethod
    def read(self, key: Key) -> dict[str, Any] | None: ...

    def read_shared(self, key: Key) -> dict[str, Any] | None:
        """The object for reading only (a backend may answer a document it shares with other readers, which
        must not be changed in place); by default the private copy :meth:`read` answers."""
        return self.read(key)

    @abstractmethod
    def _store(self, key: Key, text: str | None, revision: int) -> None:
        """Write the object's JSON text (None removes it)."""

    @abstractmethod
    def _log(self, event_type: EventType, key: Key, revision: int, text: str) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None: ...

    def write(self, event_type: EventType, key: Key, obj: dict[str, Any]) -> dict[str, Any]:
        """Take the next revision, stamp it on ``obj``, store it (or remove it for DELETED), log it."""
        obj["metadata"]["resourceVersion"] = str(self.revision + 1)
        text = encode(obj)
        self.revision += 1
        self._store(key, None if event_type == "DELETED" else text, self.revision)
        self._log(event_type, key, self.revision, text)
        self.events.append(Event(event_type, self.revision, json.loads(text)))
        return obj


class BaseStore(ABC):
    """The Store protocol over a backend's transactions and read primitives (thread-safe)."""

    def __init__(self, *, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        if max_events < 1:
            raise InvalidInput(f"max_events must be at least 1, got {max_events}")
        self.max_events = max_events
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._closed = False

    # -- what a backend provides -------------------------------------------------------------------
    @abstractmethod
    def _begin(self) -> Transaction: ...

    @abstractmethod
    def _read_one(self, key: Key) -> dict[str, Any] | None: ...

    @abstractmethod
    def _read_all(self, kind: str | None, namespace: str | None) -> builtins.list[dict[str, Any]]:
        """Objects sorted by (kind, namespace, name)."""

    @abstractmethod
    def _revision(self) -> int: ...

    @abstractmethod
    def _compacted(self) -> int:
        """The highest revision whose event has been dropped (0 when none)."""

    @abstractmethod
    def _read_events(self, after: int, kinds: tuple[str, ...] | None, namespace: str | None,
                     limit: int) -> builtins.list[Event]: ...

    @abstractmethod
    def _rewrite_events(self, kind: str, rewrite: Callable[[dict[str, Any]], dict[str, Any] | None]) -> int:
        """Replace the body of every kept event of ``kind`` for which ``rewrite`` answers a new one."""

    @abstractmethod
    def _close(self) -> None: ...

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Hold the lock and translate backend failures; backends may extend the translation."""
        with self._lock:
            if self._closed:
                raise Unavailable(f"{self!r} is closed; open the store again")
            yield

    # -- the protocol -------------------------------------------------------------------------------
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        with self._guard():
            obj = self._read_one((kind, namespace, name))
        if obj is None:
            raise not_found((kind, namespace, name))
        return obj

    def apply(self, body: dict[str, Any], *, expect_version: str | None = None
              ) -> tuple[dict[str, Any], ApplyAction]:
        return self._write(lambda tx: self._apply_one(tx, body, expect_version))

    def apply_many(self, bodies: builtins.list[dict[str, Any]]
                   ) -> builtins.list[tuple[dict[str, Any], ApplyAction]]:
        return self._write(lambda tx: [self._apply_one(tx, body, None) for body in bodies])

    def update_status(self, kind: str, namespace: str, name: str, status: dict[str, Any], *,
                      expect_version: str | None = None) -> dict[str, Any]:
        """Replace the status.  Writing the status already stored is a no-op (no revision, no event)."""
        if not isinstance(status, dict):
            raise InvalidInput(f"status of {kind} {namespace}/{name} must be an object, "
                               f"got {type(status).__name__}")
        key = (kind, namespace, name)

        return self._write(lambda tx: self._status_one(tx, key, status, expect_version))

    def update_statuses(self, updates: builtins.list[StatusUpdate]
                        ) -> builtins.list[dict[str, Any] | Conflict | NotFound]:
        """Write several statuses in ONE transaction (one commit); each keeps its own compare-and-swap: an
        item whose object changed (Conflict) or is gone (NotFound) is skipped and answered as that error,
        the others are written.  Answers, per item, the stored object or the error."""
        for u in updates:
            if not isinstance(u.status, dict):
                raise InvalidInput(f"status of {u.kind} {u.namespace}/{u.name} must be an object, "
                                   f"got {type(u.status).__name__}")

        def run(tx: Transaction) -> builtins.list[dict[str, Any] | Conflict | NotFound]:
            out: builtins.list[dict[str, Any] | Conflict | NotFound] = []
            for u in updates:
                try:
                    out.append(self._status_one(tx, (u.kind, u.namespace, u.name), u.status, u.expect_version))
                except (Conflict, NotFound) as err:  # checked before anything of this item was written
                    out.append(err)
            return out
        return self._write(run) if updates else []

    def _status_one(self, tx: Transaction, key: Key, status: dict[str, Any], expect_version: str | None
                    ) -> dict[str, Any]:
        current = self._existing(tx, key, expect_version, shared=True)  # read only: the one written is new
        if same_json(current.get("status"), status):
            return current
        return tx.write("MODIFIED", key, {**current, "metadata": {**current["metadata"]}, "status": status})

    def delete(self, kind: str, namespace: str, name: str, *,
               expect_version: str | None = None) -> dict[str, Any]:
        """Remove the object; returns it as it was, stamped with the deletion's resourceVersion."""
        key = (kind, namespace, name)
        return self._write(lambda tx: tx.write("DELETED", key, self._existing(tx, key, expect_version)))

    def revision(self) -> int:
        with self._guard():
            return self._revision()

    def events_since(self, revision: int, *, kinds: tuple[str, ...] | None = None,
                     namespace: str | None = None, limit: int = 1000) -> builtins.list[Event]:
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, got {limit}")
        revision = max(revision, 0)
        with self._guard():
            compacted = self._compacted()
            if revision < compacted:
                raise Expired(f"revision {revision} is too old: events up to revision {compacted} were "
                              f"compacted (the store keeps the last {self.max_events}); "
                              "list again and watch from the list's revision",
                              details={"revision": revision, "compacted": compacted})
            return self._read_events(revision, tuple(kinds) if kinds is not None else None,
                                     namespace, limit)

    def rewrite_history(self, kind: str, rewrite: Callable[[dict[str, Any]], dict[str, Any] | None]) -> int:
        """Rewrite the kept events of ``kind`` in place (same revisions and types); returns how many changed.

        Not part of the Store protocol: history is otherwise append-only.  It exists to scrub what must not
        stay readable (a Secret's plain values written before sealing), and leaves no copy of the old
        bodies in the backend's files (see :class:`berth.store.sqlite.SQLiteStore`).  ``rewrite`` answers
        the new object, or None to keep an event as it is; the object's kind, namespace and name must stay.
        """
        with self._guard():
            return self._rewrite_events(kind, rewrite)

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close()

    def list(self, kind: str | None = None, namespace: str | None = None,
             selector: dict[str, str] | None = None) -> builtins.list[dict[str, Any]]:
        with self._guard():
            objs = self._read_all(kind, namespace)
        return [obj for obj in objs if matches_selector(obj, selector)]

    # -- the write path -----------------------------------------------------------------------------
    def _write(self, run: Callable[[Transaction], T]) -> T:
        """Run ``run`` in one transaction; commit, then tell listeners (still under the lock, in order)."""
        with self._guard():
            tx = self._begin()
            try:
                result = run(tx)
            except BaseException:
                tx.rollback()
                raise
            tx.commit()
            for event in tx.events:
                for listener in builtins.list(self._listeners):
                    try:
                        listener(event)
                    except Exception:
                        log.exception("store listener %r failed on %s %s (revision %d); the write stands",
                                      listener, event.type, describe((event.kind, event.namespace,
                                                                      event.name)), event.revision)
            return result

    def _existing(self, tx: Transaction, key: Key, expect_version: str | None, *, shared: bool = False
                  ) -> dict[str, Any]:
        current = tx.read_shared(key) if shared else tx.read(key)
        if current is None:
            raise not_found(key)
        check_expected(current, key, str(expect_version) if expect_version not in (None, "") else None)
        return current

    def _apply_one(self, tx: Transaction, body: dict[str, Any], expect_version: str | None
                   ) -> tuple[dict[str, Any], ApplyAction]:
        key = key_of(body)
        current = tx.read(key)
        check_expected(current, key, expected_version(body, expect_version))
        if current is None:
            return tx.write("ADDED", key, prepare_create(body, key)), "created"
        updated = prepare_update(current, body, key)
        if updated is None:
            return current, "unchanged"
        return tx.write("MODIFIED", key, updated), "configured"
