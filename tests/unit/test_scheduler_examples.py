"""The example manifests, planned dry-run: every misconfiguration is named for what it is.
Also the resource-dict → Snapshot helpers they go through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from berth.errors import InvalidManifest
from berth.resources.manifest import load_paths
from berth.scheduler import plan
from berth.scheduler.build import (
    MLSERVER_CAPABILITIES,
    dry_run_replicas,
    model_want,
    server_info,
    snapshot_for,
)
from berth.scheduler.snapshot import (
    CROSS_NAMESPACE,
    INSUFFICIENT_MEMORY,
    MISSING_CAPABILITIES,
    NOT_ENOUGH_REPLICAS,
    ModelPlan,
    ReplicaRef,
    ServerInfo,
)
from berth.scheduler.summary import FAILED, FAILED_REPLICAS
from tests.support.seeds import EXAMPLES

NS = "financial-ml"
GiB = 2**30


def plan_seed(path: Path) -> dict[str, ModelPlan]:
    docs = [d.body for d in load_paths([str(path)]).documents]
    servers = [server_info(d) for d in docs if d["kind"] == "Server" and d["metadata"]["namespace"] == NS]
    return dict(plan(snapshot_for(NS, docs, dry_run_replicas(servers, memory=GiB))).models)


def only(path: Path) -> ModelPlan:
    models = plan_seed(path)
    assert len(models) == 1
    return next(iter(models.values()))


def test_examples_folder_is_there() -> None:
    assert sorted(p.name for p in (EXAMPLES / "misconfigured").glob("*.yaml")) == [
        "broken-experiment.yaml", "capability-typo.yaml", "cross-namespace-server.yaml", "memory-too-large.yaml",
        "model-before-server.yaml", "more-replicas-than-server.yaml"]


def test_capability_typo() -> None:
    mp = only(EXAMPLES / "misconfigured" / "capability-typo.yaml")
    assert mp.state == "ScheduleFailed" and [r.code for r in mp.reasons] == [MISSING_CAPABILITIES]
    assert mp.message.startswith(FAILED + ": ")
    assert "lacks capabilities torch, scikit-learn" in mp.message
    assert "did you mean pytorch for torch, sklearn for scikit-learn?" in mp.message


def test_cross_namespace_server() -> None:
    mp = only(EXAMPLES / "misconfigured" / "cross-namespace-server.yaml")
    assert [r.code for r in mp.reasons] == [CROSS_NAMESPACE]
    assert mp.message == (f"{FAILED}: server 'seldon-system/mlserver' is in namespace seldon-system; "
                          "a model in financial-ml can only use servers of its own namespace "
                          "(servers in financial-ml: none)")


def test_memory_too_large() -> None:
    mp = only(EXAMPLES / "misconfigured" / "memory-too-large.yaml")
    assert [r.code for r in mp.reasons] == [INSUFFICIENT_MEMORY, INSUFFICIENT_MEMORY]
    assert "64 GiB" in mp.message and "1.1 GiB free" in mp.message
    assert mp.reasons[0].message == ("replica mlserver/0 has 1.1 GiB free "
                                     "(1 GiB + 10% overcommit, 0 B used); model needs 64 GiB")


def test_more_replicas_than_server() -> None:
    mp = only(EXAMPLES / "misconfigured" / "more-replicas-than-server.yaml")
    assert [r.code for r in mp.reasons] == [NOT_ENOUGH_REPLICAS]
    assert dict(mp.reasons[0].data) == {"need": 3, "suitable": 1, "total": 1}
    assert mp.message == (f"{FAILED_REPLICAS}: model needs 3 replicas on one server; "
                          "server mlserver has 1 suitable replica (of 1)")


def test_financial_ml_models_are_scheduled_on_mlserver() -> None:
    models = plan_seed(EXAMPLES / "financial-ml")
    assert set(models) == {"baseline-predictor", "enhanced-predictor"}
    for mp in models.values():
        assert (mp.state, mp.replicas) == ("Scheduled", (ReplicaRef("mlserver", 0),))


def doc(kind: str, name: str, spec: dict[str, Any], namespace: str = NS, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": namespace, **meta}, "spec": spec}


def test_model_want_from_a_resource() -> None:
    want = model_want(doc("Model", "iris", {"storageUri": "s3://b/iris", "requirements": ["sklearn"],
                                            "memory": "100Ki", "minReplicas": 2, "server": "mlserver"},
                          deletionTimestamp="2024-01-01T00:00:00Z"))
    assert (want.name, want.namespace, want.requirements, want.memory) == ("iris", NS, ("sklearn",), 102400)
    assert (want.replicas, want.min_replicas, want.server, want.deleting) == (2, 2, "mlserver", True)
    plain = model_want(doc("Model", "m", {"storageUri": "file:///m"}))
    assert (plain.replicas, plain.min_replicas, plain.memory) == (1, None, 0)
    assert (plain.server, plain.deleting) == (None, False)
    assert model_want(doc("Model", "z", {"storageUri": "file:///m", "replicas": 0})).replicas == 0
    with pytest.raises(InvalidManifest, match=r"Model/bad in namespace financial-ml: spec\.replicas"):
        model_want(doc("Model", "bad", {"storageUri": "file:///m", "replicas": "three"}))


def test_server_info_capabilities() -> None:
    default = server_info(doc("Server", "mlserver", {"serverConfig": "mlserver", "replicas": 2,
                                                     "extraCapabilities": ["torch", "sklearn"]}))
    assert default.capabilities == (*MLSERVER_CAPABILITIES, "torch")
    assert default.desired_replicas == 2 and not default.deleting
    given = server_info(doc("Server", "s", {"serverConfig": "mlserver", "capabilities": ["a"]}))
    assert (given.capabilities, given.desired_replicas) == (("a",), 1)


def test_dry_run_replicas_and_snapshot_for() -> None:
    reps = dry_run_replicas([ServerInfo("s", NS, ("a",), desired_replicas=2)], memory=GiB)
    assert [(r.ref, r.capabilities, r.capacity, r.connected, r.ready) for r in reps] == [
        (ReplicaRef("s", 0), ("a",), int(1.1 * GiB), True, True),
        (ReplicaRef("s", 1), ("a",), int(1.1 * GiB), True, True)]
    plain = {"serverConfig": "mlserver"}
    docs = [doc("Server", "s", plain), doc("Server", "x", plain, "o"), doc("Server", "w", plain, "o"),
            doc("Model", "m", {"storageUri": "file:///m"}),
            doc("Model", "n", {"storageUri": "file:///n"}, "o"),
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "k", "namespace": NS}}]
    snap = snapshot_for(NS, docs, reps, assignments={"m": (ReplicaRef("s", 0),)}, policy="spread")
    assert [m.name for m in snap.models] == ["m"] and [s.name for s in snap.servers] == ["s"]
    assert snap.foreign_servers == {"o": ("w", "x")}
    assert (snap.policy, snap.assignments, len(snap.replicas)) == ("spread", {"m": (ReplicaRef("s", 0),)}, 2)
