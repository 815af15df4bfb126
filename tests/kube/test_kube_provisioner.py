"""The Kubernetes provisioner against the emulated API server: Server → StatefulSet + Service, SeldonRuntime →
gateway and NetworkPolicies; replicas converge, unchanged intent writes nothing, deletion cleans up."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from berth.control.kube_provisioner import KubeProvisioner
from berth.kube.flows import Ports
from berth.kube.workloads import Install
from berth.kubeapi import Api, connect
from berth.store.kubernetes import KubernetesStore
from tests.kube.apiserver import ApiServer
from tests.support.seeds import EXAMPLES

NS = "financial-ml"


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / "financial-ml" / name).read_text()))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ApiServer, KubernetesStore]]:
    with ApiServer(tmp_path) as api:
        store = KubernetesStore(kubeconfig=str(api.kubeconfig))
        try:
            store.apply(example("00-runtime.yaml"))
            store.apply(example("10-server.yaml"))
            yield api, store
        finally:
            store.close()


def objects(api: ApiServer, plural: str) -> dict[str, dict[str, Any]]:
    snapshot: dict[Any, dict[str, Any]] = api._sync(lambda: copy.deepcopy(api.objects))  # on its own thread
    return {name: obj for (p, ns, name), obj in snapshot.items() if p == plural and ns == NS}


def run(api: ApiServer, store: KubernetesStore, body: Any, install: Install = Install()) -> Any:
    async def main() -> Any:
        client = Api(await connect(str(api.kubeconfig), None), 10)
        try:
            return await body(KubeProvisioner(store, client, install, resync_s=30))
        finally:
            await client.close()
    return asyncio.run(main())


def test_objects_are_made_converge_and_are_cleaned_up(cluster: tuple[ApiServer, KubernetesStore]) -> None:
    api, store = cluster

    async def first(p: KubeProvisioner) -> Any:
        return await p.reconcile(NS), await p.reconcile(NS)

    made, again = run(api, store, first)
    assert sorted(made.created) == sorted([
        "NetworkPolicy financial-ml/berth-default-deny", "NetworkPolicy financial-ml/berth-server",
        "NetworkPolicy financial-ml/berth-gateway", "ServiceAccount financial-ml/berth-gateway",
        "Deployment financial-ml/berth-gateway", "Service financial-ml/berth-gateway",
        "ServiceAccount financial-ml/berth-server", "StatefulSet financial-ml/mlserver",
        "Service financial-ml/mlserver"]) and made.problems == []
    assert again.writes == 0 and again.unchanged == 9  # nothing Berth wants changed: nothing written
    sts = objects(api, "statefulsets")["mlserver"]
    server = store.get("Server", NS, "mlserver")
    assert sts["spec"]["replicas"] == 1 and sts["metadata"]["ownerReferences"][0]["uid"] == server["metadata"]["uid"]

    scaled = copy.deepcopy(example("10-server.yaml"))
    scaled["spec"]["replicas"] = 3
    store.apply(scaled)
    out = run(api, store, lambda p: p.reconcile(NS))
    assert out.updated == ["StatefulSet financial-ml/mlserver"] and out.created == [] and out.deleted == []
    assert objects(api, "statefulsets")["mlserver"]["spec"]["replicas"] == 3

    # a Service whose spec changes keeps the clusterIP the API server gave it (immutable)
    ip = objects(api, "services")["berth-gateway"]["spec"]["clusterIP"]
    out = run(api, store, lambda p: p.reconcile(NS), Install(ports=Ports(gateway_http=9100)))
    assert "Service financial-ml/berth-gateway" in out.updated and out.problems == []
    assert objects(api, "services")["berth-gateway"]["spec"]["clusterIP"] == ip

    store.delete("Server", NS, "mlserver")
    out = run(api, store, lambda p: p.reconcile(NS), Install(ports=Ports(gateway_http=9100)))
    assert sorted(out.deleted) == ["Service financial-ml/mlserver", "ServiceAccount financial-ml/berth-server",
                                   "StatefulSet financial-ml/mlserver"]
    assert "mlserver" not in objects(api, "statefulsets")


def test_objects_berth_does_not_manage_are_left_alone(cluster: tuple[ApiServer, KubernetesStore]) -> None:
    api, store = cluster
    theirs = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "berth-gateway", "namespace": NS},
              "spec": {"ports": [{"port": 80}]}}

    async def body(p: KubeProvisioner) -> Any:
        await p.api.call("POST", f"/api/v1/namespaces/{NS}/services", theirs)
        return await p.reconcile(NS)

    out = run(api, store, body)
    assert out.problems == ["Service financial-ml/berth-gateway exists and is not managed by Berth; "
                            "delete or rename it"]
    assert objects(api, "services")["berth-gateway"]["spec"]["ports"] == [{"port": 80}]
    assert "StatefulSet financial-ml/mlserver" in out.created  # the rest is made all the same


def test_the_loop_follows_store_events(cluster: tuple[ApiServer, KubernetesStore]) -> None:
    api, store = cluster

    async def body(p: KubeProvisioner) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(p.run(stop))
        try:
            for _ in range(100):
                if "mlserver" in objects(api, "statefulsets"):
                    break
                await asyncio.sleep(0.1)
            assert "mlserver" in objects(api, "statefulsets")
            second = copy.deepcopy(example("10-server.yaml"))
            second["metadata"]["name"] = "mlserver-b"
            store.apply(second)  # the store's watch tells the provisioner
            for _ in range(100):
                if "mlserver-b" in objects(api, "statefulsets"):
                    break
                await asyncio.sleep(0.1)
            assert "mlserver-b" in objects(api, "statefulsets")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    run(api, store, body)
