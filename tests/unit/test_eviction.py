"""The reconciler's side of overcommit (control/eviction.py), the routes' ``evicted`` flag, the gateway's hold
(gateway/routing/wake.py) and describe: driven with hub records and tables, no processes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from berth.cli import describe_cmd
from berth.control import status
from berth.control.eviction import Evictor
from berth.control.hub import AgentHub, ReplicaModel, ReplicaRecord
from berth.control.routes import RoutesPublisher
from berth.errors import ModelNotReady
from berth.gateway.routing.router import Router
from berth.gateway.routing.table import ModelEvicted
from berth.gateway.routing.wake import Waker, held
from berth.scheduler.build import model_want
from berth.scheduler.snapshot import ModelPlan, Plan, ReplicaRef
from berth.wire import agent as wire
from berth.wire.routes import Endpoint, ModelRoute, RoutingTable

MiB = 1 << 20
KEY = "mlserver/0"


def model(name: str, **annotations: str) -> dict[str, Any]:
    return {"kind": "Model", "metadata": {"name": name, "namespace": "default", "generation": 1,
                                          "annotations": annotations},
            "spec": {"storageUri": "file:///m", "requirements": ["sklearn"], "memory": "100Mi"}}


def replica(*loaded: str) -> ReplicaRecord:
    ready = wire.Readiness(ready=True)
    rec = ReplicaRecord(key=("default", "mlserver", 0), readiness=ready,
                        hello=wire.Hello(server="mlserver", replica=0, memory=250 * MiB, readiness=ready))
    for name in loaded:
        rec.models[name] = ReplicaModel("LOADED", 1, memory=0)
    return rec


def plan(*names: str) -> Plan:
    return Plan("default", {n: ModelPlan(n, 1, (ReplicaRef("mlserver", 0),), "Scheduled", "") for n in names})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scenario() -> tuple[Evictor, Clock, dict[str, dict[str, Any]], dict[str, ReplicaRecord]]:
    clock = Clock()
    ev = Evictor(clock=clock, min_resident_s=30)
    models = {n: model(n) for n in ("a", "b", "c")}
    models["p"] = model("p", **{"berth.io/pinned": "true"})
    return ev, clock, models, {KEY: replica("p", "a")}


def test_what_does_not_fit_is_not_loaded_and_a_wake_evicts_the_lru() -> None:
    ev, clock, models, records = scenario()
    ev.decide("default", models, plan(*models), records)
    assert ev.blocked("default", "b", KEY) and ev.blocked("default", "c", KEY)  # no room: 2 × 100Mi of 250Mi
    assert not ev.blocked("default", "a", KEY) and not ev.blocked("default", "p", KEY)
    clock.now += 60  # past the thrash guard
    ev.book.wake("default", "c", clock.now)
    ev.decide("default", models, plan(*models), records)
    assert not ev.blocked("default", "c", KEY) and ev.blocked("default", "a", KEY)
    draining: list[ReplicaModel] = []
    asyncio.run(ev.act("default", records, AgentHub(lambda ns: None), draining, 1.0))
    assert records[KEY].models["a"].state == "DRAINING" and draining  # routes first, then the unload
    assert records[KEY].models["p"].state == "LOADED"  # pinned: never
    assert ev.book.evictions["default"] == 1
    why = ev.book.evicted[("default", "a", KEY)]
    assert why.unloaded and why.eviction.needed_by == "c" and why.eviction.needed_memory == 100 * MiB
    ev.load_sent("default", "c", KEY)  # c had never been loaded: not a reload
    assert ev.book.reloads["default"] == 0


def test_status_says_evicted_ready_and_the_route_is_wakeable(capsys: pytest.CaptureFixture[str]) -> None:
    ev, clock, models, records = scenario()
    records[KEY].models["c"] = ReplicaModel("LOADED", 1, memory=300 * MiB)  # measured above its declaration
    ev.decide("default", models, plan(*models), records)
    doc = models["b"]
    st = status.model_status(doc, model_want(doc), plan(*models).models["b"], records, 1, "fp", 0.0)
    assert st["state"] == status.PROGRESSING  # what model_status alone says of a copy never loaded
    ev.amend(st, doc, "default", {}, 0.0)
    assert st["state"] == status.AVAILABLE and st["reason"] == "Evicted"
    assert [c["status"] for c in st["conditions"] if c["type"] == "Ready"] == ["True"]
    row = st["replicaStatus"][KEY]
    assert row["state"] == "Evicted" and row["eviction"]["unloaded"] is False
    assert "the next request reloads it" in row["message"]
    assert st["availableReplicas"] == 0
    routes = RoutesPublisher()
    route = json.loads(routes._model_route("default", {**doc, "status": st}, records, {}, {}))
    assert route["evicted"] is True and route["endpoints"] == []
    st_c = status.model_status(models["c"], model_want(models["c"]), plan(*models).models["c"], records, 1, "fp", 0.0)
    ev.amend(st_c, models["c"], "default", {}, 0.0)
    assert st_c["memory"] == {"declared": 100 * MiB, "measured": 300 * MiB, "effective": 300 * MiB}
    describe_cmd.describe_model({**models["c"], "status": st_c})
    assert "100Mi declared, 300 MiB measured at load; counts 300 MiB" in " ".join(capsys.readouterr().out.split())
    describe_cmd.describe_model({**doc, "status": st})
    assert "Evicted" in capsys.readouterr().out


def route(evicted: bool, loaded: bool = False) -> RoutingTable:
    eps = [Endpoint(server="mlserver", replica=0, http="127.0.0.1:1", grpc="127.0.0.1:2")] if loaded else []
    return RoutingTable(revision=2 if loaded else 1, models=[ModelRoute(
        namespace="default", name="m", state="ModelAvailable", reason="evicted: room for model x",
        endpoints=eps, evicted=evicted)])


def test_the_gateway_holds_until_a_table_shows_it_loaded_then_times_out_with_the_reason() -> None:
    async def run() -> None:
        router = Router(route(evicted=True))
        with pytest.raises(ModelEvicted) as first:
            router.decide("default", "m")
        waker = Waker(router, None, timeout=5.0)  # no control plane to ask: it only waits for the table
        holding = asyncio.ensure_future(held(router, "default", "m", None, first.value))
        await asyncio.sleep(0.05)
        assert not holding.done() and waker.holding == 1
        router.set(route(evicted=False, loaded=True))
        decision = await asyncio.wait_for(holding, 1)
        assert decision.target.addresses == ("127.0.0.1:1",) and waker.holding == 0
        router.set(route(evicted=True))
        waker.timeout = 0.1
        with pytest.raises(ModelNotReady) as late:
            await held(router, "default", "m", None, first.value)
        assert "did not reload within 0.1s (evicted: room for model x)" in late.value.message
        assert not isinstance(late.value, ModelEvicted)
        await waker.close()

    asyncio.run(run())


def test_without_a_waker_an_evicted_model_answers_503_at_once() -> None:
    router = Router(route(evicted=True))
    with pytest.raises(ModelEvicted) as first:
        router.decide("default", "m")
    assert first.value.code == "ModelNotReady" and first.value.http_status == 503
    with pytest.raises(ModelEvicted):
        asyncio.run(held(router, "default", "m", None, first.value))
    # a model that is not ready for another reason is never held
    failed = Router(RoutingTable(models=[ModelRoute(namespace="default", name="n", state="LoadFailed")]))
    with pytest.raises(ModelNotReady) as other:
        failed.decide("default", "n")
    assert not isinstance(other.value, ModelEvicted)


def test_min_replicas_pins_that_many_copies() -> None:
    ev, clock, models, records = scenario()
    models["a"]["spec"]["minReplicas"] = 1  # loaded first, then least recent: still never evicted
    models["p"]["metadata"]["annotations"] = {}
    clock.now += 60
    ev.book.wake("default", "b", clock.now)
    ev.book.wake("default", "c", clock.now + 1)
    ev.decide("default", models, plan(*models), records)
    assert not ev.blocked("default", "a", KEY)  # minReplicas 1: its first planned replica keeps it
    assert ev.blocked("default", "p", KEY)  # no longer pinned: the wake-ups took its room


class Sent(AgentHub):
    """The hub, its sends recorded instead of written to a WebSocket."""

    def __init__(self) -> None:
        super().__init__(lambda ns: None)
        self.sent: list[wire.Load | wire.Unload | wire.CheckStorage] = []

    async def send(self, rec: ReplicaRecord, msg: wire.Load | wire.Unload | wire.CheckStorage) -> bool:
        self.sent.append(msg)
        return True


def test_kept_artifacts_no_longer_wanted_are_removed_when_the_agent_says_it_keeps_them() -> None:
    ev = Evictor()
    models = {n: model(n) for n in ("a", "b", "c")}
    rec = replica()
    # as the agent's hello says after a reconnection: what it keeps for evicted models
    rec.hello = rec.hello.model_copy(update={"kept": [wire.LoadedModel(name=n, generation=g) for n, g in
                                                      (("a", 1), ("b", 1), ("b_2", 2), ("gone", 1), ("c", 1))]})
    rec.models["c"] = ReplicaModel("LOADING", 1)  # loaded again since: its kept copy is the one loading
    ev.decide("default", models, plan("a", "b", "c"), {KEY: rec})
    hub = Sent()
    # b's rollout went to generation 2 (what its replicas keep); "gone" was deleted while the agent was away
    asyncio.run(ev.act("default", {KEY: rec}, hub, [], 1.0, keep={"a": {1}, "b": {2}, "c": {1}}))
    assert sorted(m.name for m in hub.sent if isinstance(m, wire.Unload)) == ["b", "gone"]
    assert all(isinstance(m, wire.Unload) and not m.keep_artifact for m in hub.sent)  # the files go
    assert ev.kept[("default", KEY)][1] == {"a": 1, "b_2": 2}
    hub.sent.clear()
    asyncio.run(ev.act("default", {KEY: rec}, hub, [], 1.0, keep={"a": {1}, "b": {2}, "c": {1}}))
    assert hub.sent == []  # asked once
    ev.decide("default", {"b": models["b"]}, plan("b"), {KEY: rec})  # a moved away, scheduled elsewhere
    asyncio.run(ev.act("default", {KEY: rec}, hub, [], 1.0, keep={"b": {2}}))
    assert [m.name for m in hub.sent] == ["a"]
    hub.sent.clear()
    rec.connected_at += 10  # a new connection: its hello is the truth again
    asyncio.run(ev.act("default", {KEY: rec}, hub, [], 1.0, keep={"b": {2}}))
    assert sorted(m.name for m in hub.sent) == ["a", "b", "gone"]  # c is loading: its copy is in use
