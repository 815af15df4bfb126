"""Secrets sealed at rest (berth.control.sealing): what the inner store, its history and its files hold."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.control import secrets
from berth.control.sealing import KEY_PREFIX, Keyring, SealingStore, UnsealError
from berth.errors import ConfigError, Conflict, InvalidInput
from berth.store import Event, MemoryStore, SQLiteStore
from berth.store.base import Store
from berth.store.files import private_dir
from tests.unit import test_store_contract as contract

NS = "tenant-a"
TOKEN = "tok-Zq81vXw3Lm0pRt6y"
RCLONE = ("type: s3\nprovider: minio\naccess_key_id: AKIAsealtest7h2k\n"
          "secret_access_key: wJalrXUtnFEMI-K7MDENG-sealedKEY\n")
VALUES = {"token": TOKEN, "s3": RCLONE}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


FORBIDDEN = {TOKEN, b64(TOKEN), b64(RCLONE), "AKIAsealtest7h2k", "wJalrXUtnFEMI-K7MDENG-sealedKEY",
             json.dumps(RCLONE)[1:-1]}


def secret(name: str = "creds", form: str = "stringData", values: dict[str, str] | None = None,
           **meta: Any) -> dict[str, Any]:
    values = VALUES if values is None else values
    body = {k: b64(v) for k, v in values.items()} if form == "data" else dict(values)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS, **meta},
            "type": "Opaque", form: body}


def no_plaintext(text: str | bytes, where: str) -> None:
    raw = text.encode() if isinstance(text, str) else text
    leaked = [f for f in FORBIDDEN if f.encode() in raw]
    assert not leaked, f"{where} holds secret material: {leaked}"


class Sealed:
    """A SealingStore over a memory or SQLite store, with the pieces a test looks at."""

    def __init__(self, impl: str, root: Path) -> None:
        self.impl, self.root = impl, root
        self.db = root / "data" / "berth.db"
        self.key = root / "data" / "secrets.key"
        self.open()

    def open(self) -> None:
        if self.impl == "memory":
            self.inner: MemoryStore | SQLiteStore = MemoryStore()
            self.keyring = Keyring.ephemeral()
        else:
            self.inner = SQLiteStore(self.db)
            self.keyring = Keyring.open(self.key)
        self.store = SealingStore(self.inner, self.keyring)

    def reopen(self) -> None:
        self.store.close()
        self.open()

    def raw(self) -> str:
        """Everything the inner store holds and remembers, as text."""
        return json.dumps([self.inner.list(), [e.as_dict() for e in self.inner.events_since(0, limit=10_000)]])

    def files(self) -> Iterator[tuple[Path, bytes]]:
        if self.impl == "sqlite":
            for path in sorted(self.db.parent.iterdir()):
                yield path, path.read_bytes()


@pytest.fixture(params=["memory", "sqlite"])
def sealed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sealed]:
    s = Sealed(str(request.param), tmp_path)
    yield s
    s.store.close()


@pytest.mark.parametrize("form", ["stringData", "data"])
def test_round_trip_and_nothing_readable_in_the_store(sealed: Sealed, form: str) -> None:
    store = sealed.store
    obj, action = store.apply(secret(form=form))
    assert action == "created" and obj["data"] == {"s3": "<redacted>", "token": "<redacted>"}
    assert "stringData" not in obj and "sealed" not in obj
    assert store.reveal(NS, "creds") == VALUES
    assert secrets.resolve(store, NS, "creds") == (VALUES, None)
    shown = [store.get("Secret", NS, "creds"), *store.list("Secret"), *store.list(namespace=NS),
             *(e.object for e in store.events_since(0))]
    for doc in shown:
        assert doc["data"] == {"s3": "<redacted>", "token": "<redacted>"} and "sealed" not in doc, doc
    no_plaintext(json.dumps(shown), "what the wrapper shows")
    raw = sealed.raw()
    no_plaintext(raw, "the inner store and its history")
    stored = sealed.inner.get("Secret", NS, "creds")
    assert stored["sealed"].startswith("berth:v1:") and "stringData" not in stored
    for path, data in sealed.files():
        no_plaintext(data, str(path))


def test_identical_reapply_is_unchanged_and_generation_follows_values(sealed: Sealed) -> None:
    store = sealed.store
    first, _ = store.apply(secret())
    events = store.events_since(0)
    for body in (secret(), secret(form="data")):  # the same values, given either way
        again, action = store.apply(body)
        assert action == "unchanged" and again == first
    assert store.events_since(0) == events
    labelled, action = store.apply(secret(labels={"tier": "gold"}))
    assert action == "configured" and labelled["metadata"]["generation"] == 1
    changed, action = store.apply(secret(values={**VALUES, "token": "tok-rotated-000111"}, labels={"tier": "gold"}))
    assert action == "configured" and changed["metadata"]["generation"] == 2
    typed = secret(values={**VALUES, "token": "tok-rotated-000111"}, labels={"tier": "gold"})
    typed["type"] = "kubernetes.io/basic-auth"
    assert store.apply(typed)[0]["metadata"]["generation"] == 3
    assert store.reveal(NS, "creds")["token"] == "tok-rotated-000111"


def test_delete_and_replace_destroy_the_data_key(sealed: Sealed) -> None:
    store = sealed.store
    store.apply(secret())
    first = sealed.inner.get("Secret", NS, "creds")
    assert store.unseal(first) == VALUES
    store.apply(secret(values={**VALUES, "token": "tok-rotated-000111"}))
    with pytest.raises(UnsealError, match=r"Secret tenant-a/creds cannot be unsealed: its data key \w+ is gone"):
        store.unseal(first)  # the superseded copy in the history
    gone = store.delete("Secret", NS, "creds")
    assert gone["data"] == {"s3": "<redacted>", "token": "<redacted>"} and "sealed" not in gone
    history = [e.object for e in sealed.inner.events_since(0) if e.kind == "Secret"]
    assert len(history) == 3 and all(o["sealed"].startswith("berth:v1:") for o in history)
    for obj in history:
        with pytest.raises(UnsealError, match="is gone"):
            store.unseal(obj)
    assert sealed.keyring.kids() == set()
    if sealed.impl == "sqlite":
        kids = {o["sealed"].split(":")[2] for o in history}
        assert not any(kid in (sealed.key.parent / "secrets.keys").read_text() for kid in kids)
    assert secrets.resolve(store, NS, "creds")[0] is None
    sealed.reopen()  # and it stays so
    for obj in history:
        with pytest.raises(UnsealError):
            sealed.store.unseal(obj)


def test_tampered_or_moved_ciphertext_fails_authentication(sealed: Sealed) -> None:
    store = sealed.store
    store.apply(secret())
    raw = sealed.inner.get("Secret", NS, "creds")
    blob = raw["sealed"]
    flipped = blob[:-6] + ("A" if blob[-6] != "A" else "B") + blob[-5:]
    sealed.inner.apply({**raw, "sealed": flipped})
    with pytest.raises(UnsealError, match="failed authentication"):
        store.reveal(NS, "creds")
    data, why = secrets.resolve(store, NS, "creds")
    assert data is None and why and "creds" in why and "failed authentication" in why
    other = {**raw, "metadata": {"name": "other", "namespace": NS}, "sealed": blob}
    sealed.inner.apply(other)  # a blob copied onto another Secret does not open there
    with pytest.raises(UnsealError, match="tenant-a/other"):
        store.reveal(NS, "other")


def test_annotations_hold_no_copy(sealed: Sealed) -> None:
    body = secret(annotations={
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(secret()),
        "note": f"rotated; old token was {TOKEN}",
        "embedded": f"key={b64(TOKEN)}",
        "line": "secret_access_key: wJalrXUtnFEMI-K7MDENG-sealedKEY",
        "owner": "team-risk"})
    obj, _ = sealed.store.apply(body)
    assert obj["metadata"]["annotations"] == {"note": "<redacted>", "embedded": "<redacted>", "line": "<redacted>",
                                              "owner": "team-risk"}
    no_plaintext(sealed.raw(), "the inner store")
    again, action = sealed.store.apply(body)  # re-applied with the same annotations: still unchanged
    assert action == "unchanged"


def test_shown_secret_applied_back_keeps_values(sealed: Sealed) -> None:
    store = sealed.store
    shown, _ = store.apply(secret())
    shown["metadata"]["labels"] = {"edited": "yes"}
    obj, action = store.apply(shown)
    assert action == "configured" and obj["metadata"]["generation"] == 1
    assert store.reveal(NS, "creds") == VALUES
    with pytest.raises(InvalidInput, match="data.fresh is '<redacted>'"):
        store.apply({**shown, "data": {**shown["data"], "fresh": "<redacted>"}})


def test_failed_batch_leaves_no_key_behind(sealed: Sealed) -> None:
    store = sealed.store
    store.apply(secret())
    kids = sealed.keyring.kids()
    with pytest.raises(Conflict):
        store.apply_many([secret("second"), secret(values={"token": "new-value-123456"}, resourceVersion="99")])
    assert sealed.keyring.kids() == kids and store.reveal(NS, "creds") == VALUES
    results = store.apply_many([secret("second"), secret("second", values={"token": "twice-applied-987"})])
    assert [a for _, a in results] == ["created", "configured"]
    assert store.reveal(NS, "second") == {"token": "twice-applied-987"}
    assert len(sealed.keyring.kids()) == 2  # one per live Secret: the batch's first blob of "second" is shredded


def test_listeners_see_redacted_events(sealed: Sealed) -> None:
    seen: list[Event] = []
    sealed.store.add_listener(seen.append)
    sealed.store.apply(secret())
    sealed.store.delete("Secret", NS, "creds")
    sealed.store.remove_listener(seen.append)
    sealed.store.apply(secret())
    assert [e.type for e in seen] == ["ADDED", "DELETED"]
    assert all("sealed" not in e.object and e.object["data"]["token"] == "<redacted>" for e in seen)


def test_redact_shows_no_lengths() -> None:
    doc = secret(annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}", "n": TOKEN})
    doc["data"] = {"extra": b64("x" * 40)}
    shown = secrets.redact(doc)
    assert shown["data"] == {"extra": "<redacted>", "s3": "<redacted>", "token": "<redacted>"}
    assert "stringData" not in shown and shown["metadata"]["annotations"] == {"n": "<redacted>"}
    assert set(shown["data"].values()) == {"<redacted>"}  # one marker: no length, no hint


def test_reveal_during_rotation_sees_old_or_new_values(sealed: Sealed) -> None:
    store = sealed.store
    store.apply(secret(values={"token": "value-0000"}))
    done = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def reader() -> None:
        while not done.is_set():
            try:
                seen.append(store.reveal(NS, "creds")["token"])
            except BaseException as exc:  # reported below
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(1, 25):
        store.apply(secret(values={"token": f"value-{i:04d}"}))
    done.set()
    thread.join()
    assert not errors and seen and all(re.fullmatch(r"value-\d{4}", v) for v in seen)
    assert len(sealed.keyring.kids()) == 1


# -- the key file and the keyring ---------------------------------------------------------------------------

def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_created_0600_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = SealingStore(SQLiteStore(data / "berth.db"), Keyring.open(data / "secrets.key"))
    store.apply(secret())
    key_text = (data / "secrets.key").read_text()
    assert key_text.startswith(KEY_PREFIX)
    assert mode(data) == 0o700
    for name in ("secrets.key", "secrets.keys", "berth.db", "berth.db-wal", "berth.db-shm"):
        assert mode(data / name) == 0o600, name
    store.close()
    again = SealingStore(SQLiteStore(data / "berth.db"), Keyring.open(data / "secrets.key"))
    assert (data / "secrets.key").read_text() == key_text
    assert again.reveal(NS, "creds") == VALUES
    again.close()


def test_given_key_file(tmp_path: Path) -> None:
    given = tmp_path / "etc" / "berth.key"
    given.parent.mkdir()
    given.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")  # as `openssl rand -base64 32` writes
    os.chmod(given, 0o600)
    ring = Keyring.open(given, keys_file=tmp_path / "data" / "secrets.keys")
    store = SealingStore(SQLiteStore(tmp_path / "data" / "berth.db"), ring)
    store.apply(secret())
    store.close()
    assert not (tmp_path / "data" / "secrets.key").exists() and not (tmp_path / "etc" / "secrets.keys").exists()
    again = SealingStore(SQLiteStore(tmp_path / "data" / "berth.db"),
                         Keyring.open(given, keys_file=tmp_path / "data" / "secrets.keys"))
    assert again.reveal(NS, "creds") == VALUES
    again.close()


def test_wrong_missing_or_malformed_key_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = SealingStore(SQLiteStore(data / "berth.db"), Keyring.open(data / "secrets.key"))
    store.apply(secret())
    store.close()
    other = tmp_path / "other.key"
    Keyring.open(other, keys_file=tmp_path / "other.keys")
    with pytest.raises(ConfigError, match=f"the secrets key {other} does not open the keyring {data / 'secrets.keys'}"):
        Keyring.open(other, keys_file=data / "secrets.keys")
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    with pytest.raises(ConfigError, match=f"{bad} is not a secrets key"):
        Keyring.open(bad, keys_file=data / "secrets.keys")
    (data / "secrets.key").rename(tmp_path / "moved.key")
    with pytest.raises(ConfigError, match=f"the secrets key {data / 'secrets.key'} is missing"):
        Keyring.open(data / "secrets.key")
    assert not (data / "secrets.key").exists()  # no new key was made over a keyring it cannot open
    (data / "secrets.keys").write_text("{")
    with pytest.raises(ConfigError, match="is damaged"):
        Keyring.open(tmp_path / "moved.key", keys_file=data / "secrets.keys")


def test_plain_store_is_migrated_on_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "data" / "berth.db"
    plain = SQLiteStore(db)  # written by a Berth before sealing: values in the objects and the history
    plain.apply(secret(annotations={"kubectl.kubernetes.io/last-applied-configuration": json.dumps(secret())}))
    plain.apply(secret(form="data", labels={"x": "y"}))
    plain.apply(secret("gone"))
    plain.delete("Secret", NS, "gone")
    plain.apply(contract.model("m"))
    plain.close()
    assert TOKEN.encode() in db.read_bytes()
    with caplog.at_level(logging.WARNING, logger="berth.control.sealing"):
        store = SealingStore(SQLiteStore(db), Keyring.open(tmp_path / "data" / "secrets.key"))
    assert "sealed 1 Secrets stored in plain text" in caplog.text
    assert store.reveal(NS, "creds") == VALUES
    for path in sorted(db.parent.iterdir()):
        no_plaintext(path.read_bytes(), str(path))
    no_plaintext(json.dumps([e.as_dict() for e in store.inner.events_since(0)]), "history")
    assert [e.type for e in store.events_since(0)] == ["ADDED", "MODIFIED", "ADDED", "DELETED", "ADDED", "MODIFIED"]
    assert store.get("Model", "financial-ml", "m")["spec"]["storageUri"] == "s3://bucket/m"
    store.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="berth.control.sealing"):  # once only
        SealingStore(SQLiteStore(db), Keyring.open(tmp_path / "data" / "secrets.key")).close()
    assert "plain" not in caplog.text


def test_unused_data_keys_are_destroyed_on_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ring = Keyring.open(data / "secrets.key")
    kid, dk = ring.new()
    ring.add([(kid, NS, "crashed-before-commit", dk)])
    store = SealingStore(SQLiteStore(data / "berth.db"), Keyring.open(data / "secrets.key"))
    assert store.keyring.kids() == set() and kid not in (data / "secrets.keys").read_text()
    store.close()


# -- directories --------------------------------------------------------------------------------------------

def test_private_dir_policy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fresh = private_dir(tmp_path / "a" / "fresh")
    assert mode(fresh) == 0o700
    old = tmp_path / "old"  # a data dir an older Berth made with the umask's mode
    (old / "logs").mkdir(parents=True)
    os.chmod(old, 0o755)
    assert mode(private_dir(old)) == 0o700
    mine = tmp_path / "mine"  # the user's own directory, holding other things: left alone, with a warning
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    os.chmod(mine, 0o755)
    with caplog.at_level(logging.WARNING, logger="berth.store"):
        assert mode(private_dir(mine)) == 0o755
    assert "chmod 700" in caplog.text


def test_store_files_found_wider_are_narrowed(tmp_path: Path) -> None:
    db = tmp_path / "berth.db"
    SQLiteStore(db).close()
    os.chmod(db, 0o644)  # as an older Berth left it under a 022 umask
    store = SQLiteStore(db)
    store.apply(contract.model("m"))
    assert all(mode(p) == 0o600 for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")))
    store.close()


# -- the Store contract holds through the wrapper -----------------------------------------------------------

CONTRACT: list[Callable[[Any], None]] = [
    contract.test_create_stamps_metadata_and_ignores_status, contract.test_get_hands_out_copies,
    contract.test_list_sorted_and_filtered, contract.test_generation_bumps_only_on_spec_change,
    contract.test_secret_generation_follows_data, contract.test_resource_versions_strictly_increase,
    contract.test_unchanged_apply_writes_nothing, contract.test_cas_conflict_changes_nothing,
    contract.test_expected_version_of_missing_object_is_not_found, contract.test_update_status,
    contract.test_delete, contract.test_events_since_filters, contract.test_listeners_see_committed_writes,
    contract.test_apply_many_is_atomic, contract.test_concurrent_writers_get_distinct_revisions]


@pytest.mark.parametrize("case", CONTRACT, ids=[c.__name__.removeprefix("test_") for c in CONTRACT])
def test_store_contract_through_the_wrapper(sealed: Sealed, case: Callable[[Store], None]) -> None:
    case(sealed.store)
