"""`berth infer` and `berth doctor` against a cluster (--kubeconfig/KUBECONFIG, no --server or --gateway): the
namespace's gateway Service reached through the API server's service proxy with the kubeconfig's credentials,
and the doctor's rows computed from the cluster's resources.

The refusals run against the emulated API server and, with BERTH_TEST_KUBECONFIG, a real one (the `cluster`
fixture of test_kube_store.py); the answer through a real gateway needs pods, so it runs with the harness
kubelet (tests/kube/kubelet.py) and the real `berth control --store kubernetes`, as test_kubelet_e2e.py does."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import yaml

from berth.kubeapi import Api, connect
from berth.store.kubernetes import KubernetesStore
from tests.kube.apiserver import ApiServer
from tests.kube.kubelet import Kubelet
from tests.kube.test_control_kube import ControlProcess, berth, example, failure
from tests.kube.test_kube_store import Cluster, cluster  # noqa: F401  (the fixture: emulated, and real when set)
from tests.kube.test_kubelet_e2e import cluster as pods  # noqa: F401  (the fixture with the harness kubelet)
from tests.kube.test_kubelet_e2e import ready, settle
from tests.support.models import IRIS_INPUT, train_sklearn


def _call(kubeconfig: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        api = Api(await connect(kubeconfig, None), 15.0)
        try:
            return await api.call(method, path, body)
        finally:
            await api.close()
    return asyncio.run(run())


def _request(tmp_path: Path) -> str:
    path = tmp_path / "req.json"
    path.write_text(json.dumps(IRIS_INPUT))
    return f"@{path}"


def _namespace(api: ApiServer, name: str) -> None:
    """A namespace as the emulated API server's list shows it (a real cluster has it already)."""
    labels = {"kubernetes.io/metadata.name": name}
    api.objects[("namespaces", "", name)] = {"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": name, "labels": labels}}


def test_a_namespace_without_gateway_or_ready_pod_is_one_line(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    kube = {"KUBECONFIG": cluster.kubeconfig}
    ns = cluster.namespace
    missing = berth("infer", "iris", "-n", ns, "-d", _request(tmp_path), env=kube)
    line = failure(missing)
    assert "\n" not in line.strip(), line
    assert f"namespace {ns} has no SeldonRuntime gateway" in line and "apply a SeldonRuntime" in line, line
    assert getattr(missing.exception, "code", "") == "NotFound"

    # a gateway Service no ready pod backs: the API server's 503, said as such
    _call(cluster.kubeconfig, "POST", f"/api/v1/namespaces/{ns}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "berth-gateway", "namespace": ns},
        "spec": {"selector": {"app.kubernetes.io/component": "gateway"},
                 "ports": [{"name": "http", "port": 9000, "targetPort": 9000}]}})
    idle = failure(berth("infer", "iris", "-n", ns, "-d", _request(tmp_path), env=kube))
    assert f"the gateway of namespace {ns} has no ready pod" in idle and "no endpoints available" in idle, idle

    # gRPC cannot go through the proxy: said, not attempted
    grpc = failure(berth("infer", "iris", "-n", ns, "-d", _request(tmp_path), "--inference-mode", "grpc", env=kube))
    assert "port-forward" in grpc and "--gateway-grpc" in grpc, grpc

    # a hostile or stale kubeconfig: the API server refuses it before anything reaches the gateway
    forged = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    for user in forged["users"]:
        user["user"] = {"token": "forged-token"}
    (tmp_path / "forged").write_text(yaml.safe_dump(forged))
    refused = berth("infer", "iris", "-n", ns, "-d", _request(tmp_path), env={"KUBECONFIG": str(tmp_path / "forged")})
    assert getattr(refused.exception, "code", "") == "Unauthenticated", failure(refused)
    assert "401" in failure(refused)

    # the doctor from outside the cluster: what it can read, and why it cannot do the rest
    if cluster.emulated is not None:
        _namespace(cluster.emulated, ns)
    result = berth("doctor", "-n", ns, "-o", "json", env=kube)
    rows = {r["check"]: r for r in json.loads(result.stdout)["checks"]}
    assert rows["cli → Kubernetes API"]["result"] == "pass", rows
    assert rows["cli → gateway"]["result"] == "fail" and "no ready pod" in rows["cli → gateway"]["detail"], rows
    assert rows["model storage"]["result"] == "skip" and "outside the cluster" in rows["model storage"]["detail"]
    assert "network policy" in rows, rows
    assert result.exit_code == 1, result.output


def test_infer_and_doctor_through_the_clusters_gateway(
        pods: tuple[ApiServer, KubernetesStore, ControlProcess, Kubelet], tmp_path: Path) -> None:  # noqa: F811
    api, store, control, kubelet = pods
    ns = "financial-ml"
    artifact = train_sklearn(tmp_path / "artifacts" / "iris")
    model: dict[str, Any] = copy.deepcopy(example("20-models.yaml")[0])
    model["spec"].update(storageUri=artifact.as_uri(), requirements=["sklearn"])
    model["spec"].pop("secretName")
    for doc in example("00-runtime.yaml") + example("10-server.yaml") + [model]:
        store.apply(doc)
    name = model["metadata"]["name"]
    _namespace(api, ns)
    _namespace(api, "berth-system")
    kube = {"KUBECONFIG": str(api.kubeconfig)}

    settle(kubelet, "the model's ModelReady", lambda: ready(store, name), control)
    settle(kubelet, "the gateway pod's Ready condition",
           lambda: (pod := kubelet.pod_of(ns, "berth-gateway-")) is not None and pod.ready, control)
    answered = settle(kubelet, "an answer through the API server's service proxy",
                      lambda: (r := berth("infer", name, "-n", ns, "-d", _request(tmp_path), "-o", "json",
                                          env=kube)).exit_code == 0 and r, control, timeout=60)
    body = json.loads(answered.stdout)
    assert body["outputs"][0]["shape"][0] == 2, body
    proxied = [p for m, p in api.requests if "/services/berth-gateway:http/proxy/v2/models/" in p]
    assert proxied and all("token" not in p.lower() for p in proxied), proxied

    shown = berth("infer", name, "-n", ns, "-d", _request(tmp_path), env=kube)  # as locally: who answered, then JSON
    assert shown.exit_code == 0 and "answered by" in shown.stderr and name in shown.stderr, shown.output
    assert '"outputs"' in shown.stdout, shown.output
    several = berth("infer", name, "-n", ns, "-d", _request(tmp_path), "-i", "3", env=kube)
    assert "requests: 3  ok: 3  errors: 0" in several.stdout, several.output
    nope = berth("infer", "no-such-model", "-n", ns, "-d", _request(tmp_path), env=kube)
    assert getattr(nope.exception, "code", "") == "NotFound", nope.output  # the gateway's own error, as locally
    assert "SeldonRuntime" not in failure(nope), failure(nope)

    result = berth("doctor", "-n", ns, "-o", "json", env=kube)
    checks = json.loads(result.stdout)["checks"]
    by = {(r["check"], r["target"].split(" ")[0]): r for r in checks}
    assert by[("control plane → agent", f"{ns}/mlserver/0")]["result"] == "pass", checks
    assert by[("agent → inference server", f"{ns}/mlserver/0")]["result"] == "pass", checks
    assert by[("cli → gateway", f"{ns}/berth-gateway")]["result"] == "pass", checks
    assert by[("model progress", f"{ns}/{name}")]["result"] == "pass", checks
    assert by[("requirements", f"{ns}/{name}")]["result"] == "pass", checks
    assert by[("model storage", ns)]["result"] == "skip", checks
    flows = [r for r in checks if r["check"] == "network policy"]
    assert flows and all(r["result"] == "pass" for r in flows), flows
    assert result.exit_code == 0, [r for r in checks if r["result"] == "fail"]
