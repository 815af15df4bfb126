"""Overcommit, eviction, lazy reload (docs/overcommit.md), end to end with real MLServer.

One replica offers 250Mi with 300% overcommit (the Server's annotations), so the scheduler places six models of
100Mi there but only two fit its real memory at once: one pinned model and one other.  Every model answers
through the gateway (REST and gRPC), each within the gateway's bounded wait, while the control plane evicts the
least recently used one and reloads the one asked for; evictions, reloads and wakes show in the control plane's
metrics and in the models' status; the pinned model never leaves; a reload does not download the artifact again
(its source is deleted first).  The wake endpoint is attacked as a hostile client would.
"""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.client.gateway import GatewayClient
from berth.control.tokens import TokenRegistry
from berth.errors import InvalidManifest, NotFound
from tests.support.models import IRIS_INPUT, train_sklearn
from tests.support.platform import Platform, model_doc, server_doc

pytestmark = pytest.mark.e2e

NAMES = ["m0", "m1", "m2", "m3", "m4"]
WAKE_BOUND_S = 30.0  # the gateway's default --wake-timeout


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, Path]]:
    tmp = tmp_path_factory.mktemp("overcommit")
    iris = train_sklearn(tmp / "iris")
    own = tmp / "own-copy"  # m4's artifact, deleted once m4 is evicted: its reload must not download it
    shutil.copytree(iris, own)
    with Platform(tmp / "data") as p:
        server = server_doc("mlserver", capabilities=["sklearn"])
        server["metadata"]["annotations"] = {"berth.io/replica-memory": "250Mi", "berth.io/overcommit": "300"}
        pinned = model_doc("pinned", str(iris), memory="100Mi")
        pinned["metadata"]["annotations"] = {"berth.io/pinned": "true"}
        docs = [server, pinned] + [model_doc(n, str(own if n == "m4" else iris), memory="100Mi") for n in NAMES]
        p.client.apply(docs)
        p.wait_server("mlserver", ready_replicas=1, timeout=120)
        for name in ["pinned", *NAMES]:
            p.wait_model(name, timeout=120)
        yield p, own


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def control_metrics(p: Platform) -> str:
    return httpx.get(f"{p.control.url}/metrics", headers={"Authorization": f"Bearer {p.control.admin_token}"},
                     timeout=10).text


def row(p: Platform, name: str) -> dict[str, Any]:
    st = p.client.get("Model", "default", name)["status"]
    [only] = st["replicaStatus"].values()
    return {"model": st, **only}


def test_more_models_than_fit_all_answer_within_the_wait(platform: tuple[Platform, Path]) -> None:
    p, own = platform
    # placed: all six on the one replica; loaded: the pinned one and one more (2 × 100Mi of 250Mi)
    states = {n: row(p, n)["state"] for n in ["pinned", *NAMES]}
    assert states["pinned"] == "Loaded"
    assert sorted(states.values()).count("Loaded") == 2, states
    for n in NAMES:
        st = row(p, n)
        assert st["model"]["state"] == "ModelAvailable", st  # evicted but servable: Ready, as Seldon keeps it
        if st["state"] == "Evicted":
            assert st["eviction"]["memory"] == 100 << 20 and "the next request reloads it" in st["message"], st
            assert st["model"]["reason"] == "Evicted"
    before = control_metrics(p)
    grpc = GatewayClient(p.gateway_url, grpc_address=p.gateway_grpc, token=p.control.admin_token)
    slowest = 0.0
    seen_evicted: set[str] = set()
    for rnd in range(2):
        for i, name in enumerate(NAMES):
            if name == "m4" and rnd == 1:
                assert row(p, "m4")["state"] == "Evicted"
                shutil.rmtree(own)  # the reload must come from the replica's disk
            started = time.monotonic()
            answer = (grpc.infer_grpc if (i + rnd) % 2 else grpc.infer)(name, IRIS_INPUT)
            took = time.monotonic() - started
            slowest = max(slowest, took)
            assert answer.body["outputs"][0]["data"] == [0, 2], answer
            assert took < WAKE_BOUND_S, f"{name} answered after {took:.1f}s"
            assert row(p, "pinned")["state"] == "Loaded"  # never leaves
            for other in NAMES:
                if other != name and row(p, other)["state"] == "Evicted":
                    seen_evicted.add(other)
    assert seen_evicted == set(NAMES) - {"m4"} or seen_evicted >= {"m0", "m1", "m2", "m3"}, seen_evicted
    after = control_metrics(p)
    evictions = metric(after, "berth_model_evictions_total", namespace="default") - \
        metric(before, "berth_model_evictions_total", namespace="default")
    reloads = metric(after, "berth_model_reloads_total", namespace="default") - \
        metric(before, "berth_model_reloads_total", namespace="default")
    # round 1 loads m1..m4 for the first time (never loaded: no room at apply), evicting the one before; round 2
    # reloads all five, each evicting the one before it
    assert evictions >= 2 * len(NAMES) - 1 and reloads >= len(NAMES), (evictions, reloads)
    # the status says why: which model needed the room, how much memory
    evicted = [r for r in (row(p, n) for n in NAMES) if r["state"] == "Evicted"]
    assert evicted and all(r["eviction"]["neededBy"] in NAMES and r["eviction"]["neededMemory"] == 100 << 20
                           for r in evicted), evicted
    assert "pinned" not in {r["eviction"]["neededBy"] for r in evicted}
    pinned = p.client.get("Model", "default", "pinned")["status"]
    assert all("evict" not in h["message"] for h in pinned["history"]), pinned["history"]
    assert pinned["memory"]["declared"] == 100 << 20
    # the gateway counted what it held
    gw = httpx.get(f"{p.gateway_url}/metrics", headers={"Authorization": f"Bearer {p.control.admin_token}"},
                   timeout=10).text
    assert metric(gw, "berth_gateway_held_requests_total", namespace="default", outcome="served") >= 8
    assert metric(gw, "berth_gateway_wakeups_total", namespace="default", outcome="ok") >= 8
    print(f"slowest answer through a reload: {slowest:.2f}s; evictions {evictions:.0f}, reloads {reloads:.0f}")


def _evicted_model(p: Platform) -> str:
    """An evicted model, one that was loaded and then unloaded if there is one (so waking it is a reload; run
    alone, before the tests that load every model, the evicted ones may never have been loaded)."""
    evicted = [name for name in NAMES if row(p, name)["state"] == "Evicted"]
    assert evicted, "no model is evicted"
    return next((n for n in evicted if row(p, n)["eviction"]["unloaded"]), evicted[0])


def test_wake_endpoint_refuses_hostile_callers_and_coalesces_a_flood(platform: tuple[Platform, Path]) -> None:
    p, _ = platform
    name = _evicted_model(p)
    url = f"{p.control.url}/api/v1/namespaces/default/models/{name}/wake"
    user = p.client.create_token("tenant-user", grants={"default": "editor"})["token"]
    # the gateway of namespace team-b (as Kubernetes mode makes one from its pod's token): minted in the registry
    registry = TokenRegistry(p.control.opts.data_dir / "auth.db")
    try:
        other_gw = registry.create("gw-team-b", kind="gateway", grants={"team-b": "inference"})
    finally:
        registry.close()
    with httpx.Client(timeout=10) as http:
        assert http.post(url).status_code == 401  # anonymous
        assert http.post(url, headers={"Authorization": "Bearer not-a-token"}).status_code == 401
        r = http.post(url, headers={"Authorization": f"Bearer {user}"})  # a tenant's own user token
        assert r.status_code == 403 and r.json()["code"] == "Forbidden", r.text
        r = http.post(url, headers={"Authorization": f"Bearer {other_gw}"})  # another namespace's gateway
        assert r.status_code == 403 and "team-b" in r.json()["message"], r.text
        bad = f"{p.control.url}/api/v1/namespaces/default/models/Not_A_Name/wake"
        gw = {"Authorization": f"Bearer {p.control.admin_token}"}
        assert http.post(bad, headers=gw).status_code == 400
        r = http.post(f"{p.control.url}/api/v1/namespaces/default/models/nothing-here/wake", headers=gw)
        assert r.status_code == 404
        audit = p.client.audit()
        refused = [a for a in audit if a["verb"] == "wake" and a["outcome"] != "ok"]
        assert {a["principal"] for a in refused} >= {"tenant-user", "gw-team-b"}, refused
        assert row(p, name)["state"] == "Evicted"  # nothing refused woke it
        before = metric(control_metrics(p), "berth_model_wakes_total", namespace="default")
        reloads = metric(control_metrics(p), "berth_model_reloads_total", namespace="default")
        was_loaded = row(p, name)["eviction"]["unloaded"]  # a reload; else its first load (not counted as one)

        def wake(_: int) -> httpx.Response:  # one client for all (16 threads making SSL contexts at once hung)
            return http.post(url, headers=gw)

        flood_started = time.time()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(wake, range(64)))
    assert {a.status_code for a in answers} <= {202, 200}  # 200: it was loaded again when that one came
    woke = [a.json() for a in answers if a.status_code == 202]
    assert sum(not a["coalesced"] for a in woke) == 1, woke  # one wake, the rest joined it
    p.wait_model(name, available=1, timeout=WAKE_BOUND_S)
    after = control_metrics(p)
    assert metric(after, "berth_model_wakes_total", namespace="default") - before == 1
    assert metric(after, "berth_model_reloads_total", namespace="default") - reloads == (1 if was_loaded else 0)
    started = [a for a in p.client.audit() if a["verb"] == "wake" and a["outcome"] == "ok" and a["name"] == name
               and a["time"] >= flood_started]
    assert len(started) == 1, started  # the wake that started the reload; the 63 that joined it changed nothing


def test_bad_annotations_are_refused_at_apply_naming_the_field(platform: tuple[Platform, Path]) -> None:
    p, _ = platform
    server = server_doc("other", capabilities=["sklearn"])
    server["metadata"]["annotations"] = {"berth.io/overcommit": "lots"}
    pinned = model_doc("wrong-pin", "file:///nowhere")
    pinned["metadata"]["annotations"] = {"berth.io/pinned": "always"}
    with pytest.raises(InvalidManifest) as refused:
        p.client.apply([server, pinned])
    text = str(refused.value.details)
    assert "Server default/other: metadata.annotations[berth.io/overcommit]: expected a whole number of percent " \
           'from 0 to 1000 (e.g. "10"), got "lots"' in text, text
    assert "Model default/wrong-pin: metadata.annotations[berth.io/pinned]: expected \"true\" or \"false\"" in text
    with pytest.raises(NotFound):
        p.client.get("Server", "default", "other")  # nothing of a refused apply is written


def test_a_pipeline_step_on_an_evicted_model_is_held_until_it_reloads(platform: tuple[Platform, Path]) -> None:
    p, _ = platform
    name = _evicted_model(p)
    p.client.apply([{"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Pipeline",
                     "metadata": {"name": "through", "namespace": "default"},
                     "spec": {"steps": [{"name": name}], "output": {"steps": [name]}}}])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conditions = (p.client.get("Pipeline", "default", "through").get("status") or {}).get("conditions", [])
        if any(c["type"] == "PipelineReady" and c["status"] == "True" for c in conditions):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"pipeline through not ready in 60 s: {conditions}")
    assert row(p, name)["state"] == "Evicted"  # ready as a pipeline step while evicted
    started = time.monotonic()
    answer = p.gateway.infer("through.pipeline", IRIS_INPUT)
    assert answer.body["outputs"][0]["data"] == [0, 2], answer
    assert time.monotonic() - started < WAKE_BOUND_S
    assert row(p, name)["state"] == "Loaded"
