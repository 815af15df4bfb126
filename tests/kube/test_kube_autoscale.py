"""Server autoscaling on Kubernetes: the StatefulSet runs the replicas autoscaling decided, not the Server's
spec, which stays as applied (emulated API server; docs/autoscaling.md)."""

from __future__ import annotations

import copy
from typing import Any

from berth.control import autoscale
from berth.control.autoscale_loop import Autoscaler
from berth.control.kube_provisioner import KubeProvisioner
from berth.control.usage import UsageBook
from berth.scheduler.snapshot import INSUFFICIENT_MEMORY, ModelPlan, Plan, Rejection
from berth.store.kubernetes import KubernetesStore
from tests.kube.apiserver import ApiServer
from tests.kube.test_kube_provisioner import NS, cluster, example, objects, run

__all__ = ["cluster"]  # the fixture, shared


def test_the_statefulset_follows_the_decided_replicas(cluster: tuple[ApiServer, KubernetesStore]) -> None:
    api, store = cluster
    server = copy.deepcopy(example("10-server.yaml"))
    server["spec"].pop("replicas", None)
    server["spec"].update(minReplicas=1, maxReplicas=3)
    server["metadata"]["annotations"] = {autoscale.UP_AFTER: "0"}
    store.apply(server)
    now = [0.0]
    marked: list[str] = []
    scaler = Autoscaler(store, UsageBook(lambda: now[0]), lambda ns: None, clock=lambda: now[0])
    scaler.on_server_change = marked.append
    waiting = ModelPlan(name="big", desired=1, replicas=(), state="ScheduleFailed", message="",
                        reasons=(Rejection(INSUFFICIENT_MEMORY, "no room", server="mlserver"),))
    scaler.plans = {NS: Plan(namespace=NS, models={"big": waiting})}
    scaler.tick([], store.list("Server", NS))
    assert scaler.server_replicas(NS, "mlserver") == 2 and marked == [NS, NS]

    async def reconcile(p: KubeProvisioner) -> Any:
        p.adjust = scaler.adjust
        return await p.reconcile(NS)

    run(api, store, reconcile)
    assert objects(api, "statefulsets")["mlserver"]["spec"]["replicas"] == 2
    assert store.get("Server", NS, "mlserver")["spec"].get("replicas") is None  # the spec as applied
