"""Secrets at rest, through a real control plane on a SQLite file: the files hold no value (plain or base64),
no answer shows a value or a length, a load command still gets the values, the data dir is private."""

from __future__ import annotations

import base64
import json
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import berth.control.server as server
from berth.control import secrets
from berth.control.reconcile import model_source
from berth.control.sealing import Keyring, SealingStore, UnsealError
from berth.store import SQLiteStore, Store, open_store
from berth.store.files import private_dir
from tests.support.servers import ControlPlane, auth_headers

AUTH = auth_headers()
NS = "tenant-a"
ACCESS_KEY = "AKIAsealedctl5r8w"
SECRET_KEY = "wJalrXUtnFEMI-sealedCTL-bPxRfiCYzq"
TOKEN = "tok-6c2e91b04d7f35aa"
RCLONE = ("type: s3\nname: s3\nparameters:\n  provider: minio\n  env_auth: false\n"
          f"  access_key_id: {ACCESS_KEY}\n  secret_access_key: {SECRET_KEY}\n"
          "  endpoint: http://object-store.example.svc.cluster.local:9000\n")
VALUES = {"s3": RCLONE, "token": TOKEN}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def chunk(text: str, part: str) -> str:
    """The base64 characters that encode ``part`` where it sits inside ``text`` (4-aligned)."""
    start = text.index(part)
    return b64(text)[start // 3 * 4:(start + len(part)) // 3 * 4]


FORBIDDEN = {ACCESS_KEY, SECRET_KEY, TOKEN, b64(RCLONE), b64(TOKEN), b64(SECRET_KEY), chunk(RCLONE, SECRET_KEY),
             chunk(RCLONE, ACCESS_KEY), json.dumps(RCLONE)[1:-1]}


def secret(name: str, form: str, **meta: Any) -> dict[str, Any]:
    values = {k: b64(v) for k, v in VALUES.items()} if form == "data" else dict(VALUES)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS, **meta},
            "type": "Opaque", form: values}


MODEL = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": {"name": "fraud", "namespace": NS},
         "spec": {"storageUri": "s3://models/fraud", "requirements": ["sklearn"], "secretName": "by-string"}}


def no_secret_in(raw: bytes | str, where: str) -> None:
    data = raw.encode() if isinstance(raw, str) else raw
    leaked = [f for f in FORBIDDEN if f.encode() in data]
    assert not leaked, f"{where} holds secret material: {leaked}"


def shown_without_values(doc: dict[str, Any], where: str) -> None:
    assert doc["kind"] == "Secret", where
    assert doc["data"] == {"s3": "<redacted>", "token": "<redacted>"}, f"{where}: {doc}"
    assert "stringData" not in doc and "sealed" not in doc, f"{where}: {doc}"
    text = json.dumps(doc)
    assert not re.search(r"\d+\s*(chars|bytes)", text), f"{where} shows a length: {text}"
    assert "last-applied" not in text, f"{where}: {text}"
    no_secret_in(text, where)


@pytest.fixture
def sealing_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until berth.control.server wraps its store itself, wrap it here exactly as the server will."""
    if "SealingStore" in vars(server):
        return

    def sealed_store(path: Any, **kwargs: Any) -> Store:
        if path is None:
            return SealingStore(open_store(None, **kwargs), Keyring.ephemeral())
        data_dir = Path(path).parent
        private_dir(data_dir)
        return SealingStore(open_store(path, **kwargs), Keyring.open(data_dir / "secrets.key"))

    monkeypatch.setattr(server, "open_store", sealed_store)


def files_of(data_dir: Path) -> Iterator[Path]:
    return (p for p in sorted(data_dir.rglob("*")) if p.is_file())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def watch_events(url: str, want: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", url + "/api/v1/watch", params={"kinds": "Secret", "since": "0"}, timeout=timeout,
                      headers=AUTH) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.strip():
                events.append(json.loads(line))
            if len(events) >= want or time.monotonic() > deadline:
                break
    return events


def test_sealed_at_rest_through_the_control_plane(tmp_path: Path, sealing_server: None) -> None:
    data = tmp_path / "data"
    db = data / "berth.db"
    with ControlPlane(data, store=str(db)) as cp:
        api = cp.url + "/api/v1"
        docs = [secret("by-string", "stringData", annotations={
                    "kubectl.kubernetes.io/last-applied-configuration": json.dumps(secret("by-string", "stringData"))}),
                secret("by-data", "data"), MODEL]
        r = httpx.post(api + "/apply", json={"documents": docs}, timeout=10, headers=AUTH)
        assert r.status_code == 200, r.text
        assert sorted(x["action"] for x in r.json()["results"]) == ["created"] * 3
        again = httpx.post(api + "/apply", json={"documents": docs}, timeout=10, headers=AUTH)
        assert [x["action"] for x in again.json()["results"]] == ["unchanged"] * 3, again.text
        # what the API shows: keys only, one marker, no length
        for name in ("by-string", "by-data"):
            shown_without_values(httpx.get(f"{api}/namespaces/{NS}/secrets/{name}", timeout=5, headers=AUTH).json(),
                                 f"GET {name}")
        items = httpx.get(api + "/secrets", params={"namespace": NS}, timeout=5, headers=AUTH).json()["items"]
        assert len(items) == 2
        for doc in items:
            shown_without_values(doc, "LIST")
        for ev in watch_events(cp.url, 2):
            shown_without_values(ev["object"], f"watch {ev['type']}")
        # what the disk holds while it runs: no value, plain or base64; private modes
        for path in files_of(data):
            no_secret_in(path.read_bytes(), str(path))
        assert mode(data) == 0o700
        assert {p.name for p in files_of(data)} >= {"berth.db", "berth.db-wal", "secrets.key", "secrets.keys"}
        for path in files_of(data):
            assert mode(path) == 0o600, f"{path} is mode {mode(path):04o}"
        gone = httpx.delete(f"{api}/namespaces/{NS}/secrets/by-data", timeout=5, headers=AUTH)
        assert gone.status_code == 200
        shown_without_values(gone.json(), "DELETE answer")
        for path in files_of(data):
            no_secret_in(path.read_bytes(), f"{path} (after delete)")
    # the same files, opened as the control plane opens them: a load command gets the values; the deleted
    # Secret's copies in the history cannot be read any more
    store = SealingStore(SQLiteStore(db), Keyring.open(data / "secrets.key"))
    try:
        source = model_source(store, NS, store.get("Model", NS, "fraud"))
        assert source.secret == VALUES and source.secret_error is None
        assert secrets.resolve(store, NS, "by-data")[0] is None
        history = [e.object for e in store.inner.events_since(0) if e.kind == "Secret" and e.name == "by-data"]
        assert [o["sealed"][:9] for o in history] == ["berth:v1:", "berth:v1:"]  # ADDED, DELETED
        for obj in history:
            with pytest.raises(UnsealError, match="is gone"):
                store.unseal(obj)
    finally:
        store.close()
    for path in files_of(data):
        no_secret_in(path.read_bytes(), f"{path} (stopped)")
        assert mode(path) == 0o600, f"{path} is mode {mode(path):04o}"


def test_memory_store_control_plane_seals_too(tmp_path: Path, sealing_server: None) -> None:
    """With the store in memory nothing is written, and the answers are the same."""
    with ControlPlane(tmp_path / "data") as cp:
        r = httpx.post(cp.url + "/api/v1/apply", json={"documents": [secret("by-string", "stringData")]},
                       timeout=10, headers=AUTH)
        assert r.status_code == 200, r.text
        doc = httpx.get(f"{cp.url}/api/v1/namespaces/{NS}/secrets/by-string", timeout=5, headers=AUTH).json()
        shown_without_values(doc, "GET (memory store)")


def test_load_source_from_a_sealing_store(tmp_path: Path) -> None:
    """reconcile.model_source (what goes into a Load command) unseals; a missing data key is said, not sent."""
    store = SealingStore(SQLiteStore(tmp_path / "berth.db"), Keyring.open(tmp_path / "secrets.key"))
    try:
        store.apply_many([secret("by-string", "data"), MODEL])
        source = model_source(store, NS, store.get("Model", NS, "fraud"))
        assert source.secret == VALUES and source.secret_error is None
        store.keyring.destroy(store.keyring.kids())  # e.g. a keyring restored from an older backup
        broken = model_source(store, NS, store.get("Model", NS, "fraud"))
        assert broken.secret is None and broken.secret_error and "cannot be unsealed" in broken.secret_error
        no_secret_in(broken.model_dump_json(), "the load source of an unreadable secret")
    finally:
        store.close()
