"""The control plane's API and CLI against a real control plane (no agents): apply, status, errors."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from berth.client.http import BerthClient
from berth.errors import InvalidManifest, NotFound
from berth.resources.manifest import load_paths
from tests.support.servers import ControlPlane, auth_headers


def _wait_status(client: BerthClient, kind: str, ns: str, name: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.get(kind, ns, name)
        if doc.get("status", {}).get("conditions"):
            return doc
        time.sleep(0.05)
    raise AssertionError(f"{kind} {ns}/{name} got no status in {timeout}s")


def test_seeds_apply_and_say_why_no_replica(control: ControlPlane, cli, examples: Path) -> None:
    r = cli("--server", control.url, "apply", "-f", str(examples / "financial-ml"))
    assert r.code == 0, r.err
    assert "model.mlops.seldon.io/baseline-predictor created" in r.out
    assert "secret/ml-platform created" in r.out
    client = BerthClient(control.url)
    doc = _wait_status(client, "Model", "financial-ml", "baseline-predictor")
    st = doc["status"]
    assert st["state"] == "ScheduleFailed"
    assert st["message"].startswith("Failed to schedule model as no matching servers are available")
    assert "server mlserver has no connected replicas (0 of 1)" in st["message"]
    r = cli("--server", control.url, "get", "models", "-n", "financial-ml", "-o", "wide")
    assert r.code == 0
    assert "baseline-predictor" in r.out and "no connected replicas (0 of 1)" in r.out
    r = cli("--server", control.url, "describe", "model", "baseline-predictor", "-n", "financial-ml")
    assert r.code == 0 and "NoConnectedReplicas" in r.out
    # applying the same manifests again changes nothing
    r = cli("--server", control.url, "apply", "-f", str(examples / "financial-ml"))
    assert "baseline-predictor unchanged" in r.out


def test_secret_values_never_shown(control: ControlPlane, cli, examples: Path) -> None:
    cli("--server", control.url, "apply", "-f", str(examples / "financial-ml" / "05-secret.yaml"))
    r = cli("--server", control.url, "get", "secrets", "-n", "financial-ml", "-o", "yaml")
    assert r.code == 0
    assert "ml-platform" in r.out and "redacted" in r.out
    assert "example-secret-key" not in r.out and "example-access-key" not in r.out


def test_invalid_set_is_rejected_whole(control: ControlPlane, cli, tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text("""
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: good-one}
spec: {storageUri: "file:///tmp/x", requirements: [sklearn]}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: baseline-predictor}
spec: {storageUri: "s3://b/k", replicas: "three"}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: ../etc}
spec: {storageUri: "s3://b/k"}
""")
    r = cli("--server", control.url, "apply", "-f", str(bad))
    assert r.code != 0
    assert f'{bad}#2 Model/baseline-predictor: spec.replicas: expected integer, got "three"' in r.err
    assert "metadata.name" in r.err and "'../etc'" in r.err
    assert "Traceback" not in r.err
    # the API itself rejects the same set and changes nothing
    client = BerthClient(control.url)
    import yaml

    docs = list(yaml.safe_load_all(bad.read_text()))
    with pytest.raises(InvalidManifest) as exc:
        client.apply(docs)
    assert len(exc.value.problems) == 2
    assert client.list("Model", "default") == []
    raw = httpx.post(control.url + "/api/v1/apply", content=b"{not json", timeout=5, headers=auth_headers())
    assert raw.status_code == 400 and raw.json()["code"] == "InvalidInput"
    raw = httpx.post(control.url + "/api/v1/apply", json={"documents": [{"kind": "Nope"}]}, timeout=5,
                     headers=auth_headers())
    assert raw.status_code == 422 and "unknown kind" in raw.json()["message"]


def test_get_delete_not_found_and_exit_codes(control: ControlPlane, cli) -> None:
    r = cli("--server", control.url, "get", "model", "nope")
    assert r.code == 1 and r.err.startswith("error: ") and "nope" in r.err
    r = cli("--server", control.url, "delete", "model", "nope")
    assert r.code == 1
    with pytest.raises(NotFound):
        BerthClient(control.url).get("Model", "default", "nope")
    r = cli("--server", "http://127.0.0.1:1", "get", "models")
    assert r.code == 1 and "connection refused" in r.err and len(r.err.strip().splitlines()) == 1


def test_watch_streams_changes(control: ControlPlane) -> None:
    client = BerthClient(control.url)
    _, rev = client.list_at("Model", "default")
    doc = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
           "metadata": {"name": "w1", "namespace": "default"},
           "spec": {"storageUri": "file:///tmp/none", "requirements": ["sklearn"]}}
    client.apply([doc])
    events = client.watch(("Model",), "default", since=rev)
    first = next(events)
    assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "w1"


def test_wait_times_out_with_reason(control: ControlPlane, cli) -> None:
    doc = """apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: lonely}
spec: {storageUri: "file:///tmp/none", requirements: [sklearn]}
"""
    r = cli("--server", control.url, "apply", "-f", "-", stdin=doc)
    assert r.code == 0, r.err
    r = cli("--server", control.url, "wait", "model/lonely", "--for=condition=Ready", "--timeout=1s")
    assert r.code == 1
    assert "timed out" in r.err and "no matching servers" in r.err


def test_sqlite_state_survives_restart(tmp_path: Path, examples: Path) -> None:
    db = tmp_path / "berth.db"
    with ControlPlane(tmp_path, store=str(db)) as cp:
        BerthClient(cp.url).apply([d.body for d in load_paths([str(examples / "financial-ml")]).documents])
    with ControlPlane(tmp_path, store=str(db)) as cp:
        names = [d["metadata"]["name"] for d in BerthClient(cp.url).list("Model", "financial-ml")]
    assert names == ["baseline-predictor", "enhanced-predictor"]


def test_pipeline_status_names_its_missing_step_models(control: ControlPlane, cli) -> None:
    doc = """apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata: {name: chain}
spec:
  steps: [{name: tfidf}, {name: classifier, inputs: [tfidf]}]
  output: {steps: [classifier]}
"""
    assert cli("--server", control.url, "apply", "-f", "-", stdin=doc).code == 0
    st = _wait_status(BerthClient(control.url), "Pipeline", "default", "chain")["status"]
    assert "step tfidf: model tfidf not found in namespace default" in st["message"]
    assert "step classifier: model classifier not found" in st["message"]
    ready = {c["type"]: c["status"] for c in st["conditions"]}
    assert ready.get("Ready") == "False" and ready.get("PipelineReady") == "False"
    r = cli("--server", control.url, "get", "pipelines")
    assert "chain" in r.out and "tfidf, classifier" in r.out


def test_metrics(control: ControlPlane, examples: Path) -> None:
    client = BerthClient(control.url)
    client.apply([d.body for d in load_paths([str(examples / "financial-ml")]).documents])
    _wait_status(client, "Model", "financial-ml", "baseline-predictor")
    text = httpx.get(control.url + "/metrics", timeout=5, headers=auth_headers()).text
    assert 'berth_models{namespace="financial-ml",state="ScheduleFailed"} 2.0' in text
    assert 'berth_schedule_failures_total{namespace="financial-ml",reason="NoConnectedReplicas"}' in text
    assert "berth_schedule_attempts_total" in text


def test_experiment_status_names_every_problem(control: ControlPlane, cli, examples: Path) -> None:
    client = BerthClient(control.url)
    client.apply([d.body for d in load_paths([str(examples / "financial-ml")]).documents])
    _wait_status(client, "Experiment", "financial-ml", "financial-predictor-ab-test")  # it holds its default
    second = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Experiment",
              "metadata": {"name": "copycat", "namespace": "financial-ml"},
              "spec": {"default": "baseline-predictor",
                       "candidates": [{"name": "baseline-predictor", "weight": 50},
                                      {"name": "ghost", "weight": 25}, {"name": "other-ns/x", "weight": 25}]}}
    client.apply([second])
    deadline = time.monotonic() + 10
    msg = ""
    while time.monotonic() < deadline and "ghost" not in msg:
        msg = (client.get("Experiment", "financial-ml", "copycat").get("status") or {}).get("message", "")
        time.sleep(0.05)
    assert "already the default of experiment financial-predictor-ab-test" in msg
    assert "candidate model ghost not found in namespace financial-ml" in msg
    assert "candidate other-ns/x is in another namespace" in msg
    first = client.get("Experiment", "financial-ml", "financial-predictor-ab-test")["status"]["message"]
    assert "baseline-predictor is not ready" in first and "already the default" not in first
    r = cli("--server", control.url, "describe", "experiment", "copycat", "-n", "financial-ml")
    assert r.code == 0 and "ghost (weight 25)" in r.out and "ExperimentReady" in r.out
    r = cli("--server", control.url, "describe", "server", "mlserver", "-n", "financial-ml")
    assert r.code == 0 and "no agent connected yet" in r.out
    # delete -f removes what the manifests name, and nothing else
    r = cli("--server", control.url, "delete", "-f", str(examples / "financial-ml"))
    assert r.code == 0, r.err
    assert [d["metadata"]["name"] for d in client.list("Experiment", "financial-ml")] == ["copycat"]
    assert client.list("Model", "financial-ml") == []


def test_watch_over_websocket_and_get_w(control: ControlPlane, tmp_path: Path) -> None:
    import asyncio
    import json as _json
    import subprocess
    import sys

    import aiohttp

    doc = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
           "metadata": {"name": "ws1", "namespace": "default"},
           "spec": {"storageUri": "file:///tmp/none", "requirements": ["sklearn"]}}
    client = BerthClient(control.url)
    watcher = subprocess.Popen([sys.executable, "-m", "berth.main", "--server", control.url, "get", "models", "-w"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    async def ws_first_events() -> list[dict]:
        async with aiohttp.ClientSession(headers=auth_headers()) as s, \
                s.ws_connect(control.url + "/api/v1/watch?kinds=Model") as ws:
            client.apply([doc])
            seen: list[dict] = []
            while not any(e["type"] == "ADDED" and e["object"]["metadata"]["name"] == "ws1" for e in seen):
                msg = await asyncio.wait_for(ws.receive(), 10)
                seen.append(_json.loads(msg.data))
            return seen

    import threading

    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watcher.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        started = time.monotonic()
        events = asyncio.run(ws_first_events())
        assert time.monotonic() - started < 5  # closing the watch is answered at once, not after a keep-alive
        assert events[-1]["object"]["spec"]["storageUri"] == "file:///tmp/none"
        _wait_status(client, "Model", "default", "ws1")
        deadline = time.monotonic() + 15
        while not any("ws1" in line and "False" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        watcher.terminate()
        watcher.wait(10)
    out = "".join(lines)
    assert "ws1" in out and "False" in out  # the row printed as the model changed


def test_every_seldon_resource_gets_a_status(control: ControlPlane, examples: Path) -> None:
    client = BerthClient(control.url)
    client.apply([d.body for d in load_paths([str(examples / "financial-ml")]).documents])
    runtime = _wait_status(client, "SeldonRuntime", "financial-ml", "financial-ml-runtime")["status"]
    assert "namespace financial-ml is a tenant" in runtime["message"] and "servers here: mlserver" in runtime["message"]
    for kind, name in (("Model", "baseline-predictor"), ("Server", "mlserver"),
                       ("Experiment", "financial-predictor-ab-test")):
        st = _wait_status(client, kind, "financial-ml", name)["status"]
        assert st["observedGeneration"] == 1 and st["conditions"]


def test_apply_prints_each_warning_once(control: ControlPlane, cli) -> None:
    manifest = ("apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: once, namespace: default}\n"
                "spec: {storageUri: 's3://b/k', colour: blue}\n")
    r = cli("--server", control.url, "apply", "-f", "-", stdin=manifest)
    assert r.code == 0, r.err
    lines = [line for line in r.err.splitlines() if "spec.colour" in line]
    assert len(lines) == 1 and "unknown field, kept and ignored" in lines[0], r.err
