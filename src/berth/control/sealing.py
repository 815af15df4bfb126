"""Secrets sealed at rest: envelope encryption, and crypto-shredding for deletes.

* A **master key** (32 random bytes) lives in a key file: ``<data-dir>/secrets.key``, created 0600 with
  ``O_EXCL`` on first start, or a file given by path (Berth's own format, a base64 line such as
  ``openssl rand -base64 32`` writes, or 32 raw bytes).
* Every write of a Secret whose values changed gets a fresh random **data key** (AES-256-GCM).  It is kept
  only in the **keyring** (``<data-dir>/secrets.keys``, 0600, replaced atomically on each change), wrapped
  by the master key with the Secret's namespace, name and key id as associated data.
* The stored Secret carries its keys under ``data``, each mapped to ``<redacted>``, and a ``sealed`` blob
  ``berth:v1:<key id>:<base64url(nonce | ciphertext)>``: AES-GCM of the JSON of its values (as base64,
  ``stringData`` merged in, as Kubernetes does) with ``Secret/<namespace>/<name>/<key id>`` as associated
  data, so a blob copied onto another Secret does not open.  ``stringData`` is never stored; the annotation
  ``kubectl.kubernetes.io/last-applied-configuration`` is dropped and any other annotation that holds a
  value is replaced by ``<redacted>``.
* **Crypto-shredding**: when a Secret is deleted, or its values replaced, its previous data key is
  destroyed (the keyring file is rewritten without it), so every copy of the old blob (the store's event
  history, its file's free pages, a backup of ``berth.db``) can no longer be decrypted.
* Re-applying the same values (and type) re-uses the stored blob, so the store answers ``unchanged`` and
  ``generation`` stays; a label change is ``configured`` without a bump; new values bump it.
* Reads (get, list, watch events, delete and apply answers) never carry the blob: a Secret is shown by
  :func:`berth.control.secrets.redact`.  Only :meth:`SealingStore.reveal` decrypts, for
  :func:`berth.control.secrets.resolve` (the load command, the storage check).
* On open, a store written before sealing is migrated: plain Secrets are sealed, their plain copies in
  the event history are replaced by redacted ones and the file is vacuumed (see
  :meth:`berth.store.common.BaseStore.rewrite_history`); data keys no live Secret uses are destroyed.

A memory store gets the same wrapper with :meth:`Keyring.ephemeral` (a master key in memory only).
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import logging
import os
import secrets as pysecrets
import stat
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from berth.control.secrets import REDACTED, SEALED_FIELD, redact, scrub_metadata, secret_data
from berth.errors import BerthError, ConfigError, Conflict, InvalidInput, NotFound, Unavailable
from berth.store.base import ApplyAction, Event, Listener, StatusUpdate, Store
from berth.store.common import Key, key_of
from berth.store.files import create_private_exclusive, narrow, private_dir, write_private_atomic

log = logging.getLogger("berth.control.sealing")

KEY_FILE = "secrets.key"
KEYS_FILE = "secrets.keys"
KEY_PREFIX = "berth-secrets-key-v1:"
KEYS_FORMAT = "berth-keyring/v1"
BLOB_PREFIX = "berth:v1:"
_NONCE = 12
_CHECK_PLAIN = b"berth keyring check"
_CHECK_AAD = b"berth-keyring-check:v1"


class UnsealError(BerthError):
    """A sealed Secret cannot be opened: its data key was destroyed, or the blob failed authentication."""

    code = "Unsealable"
    http_status = 500


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encrypt(key: bytes, plain: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plain, aad)


def _decrypt(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Raises InvalidTag when the ciphertext, nonce or associated data were altered (or the key is wrong)."""
    if len(sealed) < _NONCE + 16:
        raise InvalidTag()
    return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)


def _wrap_aad(kid: str, namespace: str, name: str) -> bytes:
    return f"berth-data-key:v1\0{namespace}\0{name}\0{kid}".encode()


def _blob_aad(kid: str, namespace: str, name: str) -> bytes:
    return f"berth-secret:v1\0Secret\0{namespace}\0{name}\0{kid}".encode()


# -- the master key and the keyring ------------------------------------------------------------------------

def read_key_file(path: Path) -> bytes:
    """The 32-byte master key in ``path`` (Berth's format, a base64 line, or 32 raw bytes)."""
    try:
        raw = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"cannot read the secrets key {path}: {exc.strerror or exc}; it must be a file this "
                          "user can read (mode 0600)", details={"path": str(path)}) from exc
    if mode & 0o077:
        log.warning("the secrets key %s is mode %04o: other users may read it; run `chmod 600 %s`", path, mode,
                    path)
    text = raw.decode("ascii", errors="replace").strip()
    key: bytes | None = None
    try:
        if text.startswith(KEY_PREFIX):
            key = base64.b64decode(text[len(KEY_PREFIX):], validate=True)
        elif len(raw) == 32:
            key = raw
        elif text:
            key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = None
    if key is None or len(key) != 32:
        raise ConfigError(f"{path} is not a secrets key: expected '{KEY_PREFIX}<base64 of 32 bytes>', a base64 "
                          "line of 32 bytes (openssl rand -base64 32) or 32 raw bytes; give the key Berth "
                          "created, or remove the option to use <data-dir>/secrets.key",
                          details={"path": str(path)})
    return key


class Keyring:
    """Data keys wrapped by the master key, by key id; persisted (0600, atomically) when ``keys_file`` is set.

    Thread-safe.  Destroying a key rewrites the file without it: the old file is unlinked, not kept.
    """

    def __init__(self, master: bytes, *, key_file: Path | None = None, keys_file: Path | None = None,
                 entries: dict[str, dict[str, str]] | None = None) -> None:
        if len(master) != 32:
            raise ConfigError("a secrets master key is 32 bytes")
        self._master = master
        self.key_file = key_file
        self.keys_file = keys_file
        self._entries: dict[str, dict[str, str]] = dict(entries or {})
        self._check = _b64e(_encrypt(master, _CHECK_PLAIN, _CHECK_AAD))
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        where = f"{self.keys_file}" if self.keys_file else "memory"
        return f"Keyring({where}, {len(self._entries)} keys)"

    @classmethod
    def ephemeral(cls) -> Keyring:
        """A keyring with a random master key held in memory only (for a memory store)."""
        return cls(os.urandom(32))

    @classmethod
    def open(cls, key_file: str | Path, *, keys_file: str | Path | None = None) -> Keyring:
        """The keyring in ``keys_file`` (default: ``secrets.keys`` beside the key file) under the master key in
        ``key_file``; both are created 0600 when missing (the key with O_EXCL).  A key file that does not
        open the keyring is a :class:`ConfigError` naming both files."""
        key_path = Path(key_file)
        keys_path = Path(keys_file) if keys_file is not None else key_path.with_name(KEYS_FILE)
        try:
            if not keys_path.parent.exists():
                private_dir(keys_path.parent)
        except OSError as exc:
            raise ConfigError(f"cannot create the directory {keys_path.parent} for the keyring: "
                              f"{exc.strerror or exc}; choose a writable data directory",
                              details={"path": str(keys_path)}) from exc
        stored = cls._read_keys(keys_path)
        created = False
        if not key_path.exists():
            if stored is not None and stored["keys"]:
                raise ConfigError(
                    f"the secrets key {key_path} is missing, but {keys_path} holds {len(stored['keys'])} data "
                    f"keys sealed with it; restore {key_path} from your backup (or pass the key's path), or "
                    f"move {keys_path} aside to start over (every Secret must then be applied again)",
                    details={"path": str(key_path), "keyring": str(keys_path)})
            try:
                key_path.parent.mkdir(parents=True, exist_ok=True)
                text = KEY_PREFIX + base64.b64encode(os.urandom(32)).decode() + "\n"
                created = create_private_exclusive(key_path, text.encode())
            except OSError as exc:
                raise ConfigError(f"cannot create the secrets key {key_path}: {exc.strerror or exc}; choose a "
                                  "writable data directory", details={"path": str(key_path)}) from exc
            if created:
                log.info("created the secrets key %s (mode 0600); back it up apart from the data directory: "
                         "without it, sealed Secrets cannot be read", key_path)
        master = read_key_file(key_path)
        if stored is None or (created and not stored["keys"]):
            ring = cls(master, key_file=key_path, keys_file=keys_path)
            ring._save()
            return ring
        try:
            _decrypt(master, _b64d(stored["check"]), _CHECK_AAD)
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise ConfigError(
                f"the secrets key {key_path} does not open the keyring {keys_path}: they belong to different "
                f"keys; give the key file the keyring was made with, or move {keys_path} aside to start over "
                "(every Secret must then be applied again)",
                details={"path": str(key_path), "keyring": str(keys_path)}) from exc
        narrow(keys_path)
        return cls(master, key_file=key_path, keys_file=keys_path, entries=stored["keys"])

    @staticmethod
    def _read_keys(path: Path) -> dict[str, Any] | None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read the keyring {path}: {exc.strerror or exc}",
                              details={"path": str(path)}) from exc
        try:
            doc = json.loads(text)
            ok = (isinstance(doc, dict) and doc.get("format") == KEYS_FORMAT and isinstance(doc.get("check"), str)
                  and isinstance(doc.get("keys"), dict)
                  and all(isinstance(e, dict) and all(isinstance(e.get(f), str) for f in ("namespace", "name", "key"))
                          for e in doc["keys"].values()))
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"the keyring {path} is damaged (not a {KEYS_FORMAT} file); restore it from the "
                              "backup it was taken with, or move it aside to start over (every Secret must then "
                              "be applied again)", details={"path": str(path)})
        result: dict[str, Any] = doc
        return result

    def _save(self) -> None:
        if self.keys_file is None:
            return
        doc = {"format": KEYS_FORMAT, "check": self._check, "keys": self._entries}
        try:
            write_private_atomic(self.keys_file, json.dumps(doc, indent=1, sort_keys=True).encode())
        except OSError as exc:
            raise Unavailable(f"cannot write the keyring {self.keys_file}: {exc.strerror or exc}; check the disk "
                              "(space, permissions)", details={"path": str(self.keys_file)}) from exc

    # -- keys ---------------------------------------------------------------------------------------
    def new(self) -> tuple[str, bytes]:
        """A fresh (key id, data key), not yet kept: :meth:`add` keeps it."""
        with self._lock:
            while True:
                kid = pysecrets.token_hex(8)
                if kid not in self._entries:
                    return kid, AESGCM.generate_key(bit_length=256)

    def add(self, items: Iterable[tuple[str, str, str, bytes]]) -> None:
        """Keep data keys given as (key id, namespace, name, data key), durably, in one write."""
        with self._lock:
            added = {kid: {"namespace": ns, "name": name,
                           "key": _b64e(_encrypt(self._master, dk, _wrap_aad(kid, ns, name)))}
                     for kid, ns, name, dk in items}
            if not added:
                return
            self._entries.update(added)
            try:
                self._save()
            except BaseException:
                for kid in added:
                    self._entries.pop(kid, None)
                raise

    def data_key(self, kid: str, namespace: str, name: str) -> bytes:
        with self._lock:
            entry = self._entries.get(kid)
        what = f"Secret {namespace}/{name}"
        if entry is None or (entry["namespace"], entry["name"]) != (namespace, name):
            raise UnsealError(f"{what} cannot be unsealed: its data key {kid} is gone (the Secret was deleted or "
                              "its values replaced since), so this copy can no longer be read; apply the Secret "
                              "again", details={"namespace": namespace, "name": name, "key": kid})
        try:
            return _decrypt(self._master, _b64d(entry["key"]), _wrap_aad(kid, namespace, name))
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise UnsealError(f"{what} cannot be unsealed: its data key {kid} in {self.keys_file or 'the keyring'} "
                              "failed authentication (altered keyring or another secrets key); apply the Secret "
                              "again", details={"namespace": namespace, "name": name, "key": kid}) from exc

    def kids(self) -> set[str]:
        with self._lock:
            return set(self._entries)

    def kids_of(self, namespace: str, name: str) -> set[str]:
        with self._lock:
            return {kid for kid, e in self._entries.items() if (e["namespace"], e["name"]) == (namespace, name)}

    def destroy(self, kids: Iterable[str]) -> int:
        """Forget these data keys (durably); every blob sealed with one of them becomes unreadable."""
        with self._lock:
            gone = [kid for kid in set(kids) if kid in self._entries]
            if not gone:
                return 0
            removed = {kid: self._entries.pop(kid) for kid in gone}
            try:
                self._save()
            except BaseException:
                self._entries.update(removed)
                raise
            return len(gone)

    # -- blobs ----------------------------------------------------------------------------------------
    def seal(self, kid: str, data_key: bytes, namespace: str, name: str, payload: dict[str, str]) -> str:
        plain = json.dumps({"data": payload}, sort_keys=True, separators=(",", ":")).encode()
        return f"{BLOB_PREFIX}{kid}:{_b64e(_encrypt(data_key, plain, _blob_aad(kid, namespace, name)))}"

    def unseal(self, namespace: str, name: str, blob: Any) -> dict[str, str]:
        """The payload (values as base64) of a sealed blob; raises :class:`UnsealError` saying why not."""
        kid = blob_kid(blob)
        what = f"Secret {namespace}/{name}"
        if kid is None:
            raise UnsealError(f"{what} cannot be unsealed: its sealed field is not a {BLOB_PREFIX} blob; apply "
                              "the Secret again", details={"namespace": namespace, "name": name})
        key = self.data_key(kid, namespace, name)
        try:
            plain = _decrypt(key, _b64d(str(blob)[len(BLOB_PREFIX) + len(kid) + 1:]), _blob_aad(kid, namespace, name))
            payload = json.loads(plain)["data"]
        except (InvalidTag, binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise UnsealError(f"{what} cannot be unsealed: the sealed data failed authentication (it was altered, "
                              "or belongs to another Secret); apply the Secret again",
                              details={"namespace": namespace, "name": name, "key": kid}) from exc
        if not isinstance(payload, dict) or not all(isinstance(v, str) for v in payload.values()):
            raise UnsealError(f"{what} cannot be unsealed: its sealed payload is malformed; apply the Secret again",
                              details={"namespace": namespace, "name": name, "key": kid})
        return payload


def blob_kid(blob: Any) -> str | None:
    if not isinstance(blob, str) or not blob.startswith(BLOB_PREFIX):
        return None
    kid, sep, _ = blob[len(BLOB_PREFIX):].partition(":")
    return kid if sep and kid else None


# -- the store wrapper ---------------------------------------------------------------------------------------

def _is_secret(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("kind") == "Secret"


def shown(obj: dict[str, Any]) -> dict[str, Any]:
    """What leaves the wrapper: a Secret redacted (no blob, no values), anything else as stored."""
    return redact(obj) if _is_secret(obj) else obj


def _shown_event(ev: Event) -> Event:
    return Event(ev.type, ev.revision, redact(ev.object)) if _is_secret(ev.object) else ev


def _plain_payload(doc: dict[str, Any]) -> dict[str, str]:
    """The values of an unsealed Secret document as base64 (``stringData`` merged in, winning)."""
    out = {k: v for k, v in (doc.get("data") or {}).items()}
    out.update({k: base64.b64encode(str(v).encode()).decode() for k, v in (doc.get("stringData") or {}).items()})
    return out


class SealingStore:
    """A :class:`berth.store.base.Store` that keeps Secrets sealed in ``inner`` (and in its event history).

    Every write of a Secret goes through this wrapper (it holds a lock across the keyring and the inner
    write); other kinds pass through untouched.  See the module's docstring for the scheme.
    """

    def __init__(self, inner: Store, keyring: Keyring) -> None:
        self.inner = inner
        self.keyring = keyring
        self._lock = threading.RLock()
        self._listeners: builtins.list[tuple[Listener, Listener]] = []
        self._open()

    def __repr__(self) -> str:
        return f"SealingStore({self.inner!r}, {self.keyring!r})"

    # -- reads ----------------------------------------------------------------------------------------
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return shown(self.inner.get(kind, namespace, name))

    def list(self, kind: str | None = None, namespace: str | None = None,
             selector: dict[str, str] | None = None) -> builtins.list[dict[str, Any]]:
        return [shown(o) for o in self.inner.list(kind, namespace, selector)]

    def revision(self) -> int:
        return self.inner.revision()

    def events_since(self, revision: int, *, kinds: tuple[str, ...] | None = None,
                     namespace: str | None = None, limit: int = 1000) -> builtins.list[Event]:
        return [_shown_event(ev) for ev in self.inner.events_since(revision, kinds=kinds, namespace=namespace,
                                                                   limit=limit)]

    def reveal(self, namespace: str, name: str) -> dict[str, str]:
        """The decoded values of the stored Secret (for a load command only); NotFound / UnsealError.

        Takes no lock (a store listener may call it while a write holds the inner store): when the data key
        went away under it because the Secret was rewritten meanwhile, it reads the Secret again."""
        for _ in range(3):
            doc = self.inner.get("Secret", namespace, name)
            if SEALED_FIELD not in doc:
                return secret_data(doc)
            try:
                return secret_data({"data": self.keyring.unseal(namespace, name, doc[SEALED_FIELD])})
            except UnsealError:
                if self.inner.get("Secret", namespace, name).get(SEALED_FIELD) == doc[SEALED_FIELD]:
                    raise
        raise UnsealError(f"Secret {namespace}/{name} is being rewritten too often to unseal; try again",
                          details={"namespace": namespace, "name": name})

    def unseal(self, doc: dict[str, Any]) -> dict[str, str]:
        """The decoded values of a sealed Secret document as the inner store holds it (or its history did)."""
        meta = doc.get("metadata") or {}
        payload = self.keyring.unseal(str(meta.get("namespace")), str(meta.get("name")), doc.get(SEALED_FIELD))
        return secret_data({"data": payload})

    # -- writes ---------------------------------------------------------------------------------------
    def apply(self, body: dict[str, Any], *, expect_version: str | None = None
              ) -> tuple[dict[str, Any], ApplyAction]:
        results = self._write([body], lambda bodies: [self.inner.apply(bodies[0], expect_version=expect_version)])
        return results[0]

    def apply_many(self, bodies: builtins.list[dict[str, Any]]
                   ) -> builtins.list[tuple[dict[str, Any], ApplyAction]]:
        return self._write(bodies, self.inner.apply_many)

    def update_status(self, kind: str, namespace: str, name: str, status: dict[str, Any], *,
                      expect_version: str | None = None) -> dict[str, Any]:
        return shown(self.inner.update_status(kind, namespace, name, status, expect_version=expect_version))

    def update_statuses(self, updates: builtins.list[StatusUpdate]
                        ) -> builtins.list[dict[str, Any] | Conflict | NotFound]:
        return [r if isinstance(r, BaseException) else shown(r) for r in self.inner.update_statuses(updates)]

    def delete(self, kind: str, namespace: str, name: str, *,
               expect_version: str | None = None) -> dict[str, Any]:
        with self._lock:
            gone = self.inner.delete(kind, namespace, name, expect_version=expect_version)
            if kind == "Secret":
                self.keyring.destroy(self.keyring.kids_of(namespace, name))
        return shown(gone)

    def add_listener(self, listener: Listener) -> None:
        def wrapped(ev: Event) -> None:
            listener(_shown_event(ev))

        with self._lock:
            self._listeners.append((listener, wrapped))
        self.inner.add_listener(wrapped)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            pair = next((p for p in self._listeners if p[0] == listener), None)
            if pair is None:
                return
            self._listeners.remove(pair)
        self.inner.remove_listener(pair[1])

    def close(self) -> None:
        self.inner.close()

    # -- sealing --------------------------------------------------------------------------------------
    def _write(self, bodies: builtins.list[dict[str, Any]],
               call: Callable[[builtins.list[dict[str, Any]]], builtins.list[tuple[dict[str, Any], ApplyAction]]]
               ) -> builtins.list[tuple[dict[str, Any], ApplyAction]]:
        with self._lock:
            pending: dict[Key, dict[str, Any]] = {}
            fresh: builtins.list[tuple[str, str, str, bytes]] = []
            out = [self._seal(b, pending, fresh) if _is_secret(b) else b for b in bodies]
            self.keyring.add(fresh)  # durable before the Secret that needs it is
            try:
                results = call(out)
            except BaseException:
                self.keyring.destroy(kid for kid, *_ in fresh)
                raise
            stored = {(o["metadata"]["namespace"], o["metadata"]["name"]): blob_kid(o.get(SEALED_FIELD))
                      for o, _ in results if _is_secret(o)}
            for (ns, name), kid in stored.items():  # the superseded data keys: their blobs become unreadable
                self.keyring.destroy(self.keyring.kids_of(ns, name) - {kid})
        return [(shown(o), action) for o, action in results]

    def _current(self, key: Key, pending: dict[Key, dict[str, Any]]) -> dict[str, Any] | None:
        if key in pending:
            return pending[key]
        try:
            return self.inner.get(*key)
        except NotFound:
            return None

    def _payload_of(self, doc: dict[str, Any] | None) -> dict[str, str] | None:
        if doc is None:
            return None
        if SEALED_FIELD not in doc:
            return _plain_payload(doc)
        try:
            return self.keyring.unseal(doc["metadata"]["namespace"], doc["metadata"]["name"], doc[SEALED_FIELD])
        except UnsealError:
            return None

    def _seal(self, body: dict[str, Any], pending: dict[Key, dict[str, Any]],
              fresh: builtins.list[tuple[str, str, str, bytes]]) -> dict[str, Any]:
        key = key_of(body)
        _, ns, name = key
        where = f"Secret {ns}/{name}"
        current = self._current(key, pending)
        before = self._payload_of(current)
        payload: dict[str, str] = {}
        for field in ("data", "stringData"):
            values = body.get(field)
            if values is None:
                continue
            if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in values.items()):
                raise InvalidInput(f"{where}: {field}: expected a map of strings")
            for k, v in values.items():
                if field == "stringData":
                    payload[k] = base64.b64encode(v.encode()).decode()
                elif v == REDACTED:  # a shown Secret applied back: keep the stored value of that key
                    if before is None or k not in before:
                        raise InvalidInput(f"{where}: data.{k} is {REDACTED!r}, the marker Berth shows in place of "
                                           "a value, and there is no stored value to keep; apply the real value")
                    payload[k] = before[k]
                else:
                    payload[k] = v
        sealed = {k: v for k, v in body.items() if k not in ("data", "stringData", SEALED_FIELD)}
        sealed["data"] = {k: REDACTED for k in sorted(payload)}
        sealed["metadata"] = scrub_metadata(dict(body.get("metadata") or {}), secret_data({"data": payload}))
        if current is not None and before == payload and blob_kid(current.get(SEALED_FIELD)):
            sealed[SEALED_FIELD] = current[SEALED_FIELD]  # same values: same blob, so "unchanged" stays possible
        else:
            kid, data_key = self.keyring.new()
            sealed[SEALED_FIELD] = self.keyring.seal(kid, data_key, ns, name, payload)
            fresh.append((kid, ns, name, data_key))
        pending[key] = sealed
        return sealed

    # -- opening: migrate what was stored before sealing, drop unused keys ------------------------------
    def _open(self) -> None:
        with self._lock:
            plain = [doc for doc in self.inner.list("Secret") if SEALED_FIELD not in doc]
            for doc in plain:
                self.apply(doc)  # its resourceVersion makes this a compare-and-swap
            rewrite_history = getattr(self.inner, "rewrite_history", None)
            scrubbed = 0
            if callable(rewrite_history):
                scrubbed = int(rewrite_history("Secret", _scrub_event))
            if plain or scrubbed:
                log.warning("sealed %d Secrets stored in plain text and redacted %d plain copies in the store's "
                            "history", len(plain), scrubbed)
            kept = self.keyring.kids()
            live: set[str] = set()
            for doc in self.inner.list("Secret"):
                kid = blob_kid(doc.get(SEALED_FIELD))
                if kid is None or kid not in kept:
                    meta = doc["metadata"]
                    log.warning("Secret %s/%s cannot be unsealed: its data key is missing from the keyring %s; "
                                "apply it again", meta["namespace"], meta["name"], self.keyring.keys_file or "")
                else:
                    live.add(kid)
            unused = kept - live
            if unused:
                self.keyring.destroy(unused)
                log.info("destroyed %d data keys no stored Secret uses", len(unused))


def _scrub_event(obj: dict[str, Any]) -> dict[str, Any] | None:
    """A plain Secret in the history, redacted (sealed ones, and ones already redacted, stay as they are)."""
    if SEALED_FIELD in obj:
        return None
    new = redact(obj)
    return None if new == obj else new


if TYPE_CHECKING:  # mypy checks that the wrapper is a Store
    def _is_a_store(store: SealingStore) -> Store:
        return store
