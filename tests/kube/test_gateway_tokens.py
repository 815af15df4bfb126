"""A namespace's gateway reads the routing table with its pod's projected token (TokenReview, audience
``berth``), and sees only its own namespace: the real `berth control --store kubernetes` process against the
emulated API server, attacked as a hostile client would (another namespace's gateway token, an agent's, a
user's, one for another audience, a Secret-style token, a pod that is not the gateway's) — each refused and
audited."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.gateway.routing.watch import TableWatcher
from berth.kube.flows import GATEWAY, REPLICA, pod_labels
from berth.resources.identity import hash_token, new_token
from berth.store.kubernetes import KubernetesStore
from berth.wire.routes import ROUTES_PATH, ROUTES_WATCH_PATH, WAKE_PATH
from berth.wire.usage import USAGE_PATH
from tests.kube.apiserver import ApiServer
from tests.kube.test_control_kube import ControlProcess
from tests.support.servers import wait_http

FIN, RETAIL = "financial-ml", "retail"
GUARDED = {"berth.io/inference-auth": "required"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ApiServer, ControlProcess, str]]:
    admin = new_token()
    (tmp_path / "admin-token").write_text(admin + "\n")
    (tmp_path / "admin-token").chmod(0o600)
    with ApiServer(tmp_path) as api:
        store = KubernetesStore(kubeconfig=str(api.kubeconfig))
        for ns in (FIN, RETAIL):
            store.apply({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "SeldonRuntime", "metadata": {
                "name": f"{ns}-runtime", "namespace": ns, "annotations": GUARDED}, "spec": {"seldonConfig": "default"}})
            store.apply({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": {
                "name": f"{ns}-secret-model", "namespace": ns}, "spec": {"storageUri": "gs://b/m",
                                                                          "requirements": ["sklearn"]}})
        store.close()
        control = ControlProcess(api, tmp_path, ("--admin-token-file", str(tmp_path / "admin-token")))
        try:
            assert wait_http(control.url + "/healthz", 30), control.output()
            yield api, control, admin
        finally:
            control.stop()
    assert "Traceback" not in control.output(), control.output()


def gateway_pod(api: ApiServer, ns: str, name: str = "berth-gateway-5d8f7-x2x9q", *, owner: str | None = "ReplicaSet",
                component: str = GATEWAY) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": ns, "uid": str(uuid.uuid4()), "labels": pod_labels(component)},
        "spec": {"containers": []}}
    if owner is not None:
        doc["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner, "name": "berth-gateway-5d8f7",
                                               "uid": str(uuid.uuid4()), "controller": True}]
    api._sync(lambda: api.objects.__setitem__(("pods", ns, name), doc))
    return doc


def table(control: ControlProcess, token: str, query: str = "") -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:  # the table opens once the control plane's first reconcile pass is done
        got = httpx.get(control.url + ROUTES_PATH + query, headers={"Authorization": f"Bearer {token}"}, timeout=15)
        if got.status_code != 503 or "starting" not in got.text or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def test_a_namespace_gateway_reads_only_its_namespace(cluster: tuple[ApiServer, ControlProcess, str]) -> None:
    api, control, admin = cluster
    headers = {"Authorization": f"Bearer {admin}"}
    tokens = {}
    for ns in (FIN, RETAIL):  # a caller of each namespace's models: its hash goes to that namespace's gateway only
        made = httpx.post(control.url + "/api/v1/tokens", headers=headers, timeout=15,
                          json={"name": f"caller-{ns}", "namespace": ns, "role": "inference"})
        assert made.status_code == 201, made.text
        tokens[ns] = made.json()["token"]
    whole = table(control, admin)
    assert whole.status_code == 200, whole.text
    names = {m["name"] for m in whole.json()["models"]}
    assert names == {f"{FIN}-secret-model", f"{RETAIL}-secret-model"}, names

    fin = api.issue_token(FIN, "berth-gateway", ["berth"], gateway_pod(api, FIN))
    got = table(control, fin)
    assert got.status_code == 200, got.text
    seen = got.json()
    assert [(m["namespace"], m["name"]) for m in seen["models"]] == [(FIN, f"{FIN}-secret-model")]
    assert [a["namespace"] for a in seen["auth"]["namespaces"]] == [FIN]
    assert seen["auth"]["namespaces"][0]["tokens"] == [hash_token(tokens[FIN])]
    assert RETAIL not in got.text and hash_token(tokens[RETAIL]) not in got.text  # no name, no hash of the other
    assert table(control, fin, f"?namespace={FIN}").json()["models"] == seen["models"]

    # the watch: the same scoped table, then nothing of the other namespace's changes
    with httpx.stream("GET", control.url + ROUTES_WATCH_PATH, headers={"Authorization": f"Bearer {fin}"},
                      timeout=15) as stream:
        first = json.loads(next(line for line in stream.iter_lines() if line.strip()))
    assert first["models"] == seen["models"] and RETAIL not in json.dumps(first)

    retail = api.issue_token(RETAIL, "berth-gateway", ["berth"], gateway_pod(api, RETAIL))
    assert {m["namespace"] for m in table(control, retail).json()["models"]} == {RETAIL}


def test_every_other_token_is_refused_and_audited(cluster: tuple[ApiServer, ControlProcess, str]) -> None:
    api, control, admin = cluster
    headers = {"Authorization": f"Bearer {admin}"}
    assert table(control, admin).status_code == 200
    fin_gateway = api.issue_token(FIN, "berth-gateway", ["berth"], gateway_pod(api, FIN))
    replica = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "mlserver-0", "namespace": FIN, "uid": str(uuid.uuid4()), "labels": pod_labels(REPLICA, "mlserver"),
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "mlserver",
                             "uid": str(uuid.uuid4()), "controller": True}]}, "spec": {"containers": []}}
    api._sync(lambda: api.objects.__setitem__(("pods", FIN, "mlserver-0"), replica))
    made = {}
    for name, body in (("a-user", {"namespace": FIN, "role": "editor"}),
                       ("an-agent", {"kind": "agent", "agent": f"{FIN}/mlserver/0"})):
        answer = httpx.post(control.url + "/api/v1/tokens", headers=headers, json={"name": name, **body}, timeout=15)
        assert answer.status_code == 201, answer.text
        made[name] = answer.json()["token"]

    unauthenticated = {
        "another audience": (api.issue_token(FIN, "berth-gateway", ["https://kubernetes.default.svc"],
                                             gateway_pod(api, FIN, "berth-gateway-5d8f7-aaaaa")),
                             "did not authenticate the token"),
        "the agent's pod token": (api.issue_token(FIN, "berth-server", ["berth"], replica),
                                  "not to a namespace's ServiceAccount berth-gateway"),
        "a tenant's account": (api.issue_token(FIN, "default", ["berth"], gateway_pod(api, FIN, "berth-gateway-x-1")),
                               "not to a namespace's ServiceAccount berth-gateway"),
        "a Secret's token": (api.issue_token(FIN, "berth-gateway", ["berth"]), "not bound to a pod"),
        "a bare pod": (api.issue_token(FIN, "berth-gateway", ["berth"], gateway_pod(api, FIN, "mine", owner=None)),
                       "not a pod of the berth-gateway Deployment"),
        "a pod posing as a replica": (api.issue_token(FIN, "berth-gateway", ["berth"],
                                                      gateway_pod(api, FIN, "berth-gateway-y-2", component=REPLICA)),
                                      "not a pod of the berth-gateway Deployment"),
        "garbage": ("x" * 40, "did not authenticate the token"),
    }
    for what, (token, said) in unauthenticated.items():
        got = table(control, token)
        assert got.status_code == 401 and said in got.json()["message"], (what, got.text)
        assert "models" not in got.text
    forbidden = {"a user token": made["a-user"], "an agent token": made["an-agent"]}
    for what, token in forbidden.items():
        got = table(control, token)
        assert got.status_code == 403 and "not a gateway token" in got.json()["message"], (what, got.text)
    other = table(control, fin_gateway, f"?namespace={RETAIL}")  # another namespace's table with its own token
    assert other.status_code == 403 and "reads only its routes" in other.json()["message"], other.text
    assert "models" not in other.text

    audit = httpx.get(control.url + "/api/v1/audit?limit=1000", headers=headers, timeout=15).json()["items"]
    refused = [r for r in audit if r["kind"] == "RoutingTable" and r["outcome"] in ("unauthenticated", "forbidden")]
    reasons = " | ".join(r["reason"] for r in refused)
    for _, said in unauthenticated.values():
        assert said in reasons, reasons
    assert sum(r["outcome"] == "unauthenticated" for r in refused) >= len(unauthenticated)
    assert {r["principal"] for r in refused if r["outcome"] == "forbidden"} >= {
        "a-user", "an-agent", f"system:serviceaccount:{FIN}:berth-gateway"}
    assert any(r["namespace"] == RETAIL and r["outcome"] == "forbidden" for r in refused)
    assert all(token not in json.dumps(audit) for token, _ in unauthenticated.values())  # never a token


def test_a_gateway_watch_ends_when_its_token_expires(cluster: tuple[ApiServer, ControlProcess, str]) -> None:
    api, control, admin = cluster
    assert table(control, admin).status_code == 200
    token = api.issue_token(FIN, "berth-gateway", ["berth"], gateway_pod(api, FIN), expires_in=3)
    lines = []
    started = time.monotonic()
    with httpx.stream("GET", control.url + ROUTES_WATCH_PATH, headers={"Authorization": f"Bearer {token}"},
                      timeout=20) as stream:
        lines = [json.loads(line) for line in stream.iter_lines() if line.strip()]
    assert time.monotonic() - started < 15
    assert lines[0]["models"][0]["namespace"] == FIN
    assert lines[-1]["type"] == "ERROR" and lines[-1]["object"]["message"] == "token expired", lines[-1]


def test_a_gateway_picks_up_its_rotated_token(cluster: tuple[ApiServer, ControlProcess, str], tmp_path: Path) -> None:
    """The kubelet rewrites the projected token file; the watcher reads it at each connection, so after the
    old token expires (the control plane ends the watch) it carries on with the new one, and meanwhile keeps
    serving the table it had (the stream's ERROR line is not an empty table)."""
    api, control, admin = cluster
    assert table(control, admin).status_code == 200
    pod = gateway_pod(api, FIN)
    token_file = tmp_path / "token"
    token_file.write_text(api.issue_token(FIN, "berth-gateway", ["berth"], pod, expires_in=2) + "\n")
    applied: list[int] = []

    class Counting(TableWatcher):
        def _apply(self, line: bytes) -> None:
            super()._apply(line)
            applied.append(self.holder.revision)

    async def main() -> None:
        stop = asyncio.Event()
        watcher = Counting(control.url, token_file=token_file, backoff_max=0.5)
        task = asyncio.create_task(watcher.run(stop))
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not applied:
                await asyncio.sleep(0.05)
            assert applied, watcher.holder.problem
            token_file.write_text(api.issue_token(FIN, "berth-gateway", ["berth"], pod) + "\n")  # rotated
            problems = set()
            while time.monotonic() < deadline and len(applied) < 2:
                if watcher.holder.problem:
                    problems.add(watcher.holder.problem)
                assert watcher.holder.ready and watcher.holder.revision == applied[0]  # the table is kept
                await asyncio.sleep(0.02)
            assert len(applied) >= 2, (applied, problems)
            assert any("token expired" in p for p in problems), problems
            assert watcher.connected
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_a_namespace_gateway_reports_and_wakes_only_in_its_namespace(
        cluster: tuple[ApiServer, ControlProcess, str]) -> None:
    """The usage and wake endpoints take a gateway pod's reviewed token narrowed to its namespace; a report or a
    wake naming another namespace is 403, and every refusal there is audited under UsageReport / Model (not
    RoutingTable), attacked with another namespace's names, a token for another audience, an agent's and a
    user's token."""
    api, control, admin = cluster
    headers = {"Authorization": f"Bearer {admin}"}
    assert table(control, admin).status_code == 200  # the control plane is past its first pass
    fin_gateway = api.issue_token(FIN, "berth-gateway", ["berth"], gateway_pod(api, FIN))
    made = {}
    for name, body in (("a-user", {"namespace": FIN, "role": "admin"}),
                       ("an-agent", {"kind": "agent", "agent": f"{FIN}/mlserver/0"})):
        answer = httpx.post(control.url + "/api/v1/tokens", headers=headers, json={"name": name, **body}, timeout=15)
        assert answer.status_code == 201, answer.text
        made[name] = answer.json()["token"]
    wrong_audience = api.issue_token(FIN, "berth-gateway", ["https://kubernetes.default.svc"],
                                     gateway_pod(api, FIN, "berth-gateway-5d8f7-bbbbb"))

    def report(token: str, ns: str) -> httpx.Response:
        body = {"gateway": "gw-pod", "window_s": 2.0, "models": [{"namespace": ns, "name": f"{ns}-secret-model",
                                                                   "requests": 3, "idle_s": 0.1}]}
        return httpx.post(control.url + USAGE_PATH, json=body, headers={"Authorization": f"Bearer {token}"},
                          timeout=15)

    def wake(token: str, ns: str) -> httpx.Response:
        return httpx.post(control.url + WAKE_PATH.format(ns=ns, name=f"{ns}-secret-model"),
                          headers={"Authorization": f"Bearer {token}"}, timeout=15)

    own = report(fin_gateway, FIN)
    assert own.status_code == 200 and own.json() == {"accepted": 1}, own.text
    woken = wake(fin_gateway, FIN)  # its own model, loaded or never placed: nothing to wake, but allowed
    assert woken.status_code == 200 and woken.json()["waking"] is False, woken.text
    foreign = report(fin_gateway, RETAIL)
    assert foreign.status_code == 403 and RETAIL in foreign.json()["message"], foreign.text
    foreign_wake = wake(fin_gateway, RETAIL)
    assert foreign_wake.status_code == 403 and "may not wake models of namespace" in foreign_wake.text
    assert f"{RETAIL}-secret-model" not in foreign_wake.text  # nothing about what exists there
    for token in (made["a-user"], made["an-agent"]):
        for answer in (report(token, FIN), wake(token, FIN)):
            assert answer.status_code == 403 and "not a gateway token" in answer.json()["message"], answer.text
    for answer in (report(wrong_audience, FIN), wake(wrong_audience, FIN), report("x" * 40, FIN)):
        assert answer.status_code == 401, answer.text

    audit = httpx.get(control.url + "/api/v1/audit?limit=1000", headers=headers, timeout=15).json()["items"]
    refused = [(r["kind"], r["verb"], r["principal"], r["namespace"], r["outcome"]) for r in audit
               if r["outcome"] in ("unauthenticated", "forbidden")]
    gateway_sa = f"system:serviceaccount:{FIN}:berth-gateway"
    for expected in (("UsageReport", "report", gateway_sa, RETAIL, "forbidden"),
                     ("Model", "wake", gateway_sa, RETAIL, "forbidden"),
                     ("UsageReport", "report", "a-user", "", "forbidden"),
                     ("UsageReport", "report", "an-agent", "", "forbidden"),
                     ("Model", "wake", "a-user", FIN, "forbidden"),
                     ("Model", "wake", "an-agent", FIN, "forbidden"),
                     ("UsageReport", "report", "invalid-token", "", "unauthenticated"),
                     ("Model", "wake", "invalid-token", FIN, "unauthenticated")):
        assert expected in refused, (expected, refused)
    assert not [r for r in refused if r[0] == "RoutingTable" and r[1] in ("report", "wake")], refused
    assert wrong_audience not in json.dumps(audit) and fin_gateway not in json.dumps(audit)
