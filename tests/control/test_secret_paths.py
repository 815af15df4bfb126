"""A Secret's values never come back out of the control plane, by any read path; agents still get them.

The Secret is the rclone-style S3 remote Berth reads (examples/financial-ml/05-secret.yaml) plus a plain
token, given once as base64 ``data`` and once as ``stringData``.  Every answer is searched for the plain
values and for their base64 encodings; every answer that carries the Secret must show the redaction
marker with the keys still listed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import httpx
import pytest
import yaml

from berth.control.reconcile import model_source
from berth.resources.manifest import validate_document
from berth.store import MemoryStore
from berth.wire import agent as wire
from tests.support.servers import ControlPlane, auth_headers

AUTH = auth_headers()  # the session's admin token

NS = "tenant-a"
NAME = "s3-creds"
ACCESS_KEY = "AKIAberthtest41d2q"
SECRET_KEY = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzq"
TOKEN = "tok-5e1b0c93a7d24f68"
RCLONE = ("type: s3\nname: s3\nparameters:\n  provider: minio\n  env_auth: false\n"
          f"  access_key_id: {ACCESS_KEY}\n  secret_access_key: {SECRET_KEY}\n"
          "  endpoint: http://object-store.example.svc.cluster.local:9000\n")
VALUES = {"s3": RCLONE, "token": TOKEN}
FORMS = ("data", "stringData")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _stored_chunk(text: str, part: str) -> str:
    """The base64 characters that encode ``part`` where it sits inside ``text`` (4-aligned)."""
    start = text.index(part)
    return _b64(text)[start // 3 * 4:(start + len(part)) // 3 * 4]


FORBIDDEN = {ACCESS_KEY, SECRET_KEY, TOKEN, _b64(RCLONE), _b64(TOKEN), _b64(SECRET_KEY),
             _stored_chunk(RCLONE, SECRET_KEY), _stored_chunk(RCLONE, ACCESS_KEY)}


def secret(form: str, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": NAME, "namespace": NS, **({"labels": labels} if labels else {})}
    values = {k: _b64(v) for k, v in VALUES.items()} if form == "data" else dict(VALUES)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", form: values}


def hidden(text: str, where: str, *, carries_secret: bool = True) -> None:
    leaked = [f for f in FORBIDDEN if f in text]
    assert not leaked, f"{where} leaks secret material {leaked}: {text[:400]}"
    if carries_secret:
        assert "redacted" in text, f"{where} shows no redaction marker: {text[:400]}"


def redacted_doc(doc: dict[str, Any], form: str, where: str) -> None:
    """The Secret as shown: its keys are listed under ``data`` (``stringData`` is merged in, as Kubernetes
    does), each value replaced by the one marker ``<redacted>``: no length, no hint, no sealed blob."""
    assert doc["kind"] == "Secret" and doc["metadata"]["name"] == NAME, where
    shown = doc.get("data")
    assert isinstance(shown, dict) and sorted(shown) == ["s3", "token"], f"{where}: keys not listed: {doc}"
    assert all(v == "<redacted>" for v in shown.values()), f"{where}: {shown}"
    assert "stringData" not in doc and "sealed" not in doc, f"{where}: {doc}"
    hidden(json.dumps(doc), where)


def ndjson_until(url: str, params: dict[str, str], done: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Read NDJSON watch events until ``done(events)``; the raw text is checked as well."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", url + "/api/v1/watch", params=params, timeout=timeout, headers=AUTH) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            hidden(line, "watch (NDJSON) line", carries_secret=bool(line.strip()))
            if line.strip():
                events.append(json.loads(line))
            if done(events) or time.monotonic() > deadline:
                break
    assert done(events), f"watch ended before the expected events: {events}"
    return events


def ws_until(url: str, query: str, done: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        async with aiohttp.ClientSession(headers=AUTH) as s, s.ws_connect(url + "/api/v1/watch?" + query) as ws:
            while not done(events):
                msg = await asyncio.wait_for(ws.receive(), timeout)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                hidden(msg.data, "watch (WebSocket) frame")
                events.append(json.loads(msg.data))
        return events

    return asyncio.run(run())


def has(*types: str) -> Any:
    return lambda evs: [e["type"] for e in evs if e["object"]["metadata"]["name"] == NAME][:len(types)] == list(types)


@pytest.mark.parametrize("form", FORMS)
def test_secret_values_never_come_back(control: ControlPlane, cli, form: str) -> None:
    api = control.url + "/api/v1"
    rev0 = httpx.get(api + "/secrets", params={"namespace": NS}, timeout=5, headers=AUTH).json()["revision"]
    # apply: JSON (dry run, then for real), YAML, and a rejected set holding the Secret
    for dry in (True, False):
        r = httpx.post(api + "/apply", json={"documents": [secret(form)], "dryRun": dry}, timeout=5, headers=AUTH)
        assert r.status_code == 200, r.text
        hidden(r.text, f"apply response (dryRun={dry})", carries_secret=False)
    assert r.json()["results"][0]["action"] == "created"
    r = httpx.post(api + "/apply", content=yaml.safe_dump(secret(form, labels={"tier": "gold"})),
                   headers={"Content-Type": "application/yaml", **AUTH}, timeout=5)
    assert r.status_code == 200 and r.json()["results"][0]["action"] == "configured", r.text
    hidden(r.text, "apply response (YAML)", carries_secret=False)
    bad = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": {"name": "m", "namespace": NS},
           "spec": {"storageUri": "s3://b/k", "replicas": "two"}}
    r = httpx.post(api + "/apply", json={"documents": [secret(form), bad]}, timeout=5, headers=AUTH)
    assert r.status_code == 422
    hidden(r.text, "apply error answer", carries_secret=False)
    # get one, list in the namespace, list across namespaces (and by label)
    redacted_doc(httpx.get(f"{api}/namespaces/{NS}/secrets/{NAME}", timeout=5, headers=AUTH).json(), form, "GET one")
    for params in ({"namespace": NS}, {}, {"selector": "tier=gold"}):
        items = httpx.get(api + "/secrets", params=params, timeout=5, headers=AUTH).json()["items"]
        assert len(items) == 1, (params, items)
        redacted_doc(items[0], form, f"LIST {params}")
    # watch without since: the current objects come first, as ADDED
    ndjson_until(control.url, {"kinds": "Secret"}, has("ADDED"))
    ws_until(control.url, "kinds=Secret", has("ADDED"))
    # the CLI
    for args in (("get", "secret", NAME), ("get", "secrets"), ("get", "secrets", "-A")):
        for out in ("yaml", "json"):
            r = cli("--server", control.url, *args, "-n", NS, "-o", out)
            assert r.code == 0 and NAME in r.out, r.err
            hidden(r.out + r.err, f"berth {' '.join(args)} -o {out}")
    r = cli("--server", control.url, "get", "secrets", "-n", NS)
    assert r.code == 0 and NAME in r.out
    hidden(r.out + r.err, "berth get secrets (table)", carries_secret=False)
    for out in ("yaml", "json"):
        r = cli("--server", control.url, "describe", "secret", NAME, "-n", NS, "-o", out)
        assert r.code == 0, r.err
        hidden(r.out + r.err, f"berth describe secret -o {out}")
    r = cli("--server", control.url, "describe", "secret", NAME, "-n", NS)
    hidden(r.out + r.err, "berth describe secret", carries_secret=False)
    # delete answers the object as it was, redacted
    r = httpx.delete(f"{api}/namespaces/{NS}/secrets/{NAME}", timeout=5, headers=AUTH)
    assert r.status_code == 200
    redacted_doc(r.json(), form, "DELETE answer")
    # the whole history from before the apply: ADDED, MODIFIED (label), DELETED, each redacted
    events = ndjson_until(control.url, {"kinds": "Secret", "since": str(rev0)}, has("ADDED", "MODIFIED", "DELETED"))
    for ev in events:
        redacted_doc(ev["object"], form, f"watch {ev['type']} event")
    events = ws_until(control.url, f"kinds=Secret&since={rev0}", has("ADDED", "MODIFIED", "DELETED"))
    for ev in events:
        redacted_doc(ev["object"], form, f"WebSocket {ev['type']} event")


@pytest.mark.parametrize("form", FORMS)
def test_the_load_command_carries_the_decoded_values(form: str) -> None:
    store = MemoryStore()
    model = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
             "metadata": {"name": "fraud", "namespace": NS},
             "spec": {"storageUri": "s3://models/fraud", "requirements": ["sklearn"], "secretName": NAME}}
    bodies = []
    for i, doc in enumerate((secret(form), model), start=1):
        body, problems = validate_document(doc, f"doc#{i}", warnings=[], seen_unknown=set())
        assert body is not None, problems
        bodies.append(body)
    store.apply_many(bodies)
    source = model_source(store, NS, store.get("Model", NS, "fraud"))
    assert source.secret_name == NAME and source.secret_error is None
    assert source.secret == VALUES  # decoded from base64 for `data`, as given for `stringData`
    load = json.loads(wire.Load(name="fraud", generation=1, source=source).model_dump_json())
    assert load["source"]["secret"] == VALUES
    # a model naming a missing secret says so, and gets no data
    store.delete("Secret", NS, NAME)
    missing = model_source(store, NS, store.get("Model", NS, "fraud"))
    assert missing.secret is None and missing.secret_error and NAME in missing.secret_error
