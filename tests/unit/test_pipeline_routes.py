"""Pipelines in the routing table: published by the control plane, compiled and chosen by the gateway."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from berth.control.pipelines import pipeline_statuses
from berth.control.routes import RoutesPublisher
from berth.errors import BerthError, NotFound
from berth.gateway.routing.router import Router
from berth.resources.identity import hash_token
from berth.wire.routes import Candidate, ExperimentRoute, NamespaceAuth, PipelineRoute, RoutingTable, TableAuth


def pipeline_doc(name: str, steps: list[dict[str, Any]], **annotations: str) -> dict[str, Any]:
    return {"kind": "Pipeline", "metadata": {"name": name, "namespace": "ns", "generation": 1,
                                             "annotations": annotations}, "spec": {"steps": steps}}


def test_statuses_are_published_with_readiness_and_timeouts() -> None:
    models = {"a": {"status": {"state": "ModelAvailable"}}, "b": {"status": {"state": "LoadFailed"}}}
    docs = [pipeline_doc("good", [{"name": "a"}], **{"berth.io/step-timeout": "2s", "other": "x"}),
            pipeline_doc("bad", [{"name": "a"}, {"name": "b", "inputs": ["a"]}])]
    statuses = dict(pipeline_statuses("ns", docs, models, 0.0))
    assert statuses["good"]["message"] == "pipeline ready"
    assert statuses["bad"]["message"] == "step b: model b is not ready: LoadFailed"
    assert statuses["bad"]["steps"] == [{"name": "a", "ready": True, "message": "ready"},
                                        {"name": "b", "ready": False, "message": "model b is not ready: LoadFailed"}]
    assert [c["type"] for c in statuses["bad"]["conditions"]] == ["PipelineReady", "Ready"]

    async def publish() -> RoutingTable:
        publisher = RoutesPublisher()
        with_status = [{**d, "status": statuses[d["metadata"]["name"]]} for d in docs]
        publisher.publish_namespace("ns", [], {}, [], pipelines=with_status)
        return publisher.table()

    table = asyncio.run(publish())
    assert {(p.name, p.ready) for p in table.pipelines} == {("good", True), ("bad", False)}
    assert next(p for p in table.pipelines if p.name == "good").annotations == {"berth.io/step-timeout": "2s"}


def _router() -> Router:
    spec = {"steps": [{"name": "a"}]}
    table = RoutingTable(
        pipelines=[PipelineRoute(namespace="ns", name="p1", spec=spec, ready=True),
                   PipelineRoute(namespace="ns", name="p2", spec=spec, ready=True),
                   PipelineRoute(namespace="ns", name="down", spec=spec, ready=False, reason="step a: gone"),
                   PipelineRoute(namespace="ns", name="skewed", spec={"steps": [{"name": "a", "inputs": ["zz"]}]},
                                 ready=True),
                   PipelineRoute(namespace="locked", name="secret", spec=spec, ready=True)],
        experiments=[ExperimentRoute(namespace="ns", name="ab", resource_type="pipeline", ready=True, default="p1",
                                     candidates=[Candidate(name="p1", weight=1), Candidate(name="p2", weight=3)])],
        auth=TableAuth(namespaces=[NamespaceAuth(namespace="locked", tokens=[hash_token("t")])]))
    return Router(table, rng=random.Random(7))


def test_router_chooses_pipelines_and_splits() -> None:
    router = _router()
    assert router.pipeline("ns", "a") is None  # a model name: not a pipeline address
    choice = router.pipeline("ns", "p2.pipeline")
    assert choice is not None and choice.dag.name == "p2" and choice.route_head == ":p2.pipeline:"
    picks = [router.pipeline("ns", "ab.experiment") for _ in range(400)]
    share = sum(1 for c in picks if c is not None and c.dag.name == "p2") / len(picks)
    assert 0.65 < share < 0.85
    sticky = router.pipeline("ns", "ab.experiment", ":ab.experiment:p1:p1.pipeline:a:")
    assert sticky is not None and sticky.dag.name == "p1" and sticky.route_head == ":ab.experiment:p1:p1.pipeline:"
    taken = router.pipeline("ns", "p1.pipeline", ":ab.experiment:p2:")  # the experiment's default takes over
    assert taken is not None and taken.experiment == "ab" and taken.dag.name == "p2"


def test_router_refuses_with_reasons_and_hides_guarded_names() -> None:
    router = _router()
    with pytest.raises(BerthError) as info:
        router.pipeline("ns", "down.pipeline")
    assert info.value.code == "PipelineNotReady" and "step a: gone" in info.value.message
    with pytest.raises(BerthError) as info:
        router.pipeline("ns", "skewed.pipeline")  # marked ready, but its DAG does not compile here
    assert "'zz' names zz, which is no step" in info.value.message
    with pytest.raises(NotFound) as missing:
        router.pipeline("ns", "nope.pipeline")
    assert "pipelines here: down, p1, p2, skewed" in missing.value.message
    with pytest.raises(NotFound) as hidden:
        router.pipeline("locked", "nope.pipeline")
    assert "secret" not in hidden.value.message and "pipelines here" not in hidden.value.message


def test_experiment_over_pipelines_needs_ready_pipelines() -> None:
    from berth.control.experiments import experiment_status

    exp = {"metadata": {"name": "ab", "namespace": "ns"},
           "spec": {"resourceType": "pipeline", "default": "p1", "mirror": {"name": "p3", "percent": 10},
                    "candidates": [{"name": "p1", "weight": 1}, {"name": "p2", "weight": 1}]}}
    ready = {"status": {"message": "pipeline ready", "conditions": [{"type": "Ready", "status": "True"}]}}
    down = {"status": {"message": "step a: model a is not ready: LoadFailed",
                       "conditions": [{"type": "Ready", "status": "False"}]}}
    st = experiment_status(exp, {"p1": {"status": {"state": "ModelAvailable"}}}, {}, 0.0,
                           {"p1": ready, "p2": down, "p4": ready})
    assert st["message"] == ("candidate pipeline p2 is not ready: step a: model a is not ready: LoadFailed; "
                             "mirror pipeline p3 not found in namespace ns")
    assert st["holdsDefault"] is False  # a pipeline experiment claims no model's name
    st = experiment_status(exp, {}, {}, 0.0, {"p1": ready, "p2": ready, "p3": ready})
    assert st["message"] == "experiment ready"
