"""Route publication in slices (issue 18): a reconcile pass's routes are made between Slicer ticks, a route
unchanged since the last pass is not made again, and the table the gateways get is the same document
``RoutingTable`` would encode."""

from __future__ import annotations

import asyncio
from typing import Any

from berth.control.hub import AgentHub, ReplicaModel, ReplicaRecord
from berth.control.routes import INFERENCE_AUTH_ANNOTATION, RoutesPublisher
from berth.control.slices import Slicer
from berth.resources.instances import instance
from berth.wire import agent as wire
from berth.wire.routes import RoutingTable


def model(name: str, ns: str, state: str = "ModelAvailable", replicas: tuple[str, ...] = (),
          generation: int = 1) -> dict[str, Any]:
    return {"kind": "Model", "metadata": {"name": name, "namespace": ns, "generation": generation},
            "spec": {"storageUri": "file:///m"},
            "status": {"state": state, "message": f"{name} is {state}", "servingGeneration": generation,
                       "replicaStatus": {r: {"state": "Loaded"} for r in replicas}}}


def experiment(name: str, ns: str) -> dict[str, Any]:
    return {"kind": "Experiment", "metadata": {"name": name, "namespace": ns},
            "spec": {"default": "a", "candidates": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def replicas(ns: str, loaded: dict[str, int]) -> dict[str, ReplicaRecord]:
    """One connected, ready replica mlserver/0 in ``ns`` holding ``loaded`` (instance name -> generation)."""
    hub = AgentHub(lambda _: None)
    rec = hub._register(wire.Hello(namespace=ns, server="mlserver", replica=0, capabilities=["sklearn"],
                                   memory=1 << 30, inference=wire.InferenceAddress(http_port=9100),
                                   readiness=wire.Readiness(ready=True)), None)  # type: ignore[arg-type]
    for inst, gen in loaded.items():
        rec.models[inst] = ReplicaModel("LOADED", gen)
    return {"mlserver/0": rec}


def test_the_joined_table_is_what_routing_table_encodes() -> None:
    async def body() -> None:
        p = RoutesPublisher()
        recs = replicas("b-team", {"iris": 1, instance("wine", 2): 2})
        runtime = {"metadata": {"annotations": {INFERENCE_AUTH_ANNOTATION: "required"}}}
        await p.publish_sliced("b-team", [model("iris", "b-team", replicas=("mlserver/0",)),
                                          model("wine", "b-team", replicas=("mlserver/0",), generation=2),
                                          model("down", "b-team", "LoadFailed")],
                               recs, [experiment("ab", "b-team")], runtime)
        p.publish_namespace("a-team", [model("m", "a-team")], {}, [])
        p.publish_namespace("empty", [], {}, [])
        text = p.encoded()
        table = p.table()
        assert text == table.model_dump_json()  # byte for byte the document RoutingTable encodes
        assert [(m.namespace, m.name) for m in table.models] == [("a-team", "m"), ("b-team", "iris"),
                                                                  ("b-team", "wine"), ("b-team", "down")]
        iris, wine = table.models[1], table.models[2]
        assert [(e.server, e.replica) for e in iris.endpoints] == [("mlserver", 0)] and iris.upstream == ""
        assert wine.endpoints and wine.upstream == instance("wine", 2) and not table.models[3].endpoints
        assert [e.name for e in table.experiments] == ["ab"] and table.auth is not None
        assert [a.namespace for a in table.auth.namespaces] == ["b-team"]
        assert RoutingTable.model_validate_json(text).revision == p.revision

    asyncio.run(body())


def test_a_pass_over_1000_models_hands_the_loop_back_and_matches_one_made_in_one_go() -> None:
    async def body() -> None:
        docs = [model(f"m{i:04d}", "ns", replicas=("mlserver/0",)) for i in range(1000)]
        recs = replicas("ns", {f"m{i:04d}": 1 for i in range(0, 1000, 2)})
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        task = asyncio.create_task(ticker())
        sliced, whole = RoutesPublisher(), RoutesPublisher()
        slicer = Slicer(budget=0.0002)
        await sliced.publish_sliced("ns", docs, recs, [], slicer=slicer)
        task.cancel()
        whole.publish_namespace("ns", docs, recs, [])
        assert slicer.yields > 0 and ticks > 0, "the pass never handed the loop back"
        assert sliced.table().models == whole.table().models
        assert sum(bool(m.endpoints) for m in sliced.table().models) == 500

    asyncio.run(body())


def test_unchanged_routes_are_not_made_again_and_changes_are_published() -> None:
    async def body() -> None:
        p = RoutesPublisher()
        docs = [model(f"m{i}", "ns") for i in range(5)]
        await p.publish_sliced("ns", docs, {}, [])
        first, memo = p.revision, dict(p._route_memo["ns"])
        await p.publish_sliced("ns", [dict(d) for d in docs], {}, [])
        assert p.revision == first  # nothing changed: nothing pushed
        assert all(p._route_memo["ns"][n][1] is memo[n][1] for n in memo)  # the same encoded routes, reused
        docs[2] = model("m2", "ns", "LoadFailed")
        await p.publish_sliced("ns", docs[:4], {}, [])
        assert p.revision == first + 1
        assert [(m.name, m.state) for m in p.table().models] == [
            ("m0", "ModelAvailable"), ("m1", "ModelAvailable"), ("m2", "LoadFailed"), ("m3", "ModelAvailable")]
        assert set(p._route_memo["ns"]) == {"m0", "m1", "m2", "m3"}  # a deleted model is forgotten
        await p.publish_sliced("ns", [], {}, [])
        assert p.table().models == []

    asyncio.run(body())
