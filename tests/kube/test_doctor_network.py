"""`berth doctor --kube`: the namespace's NetworkPolicies and namespace labels read from the (emulated) API
server, every flow Berth needs evaluated, a blocked one explained in its row."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from berth.kube.policies import control_plane_policies, tenant_policies
from berth.kube.workloads import Install
from berth.main import build
from tests.kube.apiserver import ApiServer

NS = "financial-ml"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    with ApiServer(tmp_path) as server:
        for name in (NS, "berth-system", "kube-system"):
            server.objects[("namespaces", "", name)] = {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}}
        server.objects[("servers", NS, "mlserver")] = {
            "apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
            "metadata": {"name": "mlserver", "namespace": NS}, "spec": {"serverConfig": "mlserver"}}
        yield server


def put_policy(api: ApiServer, doc: dict[str, Any]) -> None:
    api.objects[("networkpolicies", doc["metadata"]["namespace"], doc["metadata"]["name"])] = doc


def doctor(api: ApiServer) -> tuple[int, list[dict[str, Any]]]:
    result = CliRunner().invoke(build(), ["--server", "http://127.0.0.1:9", "doctor", "-n", NS, "--kube",
                                          "--kubeconfig", str(api.kubeconfig), "-o", "json"])
    rows = json.loads(result.stdout)["checks"]
    return result.exit_code, [r for r in rows if r["check"] == "network policy"]


def test_a_namespace_selector_on_a_missing_label_is_explained(api: ApiServer) -> None:
    put_policy(api, {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "from-ml", "namespace": NS},
                     "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                              "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"name": NS}}}]}]}})
    code, rows = doctor(api)
    assert code != 0 and len(rows) == 6
    failed = {r["target"]: r["detail"] for r in rows if r["result"] == "fail"}
    assert set(failed) == {"gateway → mlserver replicas (REST) (8080/TCP)",
                           "gateway → mlserver replicas (gRPC) (8081/TCP)",
                           f"client pods of {NS} → gateway (REST) (9000/TCP)",
                           f"client pods of {NS} → gateway (gRPC) (9001/TCP)"}
    line = failed["gateway → mlserver replicas (REST) (8080/TCP)"]
    assert "financial-ml/from-ml ingress rule 1" in line and "`podSelector: {}`" in line
    passed = [r for r in rows if r["result"] == "pass"]
    assert {r["target"] for r in passed} == {"gateway → control plane (9004/TCP)",
                                             "agent of mlserver → control plane (9004/TCP)"}


def test_berths_generated_policies_pass(api: ApiServer) -> None:
    runtime = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "SeldonRuntime",
               "metadata": {"name": "rt", "namespace": NS, "uid": str(uuid.uuid4())}}
    for doc in tenant_policies(runtime, Install()) + control_plane_policies(Install()):
        put_policy(api, doc)
    _, rows = doctor(api)
    assert len(rows) == 6 and all(r["result"] == "pass" for r in rows), rows
    assert all("admitted by" in r["detail"] for r in rows)


def test_an_unknown_namespace_or_cluster_says_so(api: ApiServer, tmp_path: Path) -> None:
    result = CliRunner().invoke(build(), ["--server", "http://127.0.0.1:9", "doctor", "-n", "nope", "--kube",
                                          "--kubeconfig", str(api.kubeconfig), "-o", "json"])
    rows = [r for r in json.loads(result.stdout)["checks"] if r["check"] == "network policy"]
    assert rows[0]["result"] == "fail" and "namespace nope does not exist" in rows[0]["detail"]
    result = CliRunner().invoke(build(), ["--server", "http://127.0.0.1:9", "doctor", "-n", NS, "--kube",
                                          "--kubeconfig", str(tmp_path / "missing"), "-o", "json"])
    rows = [r for r in json.loads(result.stdout)["checks"] if r["check"] == "network policy"]
    assert "cannot configure the Kubernetes client" in rows[0]["detail"]
