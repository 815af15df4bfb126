"""The durable store: one SQLite file in WAL mode with ``synchronous=FULL``.

A write is acknowledged only after its transaction is committed to the WAL and synced, so a crash (even
SIGKILL mid-stream) never loses an acknowledged write.  The revision counter lives in the file, so a
reopened store continues the sequence; revisions never go backwards.  One connection serves every
thread of the process, behind the store's lock.  ``list`` answers documents shared by revision
(:mod:`berth.store.shared`, as a Kubernetes informer's lister does): only rows written since the last read
are parsed, and a reader never changes a document it was given; ``get`` answers a copy of its own.

The file and its ``-wal``/``-shm`` companions are mode 0600 (created so; narrowed when found wider), a
directory the store creates is 0700, and ``secure_delete`` is on: content that a write replaces or
removes is overwritten with zeros, not left in free pages.  :meth:`rewrite_history` also vacuums the file
and truncates the WAL, so a rewritten body leaves no old copy in either.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from berth.errors import ConfigError, Unavailable
from berth.store.base import Event, EventType
from berth.store.common import DEFAULT_MAX_EVENTS, BaseStore, Key, Transaction, encode, log
from berth.store.files import SQLITE_SIDE_FILES, narrow, private_dir, private_file
from berth.store.shared import SharedDocs

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    revision INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY, type TEXT NOT NULL,
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0), ('compacted', 0), ('schema', 1);
"""


def _meta(conn: sqlite3.Connection, key: str) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])


class _SQLiteTransaction(Transaction):
    """``BEGIN IMMEDIATE`` … ``COMMIT``: writers are serialised and see a stable revision."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store_of = store
        self._conn = store._conn
        self._max_events = store.max_events
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            start = _meta(self._conn, "revision")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._start = start
        super().__init__(start)

    def read(self, key: Key) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT body FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                                 key).fetchone()
        return json.loads(row[0]) if row else None

    def read_shared(self, key: Key) -> dict[str, Any] | None:
        return self._store_of._read_shared(key)

    def _store(self, key: Key, text: str | None, revision: int) -> None:
        if text is None:
            self._conn.execute("DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", key)
        else:
            self._conn.execute(
                "INSERT INTO objects (kind, namespace, name, revision, body) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, namespace, name) DO UPDATE SET revision = excluded.revision, "
                "body = excluded.body", (*key, revision, text))

    def _log(self, event_type: EventType, key: Key, revision: int, text: str) -> None:
        self._conn.execute("INSERT INTO events (revision, type, kind, namespace, name, body) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (revision, event_type, *key, text))

    def commit(self) -> None:
        try:
            if self.revision != self._start:
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (self.revision,))
                horizon = self.revision - self._max_events
                if horizon > 0:
                    self._conn.execute("DELETE FROM events WHERE revision <= ?", (horizon,))
                    self._conn.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = 'compacted'",
                                       (horizon,))
            self._conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        self._store_of._docs.committed(self.events)

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


class SQLiteStore(BaseStore):
    """A :class:`berth.store.base.Store` in one SQLite file (parent directories are created)."""

    def __init__(self, path: str | Path, *, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        super().__init__(max_events=max_events)
        self._docs = SharedDocs()  # parsed documents shared by readers, by revision (berth.store.shared)
        self.path = Path(path)
        try:
            if not self.path.parent.exists():
                private_dir(self.path.parent)  # made 0700; an existing directory is the caller's to judge
        except OSError as exc:
            raise ConfigError(f"cannot create the directory {self.path.parent} for the store: {exc}; "
                              "choose a writable data directory") from exc
        try:
            private_file(self.path)
        except OSError as exc:
            raise ConfigError(f"cannot create the store file {self.path}: {exc}; choose a writable data "
                              "directory", details={"path": str(self.path), "error": str(exc)}) from exc
        try:
            self._conn = self._open()
            self._narrow()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the store {self.path}: {type(exc).__name__}: {exc}; if the file "
                              "is damaged, move it aside (Berth starts with an empty store) or restore a "
                              "backup", details={"path": str(self.path), "error": str(exc)}) from exc

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("store %s: the filesystem refused WAL mode (journal_mode=%s)", self.path, mode)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            conn.executescript(_SCHEMA)
            schema = _meta(conn, "schema")
            if schema > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {schema} is newer than this Berth understands "
                                            f"({SCHEMA_VERSION}); upgrade Berth")
            conn.execute("BEGIN IMMEDIATE")
            top = max(_meta(conn, "revision"),
                      conn.execute("SELECT COALESCE(MAX(revision), 0) FROM objects").fetchone()[0],
                      conn.execute("SELECT COALESCE(MAX(revision), 0) FROM events").fetchone()[0])
            conn.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (top,))
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _narrow(self) -> None:
        """The store file and its companions: 0600 (SQLite creates them with the file's mode; this makes sure)."""
        narrow(self.path)
        for suffix in SQLITE_SIDE_FILES:
            narrow(self.path.with_name(self.path.name + suffix))

    @contextmanager
    def _guard(self) -> Iterator[None]:
        with super()._guard():
            try:
                yield
            except sqlite3.Error as exc:
                raise Unavailable(f"the store {self.path} failed: {type(exc).__name__}: {exc}; check the "
                                  "disk (space, permissions) and restart",
                                  details={"path": str(self.path)}) from exc

    def _begin(self) -> Transaction:
        return _SQLiteTransaction(self)

    def _read_one(self, key: Key) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT body FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                                 key).fetchone()
        return json.loads(row[0]) if row else None  # ``get`` answers a copy of its own (the Store contract)

    def _read_shared(self, key: Key) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT revision, body FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                                 key).fetchone()
        return self._docs.parsed(key, row[0], row[1], self._conn.in_transaction) if row else None

    def _read_all(self, kind: str | None, namespace: str | None) -> builtins.list[dict[str, Any]]:
        where, args = self._filters(None if kind is None else (kind,), namespace)
        rows = self._conn.execute(f"SELECT kind, namespace, name, revision, body FROM objects{where} "
                                  "ORDER BY kind, namespace, name", args)
        parsed, pending = self._docs.parsed, self._conn.in_transaction
        return [parsed(row[:3], row[3], row[4], pending) for row in rows]

    def _revision(self) -> int:
        return _meta(self._conn, "revision")

    def _compacted(self) -> int:
        return _meta(self._conn, "compacted")

    def _read_events(self, after: int, kinds: tuple[str, ...] | None, namespace: str | None,
                     limit: int) -> builtins.list[Event]:
        if kinds is not None and not kinds:
            return []
        where, args = self._filters(kinds, namespace)
        where = (where + " AND" if where else " WHERE") + " revision > ?"
        rows = self._conn.execute(f"SELECT revision, type, body FROM events{where} ORDER BY revision LIMIT ?",
                                  (*args, after, limit))
        return [Event(row[1], int(row[0]), json.loads(row[2])) for row in rows]

    @staticmethod
    def _filters(kinds: tuple[str, ...] | None, namespace: str | None) -> tuple[str, tuple[Any, ...]]:
        clauses: builtins.list[str] = []
        args: builtins.list[Any] = []
        if kinds is not None:
            clauses.append(f"kind IN ({', '.join('?' for _ in kinds)})")
            args.extend(kinds)
        if namespace is not None:
            clauses.append("namespace = ?")
            args.append(namespace)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)

    def _rewrite_events(self, kind: str, rewrite: Callable[[dict[str, Any]], dict[str, Any] | None]) -> int:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            changed = 0
            rows = conn.execute("SELECT revision, body FROM events WHERE kind = ?", (kind,)).fetchall()
            for revision, body in rows:
                new = rewrite(json.loads(body))
                if new is not None:
                    conn.execute("UPDATE events SET body = ? WHERE revision = ?", (encode(new), revision))
                    changed += 1
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._docs.clear()  # bodies of events only, but nothing kept may outlive a rewrite
        if changed:
            # Pages freed before secure_delete was on may still hold old bodies: rebuild the file from what is
            # live, then fold the WAL (which holds page images) into it and truncate it to nothing.
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._narrow()
        return changed

    def _close(self) -> None:
        self._conn.close()
