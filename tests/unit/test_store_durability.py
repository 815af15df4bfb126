"""The SQLite store keeps every acknowledged write through a SIGKILL, a reopen and a damaged file."""

from __future__ import annotations

import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from berth.errors import ConfigError
from berth.store import SQLiteStore

WRITER = r"""
import sys
from berth.store import SQLiteStore

store = SQLiteStore(sys.argv[1])
i = 0
while True:
    name = f"m-{i:05d}"
    body = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
            "metadata": {"name": name, "namespace": "durable"}, "spec": {"storageUri": f"s3://b/{i}"}}
    obj, _ = store.apply(body)
    print("apply", name, obj["metadata"]["resourceVersion"], flush=True)
    obj = store.update_status("Model", "durable", name, {"written": i})
    print("status", name, obj["metadata"]["resourceVersion"], flush=True)
    i += 1
"""


def model(name: str, ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
            "metadata": {"name": name, "namespace": ns}, "spec": {"storageUri": f"s3://bucket/{name}"}}


def _read_acks(proc: subprocess.Popen[bytes], want: int, deadline: float) -> bytes:
    """Read the child's output until ``want`` apply acknowledgements arrived (or the deadline passed)."""
    assert proc.stdout is not None
    data = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while data[:data.rfind(b"\n") + 1].count(b"apply ") < want and time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    sel.close()
    return data


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "data" / "berth.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        data = _read_acks(proc, 200, time.monotonic() + 15)
        time.sleep(0.05)  # let it run on a little, so the kill lands at no particular point
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the child is writing as fast as it can
        rest, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    text = (data + rest).decode()
    lines = text.split("\n")[:-1]  # the last piece has no newline: not a complete acknowledgement
    applied = {name: int(rev) for op, name, rev in (ln.split() for ln in lines) if op == "apply"}
    statuses = {name: int(rev) for op, name, rev in (ln.split() for ln in lines) if op == "status"}
    assert len(applied) >= 200, f"only {len(applied)} acknowledgements in time: {err.decode()[-2000:]}"

    store = SQLiteStore(path)
    try:
        stored = {o["metadata"]["name"]: o for o in store.list("Model", "durable")}
        for name, rev in applied.items():
            assert name in stored, f"acknowledged {name} (revision {rev}) was lost"
            assert int(stored[name]["metadata"]["resourceVersion"]) >= rev
        for name, rev in statuses.items():
            assert stored[name]["status"] == {"written": int(name[2:])}
            assert stored[name]["metadata"]["resourceVersion"] == str(rev)
        last = max([*applied.values(), *statuses.values()])
        assert store.revision() >= last
        obj, action = store.apply(model("after-crash"))
        assert action == "created" and int(obj["metadata"]["resourceVersion"]) == store.revision() > last
        events = store.events_since(last - 5)
        assert [e.revision for e in events] == list(range(last - 4, store.revision() + 1))
    finally:
        store.close()


def test_reopen_continues_revisions_and_keeps_events(tmp_path: Path) -> None:
    path = tmp_path / "berth.db"
    store = SQLiteStore(path, max_events=3)
    for i in range(5):
        store.apply(model(f"m{i}"))
    store.delete("Model", "default", "m0")
    store.close()
    again = SQLiteStore(path, max_events=3)
    try:
        assert again.revision() == 6
        assert [e.type for e in again.events_since(3)] == ["ADDED", "ADDED", "DELETED"]
        assert [o["metadata"]["name"] for o in again.list()] == ["m1", "m2", "m3", "m4"]
        assert again.apply(model("m5"))[0]["metadata"]["resourceVersion"] == "7"
    finally:
        again.close()


def test_revision_never_goes_backwards(tmp_path: Path) -> None:
    path = tmp_path / "berth.db"
    first = SQLiteStore(path)
    first.apply(model("m"))
    first.close()
    with sqlite3.connect(path) as conn:  # a counter behind its objects (e.g. restored by hand)
        conn.execute("UPDATE objects SET revision = 40")
        conn.execute("UPDATE meta SET value = 0 WHERE key = 'revision'")
    conn.close()
    store = SQLiteStore(path)
    assert store.revision() == 40
    assert store.apply(model("n"))[0]["metadata"]["resourceVersion"] == "41"
    store.close()


def test_wal_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "berth.db"
    store = SQLiteStore(path)
    try:
        assert path.exists()
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        other.close()
    finally:
        store.close()


def test_corrupt_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "berth.db"
    path.write_bytes(b"this is not a database, " * 200)
    with pytest.raises(ConfigError) as err:
        SQLiteStore(path)
    assert str(path) in str(err.value) and "file is not a database" in str(err.value)
    assert err.value.details["path"] == str(path)


def test_unopenable_path_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(ConfigError, match="dir.db"):
        SQLiteStore(tmp_path / "dir.db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create the directory"):
        SQLiteStore(tmp_path / "file" / "sub" / "berth.db")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "berth.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema'")
    conn.close()
    with pytest.raises(ConfigError, match="schema version 99"):
        SQLiteStore(path)
