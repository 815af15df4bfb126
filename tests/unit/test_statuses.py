"""The statuses the reconciler writes have exactly the shapes ``berth.resources.statuses`` declares (so the
declaration every reader is type-checked against cannot drift from what is stored)."""

from __future__ import annotations

import asyncio
from typing import Any

from berth.resources import statuses as S
from tests.unit.test_reconcile import NS, connect, experiment, model, plane, server, settle


def keys(shape: type[Any]) -> tuple[frozenset[str], frozenset[str]]:
    """(required, allowed) keys of a TypedDict."""
    return shape.__required_keys__, shape.__required_keys__ | shape.__optional_keys__


def check(shape: type[Any], value: dict[str, Any], where: str) -> None:
    required, allowed = keys(shape)
    assert required <= set(value), f"{where}: missing {sorted(required - set(value))}"
    assert set(value) <= allowed, f"{where}: undeclared {sorted(set(value) - allowed)}"


def written() -> list[dict[str, Any]]:
    async def body() -> list[dict[str, Any]]:
        p = plane()
        p.store.apply_many([
            server(2), model("a", replicas=2), model("b", requirements=["nothing-has-this"]),
            experiment({"a": 50, "b": 50}),
            {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": "p", "namespace": NS},
             "spec": {"steps": [{"name": "a"}]}},
            {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "SeldonRuntime",
             "metadata": {"name": "seldon", "namespace": NS}, "spec": {"seldonConfig": "default"}},
            {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "ServerConfig",
             "metadata": {"name": "mlserver", "namespace": NS}, "spec": {}},
        ])
        connect(p.hub, 0)  # replica 1 never comes: a server row with no agent
        await settle(p)
        return p.store.list(namespace=NS)

    return asyncio.run(body())


def test_every_kind_written_has_its_declared_shape() -> None:
    docs = written()
    kinds = {d["kind"] for d in docs}
    assert {"Model", "Server", "Experiment", "Pipeline", "SeldonRuntime", "ServerConfig"} <= kinds
    for doc in docs:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        st = doc["status"]
        check(S.STATUS_SHAPES[doc["kind"]], st, where)
        assert S.missing_fields(doc["kind"], st) == []
        for c in st["conditions"]:
            check(S.Condition, c, f"{where} condition")
        if doc["kind"] == "Model":
            check(S.ModelPlacement, st["placement"], f"{where} placement")
            for r in st["placement"]["reasons"]:
                check(S.PlacementReason, r, f"{where} reason")
            for key, row in st["replicaStatus"].items():
                check(S.ModelReplicaStatus, row, f"{where} replica {key}")
            for h in st["history"]:
                check(S.HistoryEntry, h, f"{where} history")
            assert st["state"] in S.MODEL_STATES
        if doc["kind"] == "Server":
            for row in st["replicaStatus"]:
                check(S.ServerReplicaStatus, row, f"{where} replica {row['index']}")
        if doc["kind"] == "Pipeline":
            for step in st.get("steps", []):
                check(S.PipelineStepStatus, step, f"{where} step")


def test_readers_answer_none_before_the_first_status() -> None:
    doc: dict[str, Any] = {"kind": "Model", "metadata": {"name": "m"}}
    assert S.model_status_of(doc) is None and S.server_status_of({**doc, "status": {}}) is None
    assert S.conditions_of(doc) == [] and S.condition_of(doc, "Ready") is None
    st = written()
    a = next(d for d in st if d["kind"] == "Model" and d["metadata"]["name"] == "a")
    typed = S.model_status_of(a)
    assert typed is not None and typed["replicas"] == 2
    ready = S.condition_of(a, "Ready")
    assert ready is not None and ready["status"] in ("True", "False")
    assert S.missing_fields("Model", {"state": "ModelAvailable"})[:2] == ["artifactFingerprint", "artifactGeneration"]
