"""Tokens and the audit log, in one SQLite file beside the store (``<data-dir>/auth.db``).

Tokens are kept as SHA-256 hashes only; the token itself is returned once, by :meth:`TokenRegistry.create`.
The audit log is append-only, committed with ``synchronous=FULL`` so an entry survives a kill -9 the
moment the call that wrote it returns.  Neither table ever holds a secret value.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth.errors import Conflict, InvalidInput, NotFound
from berth.resources.identity import (
    ALL,
    AgentIdentity,
    Principal,
    PrincipalKind,
    check_grants,
    hash_token,
    new_token,
)
from berth.resources.names import name_problem

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
  name TEXT PRIMARY KEY, hash TEXT UNIQUE NOT NULL, kind TEXT NOT NULL, grants TEXT NOT NULL,
  agent TEXT, created REAL NOT NULL, expires REAL, revoked REAL, created_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, principal TEXT NOT NULL, source TEXT NOT NULL,
  verb TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
  outcome TEXT NOT NULL, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_ns_time ON audit (namespace, time);
"""
MAX_AUDIT_READ = 10_000


@dataclass(frozen=True)
class TokenInfo:
    """What ``token list`` shows: never the token or its hash."""

    name: str
    kind: str
    grants: dict[str, str]
    agent: str | None
    created: float
    expires: float | None
    revoked: float | None
    created_by: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "grants": self.grants, "agent": self.agent,
                "created": self.created, "expires": self.expires, "revoked": self.revoked,
                "createdBy": self.created_by}

    def namespaces(self) -> frozenset[str]:
        """Where this token acts ("*": everywhere): an admin of all of them may list and revoke it."""
        if self.kind == "agent" and self.agent:
            return frozenset({self.agent.split("/")[0]})
        if self.kind != "user":
            return frozenset({ALL})
        return frozenset(self.grants)

    def principal(self) -> Principal:
        kind: PrincipalKind = self.kind  # type: ignore[assignment]
        return Principal(self.name, kind, dict(self.grants),
                         AgentIdentity.parse(self.agent) if self.agent else None)


class TokenRegistry:
    """Tokens (hashed) and the audit log.  Thread-safe; every call is short (one indexed statement)."""

    def __init__(self, path: Path | None, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
            os.chmod(path, 0o600)
        self._db = sqlite3.connect(str(path) if path is not None else ":memory:", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL" if path is not None else "PRAGMA journal_mode=MEMORY")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._by_hash: dict[str, TokenInfo] = {}
        self.on_revoke: list[Callable[[str], None]] = []  # called with the token name
        self.on_change: list[Callable[[], None]] = []  # called after any token is created or revoked

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- tokens -------------------------------------------------------------------------------------------

    def create(self, name: str, *, grants: Mapping[str, str] | None = None, kind: PrincipalKind = "user",
               agent: AgentIdentity | None = None, expires_in: float | None = None, created_by: str = "berth",
               token: str | None = None) -> str:
        """A new token named ``name``; returns the token itself (the only time it is seen)."""
        problem = name_problem(name, what="token name")
        if problem:
            raise InvalidInput(problem)
        try:
            checked = check_grants(grants or {})
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        if kind == "user" and not checked:
            raise InvalidInput(f"token {name}: a user token needs a role in at least one namespace")
        if expires_in is not None and expires_in <= 0:
            raise InvalidInput(f"token {name}: expiry must be in the future")
        secret = token or new_token()
        now = self._clock()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                    (name, hash_token(secret), kind, json.dumps(checked, sort_keys=True),
                     str(agent) if agent else None, now, now + expires_in if expires_in else None, created_by))
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"a token named {name} already exists; revoke it first or choose another name",
                               details={"token": name}) from exc
        self._changed()
        return secret

    def _changed(self) -> None:
        for callback in list(self.on_change):
            callback()

    def ensure(self, name: str, token: str, *, grants: Mapping[str, str], kind: PrincipalKind = "user",
               agent: AgentIdentity | None = None) -> None:
        """Make ``token`` valid under ``name`` (replacing an older token of that name): for tokens Berth
        hands its own processes (berth up's admin, its gateway, local agents)."""
        with self._lock:
            row = self._db.execute("SELECT hash, revoked FROM tokens WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] == hash_token(token) and row[1] is None:
                return
            self._db.execute("DELETE FROM tokens WHERE name = ?", (name,))
            self._by_hash = {h: t for h, t in self._by_hash.items() if t.name != name}
        self.create(name, grants=grants, kind=kind, agent=agent, token=token)

    def verify(self, token: str | None) -> Principal | None:
        """The principal of a valid (known, unexpired, unrevoked) token, else None."""
        if not token:
            return None
        digest = hash_token(token)
        info = self._by_hash.get(digest)
        if info is None:
            with self._lock:
                row = self._db.execute("SELECT * FROM tokens WHERE hash = ?", (digest,)).fetchone()
            if row is None:
                return None
            info = _info(row)
            if info.revoked is None:
                self._by_hash[digest] = info
        if info.revoked is not None or (info.expires is not None and info.expires <= self._clock()):
            return None
        return info.principal()

    def valid(self, name: str) -> bool:
        """Whether the token named ``name`` still holds (open watches ask this)."""
        with self._lock:
            row = self._db.execute("SELECT revoked, expires FROM tokens WHERE name = ?", (name,)).fetchone()
        return row is not None and row[0] is None and (row[1] is None or row[1] > self._clock())

    def all(self) -> list[TokenInfo]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM tokens ORDER BY name").fetchall()
        return [_info(r) for r in rows]

    def get(self, name: str) -> TokenInfo:
        with self._lock:
            row = self._db.execute("SELECT * FROM tokens WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no token named {name}", details={"token": name})
        return _info(row)

    def revoke(self, name: str) -> TokenInfo:
        info = self.get(name)
        with self._lock:
            self._db.execute("UPDATE tokens SET revoked = ? WHERE name = ? AND revoked IS NULL",
                             (self._clock(), name))
            self._by_hash = {h: t for h, t in self._by_hash.items() if t.name != name}
        for callback in list(self.on_revoke):
            callback(name)
        self._changed()
        return self.get(name) if info.revoked is None else info

    def hashes(self, predicate: Callable[[Principal], bool]) -> list[str]:
        """Hashes of the valid tokens whose principal satisfies ``predicate`` (for the gateway's table)."""
        now = self._clock()
        with self._lock:
            rows = self._db.execute("SELECT * FROM tokens WHERE revoked IS NULL").fetchall()
        return sorted(r[1] for r in rows
                      if (r[6] is None or r[6] > now) and predicate(_info(r).principal()))

    # --- audit --------------------------------------------------------------------------------------------

    def audit(self, *, principal: str, source: str, verb: str, kind: str = "", namespace: str = "",
              name: str = "", outcome: str, reason: str = "") -> None:
        """Append one record (committed before this returns)."""
        self.audit_many([{"principal": principal, "source": source, "verb": verb, "kind": kind,
                          "namespace": namespace, "name": name, "outcome": outcome, "reason": reason}])

    def audit_many(self, records: list[Mapping[str, str]]) -> None:
        """Append several records in one commit (an apply of many documents: one fsync, not one each)."""
        if not records:
            return
        now = self._clock()
        rows = [(now, r["principal"], r["source"], r["verb"], r.get("kind", ""), r.get("namespace", ""),
                 r.get("name", ""), r["outcome"], r.get("reason", "")[:1000]) for r in records]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT INTO audit (time, principal, source, verb, kind, namespace, name, "
                                     "outcome, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def audit_records(self, *, namespaces: frozenset[str] | None, since: float = 0.0,
                      limit: int = 1000) -> list[dict[str, Any]]:
        """The newest ``limit`` records at or after ``since``, oldest first; ``namespaces`` None means every
        namespace (records with no namespace included), else only records of those namespaces."""
        limit = max(1, min(limit, MAX_AUDIT_READ))
        where = "time >= ?"
        args: list[Any] = [since]
        if namespaces is not None:
            if not namespaces:
                return []
            where += f" AND namespace IN ({', '.join('?' * len(namespaces))})"
            args.extend(sorted(namespaces))
        with self._lock:
            rows = self._db.execute(
                "SELECT time, principal, source, verb, kind, namespace, name, outcome, reason FROM audit "
                f"WHERE {where} ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        keys = ("time", "principal", "source", "verb", "kind", "namespace", "name", "outcome", "reason")
        return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]


def _info(row: tuple[Any, ...]) -> TokenInfo:
    name, _hash, kind, grants, agent, created, expires, revoked, created_by = row
    return TokenInfo(name, kind, json.loads(grants), agent, created, expires, revoked, created_by)
