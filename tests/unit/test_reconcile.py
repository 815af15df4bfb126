"""The reconcile loop against a real memory store and routes publisher, with agents simulated in the hub.

No processes and no MLServer: a stand-in hub records the Load/Unload messages it is asked to send, and
agent outcomes are fed back through the hub's own handlers (``_register``, ``_model_event``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from berth.control import reconcile, status
from berth.control.hub import AgentHub, ReplicaRecord
from berth.control.reconcile import Reconciler
from berth.control.routes import RoutesPublisher
from berth.errors import Conflict
from berth.scheduler.build import MLSERVER_CAPABILITIES
from berth.store.base import StatusUpdate
from berth.store.memory import MemoryStore
from berth.wire import agent as wire

NS = "ns"
SERVER = "mlserver"
T = TypeVar("T")


@dataclass
class Sent:
    at: float
    replica: int
    msg: wire.Load | wire.Unload


class RecordingHub(AgentHub):
    """Every send succeeds and is recorded; no WebSocket is involved."""

    def __init__(self) -> None:
        super().__init__(lambda ns: None)
        self.sent: list[Sent] = []

    async def send(self, rec: ReplicaRecord, msg: wire.Load | wire.Unload) -> bool:
        self.sent.append(Sent(time.time(), rec.index, msg))
        return True

    def loads(self, since: int = 0) -> list[tuple[int, int]]:
        return [(s.replica, s.msg.generation) for s in self.sent[since:] if isinstance(s.msg, wire.Load)]

    def unloads(self) -> list[Sent]:
        return [s for s in self.sent if isinstance(s.msg, wire.Unload)]


@dataclass
class Plane:
    store: MemoryStore
    hub: RecordingHub
    routes: RoutesPublisher
    rc: Reconciler

    async def pass_(self) -> None:
        await self.rc.reconcile(NS)


def plane(store: MemoryStore | None = None) -> Plane:
    store = store or MemoryStore()
    hub, routes = RecordingHub(), RoutesPublisher()
    return Plane(store, hub, routes, Reconciler(store, hub, routes))


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())


def server(replicas: int) -> dict[str, Any]:
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
            "metadata": {"name": SERVER, "namespace": NS},
            "spec": {"serverConfig": "mlserver", "replicas": replicas}}


def model(name: str = "iris", uri: str = "gs://bucket/iris", **spec: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": NS, **spec.pop("meta", {})}
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": meta,
            "spec": {"storageUri": uri, "requirements": ["sklearn"], **spec}}


def experiment(weights: dict[str, int]) -> dict[str, Any]:
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Experiment",
            "metadata": {"name": "ab", "namespace": NS},
            "spec": {"candidates": [{"name": n, "weight": w} for n, w in weights.items()]}}


def connect(hub: AgentHub, index: int, loaded: Iterable[wire.LoadedModel] = ()) -> ReplicaRecord:
    hello = wire.Hello(namespace=NS, server=SERVER, replica=index, capabilities=list(MLSERVER_CAPABILITIES),
                       memory=4 << 30, inference=wire.InferenceAddress(http_port=9000 + index),
                       readiness=wire.Readiness(ready=True), loaded=list(loaded))
    return hub._register(hello, None)  # type: ignore[arg-type]


def agents_finish(hub: AgentHub) -> None:
    """Every agent reports the outcome of what it was asked: loads succeed, unloads complete."""
    for rec in hub.replicas.values():
        for name, m in list(rec.models.items()):
            if m.state == "LOADING":
                hub._model_event(rec, wire.ModelEvent(name=name, generation=m.generation, state="LOADED"))
            elif m.state == "UNLOADING":
                hub._model_event(rec, wire.ModelEvent(name=name, generation=m.generation, state="UNLOADED"))


async def settle(p: Plane, passes: int = 3) -> None:
    for _ in range(passes):
        await p.pass_()
        agents_finish(p.hub)
    await p.pass_()


def endpoints(routes: RoutesPublisher, name: str) -> list[int]:
    return [e.replica for r in routes.table().models if r.name == name for e in r.endpoints]


def stored(store: MemoryStore, name: str = "iris") -> dict[str, Any]:
    return store.get("Model", NS, name)


@pytest.mark.parametrize("change", ["scale", "delete"])
def test_a_leaving_model_is_drained_from_routes_before_it_is_unloaded(
        change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    drain = 0.2
    monkeypatch.setattr(reconcile, "DRAIN_SECONDS", drain)

    async def body() -> None:
        p = plane()
        p.store.apply(server(2))
        p.store.apply(model(replicas=2))
        connect(p.hub, 0), connect(p.hub, 1)
        await settle(p)
        assert sorted(endpoints(p.routes, "iris")) == [0, 1] and not p.hub.unloads()

        if change == "scale":
            p.store.apply(model(replicas=1))
        else:
            p.store.delete("Model", NS, "iris")
        dropped_at = time.time()
        await p.pass_()
        kept = endpoints(p.routes, "iris")
        assert len(kept) == (1 if change == "scale" else 0)
        assert not p.hub.unloads(), "unloaded while gateways may still route to the replica"
        leaving = {0, 1} - set(kept)
        assert all(p.hub.replicas[(NS, SERVER, i)].models["iris"].state == "DRAINING" for i in leaving)

        deadline = time.time() + 10
        while not p.hub.unloads() and time.time() < deadline:
            await asyncio.sleep(0.02)
            await p.pass_()
        unloads = p.hub.unloads()
        assert {u.replica for u in unloads} == leaving and len(unloads) == len(leaving)
        assert all(u.msg.name == "iris" and u.at - dropped_at >= drain for u in unloads)
        assert endpoints(p.routes, "iris") == kept

    run(body)


def test_the_drain_time_counts_from_the_routes_publication(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass slow between marking a model DRAINING and publishing routes (a slow status commit) still
    gives gateways the whole drain time after they are told."""
    drain = 0.2
    monkeypatch.setattr(reconcile, "DRAIN_SECONDS", drain)

    async def body() -> None:
        p = plane()
        p.store.apply(server(1))
        p.store.apply(model())
        connect(p.hub, 0)
        await settle(p)
        published: list[float] = []
        publish, write = p.routes.publish_namespace, p.rc._write_statuses

        def timed_publish(*args: Any, **kwargs: Any) -> None:
            publish(*args, **kwargs)
            published.append(time.time())

        def slow_write(*args: Any) -> Any:
            time.sleep(drain * 1.5)
            return write(*args)

        monkeypatch.setattr(p.routes, "publish_namespace", timed_publish)
        monkeypatch.setattr(p.rc, "_write_statuses", slow_write)
        p.store.delete("Model", NS, "iris")
        await p.pass_()
        assert endpoints(p.routes, "iris") == [] and not p.hub.unloads()
        monkeypatch.setattr(p.rc, "_write_statuses", write)
        deadline = time.time() + 10
        while not p.hub.unloads() and time.time() < deadline:
            await asyncio.sleep(0.02)
            await p.pass_()
        [unload] = p.hub.unloads()
        assert unload.at - published[0] >= drain, "unloaded before gateways had the drain time"

    run(body)


def test_a_model_is_reloaded_when_its_artifact_changes_never_on_scale() -> None:
    async def body() -> None:
        p = plane()
        p.store.apply(server(2))
        p.store.apply(model(replicas=1))
        connect(p.hub, 0), connect(p.hub, 1)
        await settle(p)
        [(holder, gen)] = p.hub.loads()
        assert gen == 1 and stored(p.store)["status"]["state"] == status.AVAILABLE
        other = 1 - holder

        mark = len(p.hub.sent)
        p.store.apply(model(replicas=2))
        assert stored(p.store)["metadata"]["generation"] == 2
        await settle(p)
        assert p.hub.loads(mark) == [(other, 1)]
        assert stored(p.store)["status"]["availableReplicas"] == 2

        mark = len(p.hub.sent)
        p.store.apply(model(replicas=2, meta={"labels": {"team": "a"}, "annotations": {"note": "x"}}))
        await settle(p)
        assert p.hub.sent[mark:] == []

        p.store.apply(model(uri="gs://bucket/iris-v2", replicas=2,
                            meta={"labels": {"team": "a"}, "annotations": {"note": "x"}}))
        assert stored(p.store)["metadata"]["generation"] == 3
        await p.pass_()
        assert sorted(p.hub.loads(mark)) == [(0, 3), (1, 3)]
        assert {s.msg.source.storage_uri for s in p.hub.sent[mark:]} == {"gs://bucket/iris-v2"}

    run(body)


async def _fail_loads(failures: int) -> tuple[Plane, int]:
    """Fail the load ``failures`` times, the backoff always over; then how many Loads a few more passes send."""
    p = plane()
    p.store.apply(server(1))
    p.store.apply(model())
    rec = connect(p.hub, 0)
    await p.pass_()
    assert p.hub.loads() == [(0, 1)]
    for attempt in range(1, failures + 1):
        p.hub._model_event(rec, wire.ModelEvent(name="iris", generation=1, state="LOAD_FAILED",
                                                message=f"no such bucket ({attempt})"))
        assert rec.models["iris"].attempts == attempt
        rec.models["iris"].retry_at = 0.0
        if attempt < failures:
            mark = len(p.hub.sent)
            await p.pass_()
            assert p.hub.loads(mark) == [(0, 1)], f"no retry after failure {attempt}"
    mark = len(p.hub.sent)
    for _ in range(3):
        if rec.models["iris"].state == "LOAD_FAILED":
            rec.models["iris"].retry_at = 0.0
        await p.pass_()
    return p, len(p.hub.loads(mark))


def test_loading_stops_after_the_last_allowed_failure() -> None:
    p, later = run(lambda: _fail_loads(status.MAX_LOAD_ATTEMPTS))
    assert later == 0
    st = stored(p.store)["status"]
    assert st["state"] == status.LOAD_FAILED
    assert f"no such bucket ({status.MAX_LOAD_ATTEMPTS})" in st["message"]


def test_one_failure_fewer_is_still_retried() -> None:
    p, later = run(lambda: _fail_loads(status.MAX_LOAD_ATTEMPTS - 1))
    assert later == 1
    assert p.hub.replicas[(NS, SERVER, 0)].models["iris"].state == "LOADING"


def test_a_reconnecting_agent_keeps_its_models_without_a_reload() -> None:
    async def body() -> MemoryStore:
        p = plane()
        p.store.apply(server(2))
        p.store.apply(model())
        connect(p.hub, 0), connect(p.hub, 1)
        await settle(p)
        [(holder, _)] = p.hub.loads()
        p.store.apply(model(replicas=1))  # a new generation of the same artifact
        await settle(p)
        assert stored(p.store)["status"]["artifactGeneration"] == 1
        assert stored(p.store)["metadata"]["generation"] == 2
        return p.store

    async def restart(store: MemoryStore) -> None:
        p = plane(store)
        held = p.store.get("Model", NS, "iris")["status"]["placement"]["replicas"]
        for i in (0, 1):
            connect(p.hub, i, [wire.LoadedModel(name="iris", generation=1)] if [i] == held else [])
        await settle(p)
        assert p.hub.sent == []
        assert stored(p.store)["status"]["state"] == status.AVAILABLE
        assert endpoints(p.routes, "iris") == held

    store = run(body)
    run(lambda: restart(store))


def test_an_experiment_only_change_republishes_routes() -> None:
    async def body() -> None:
        p = plane()
        p.store.apply(server(1))
        p.store.apply(model("a"))
        p.store.apply(model("b"))
        connect(p.hub, 0)
        p.store.apply(experiment({"a": 70, "b": 30}))
        await settle(p)
        [exp] = p.routes.table().experiments
        assert exp.ready and [(c.name, c.weight) for c in exp.candidates] == [("a", 70), ("b", 30)]
        before, loads = p.routes.revision, len(p.hub.sent)

        p.store.apply(experiment({"a": 50, "b": 50}))
        await p.pass_()
        assert p.routes.revision > before
        [exp] = p.routes.table().experiments
        assert [(c.name, c.weight) for c in exp.candidates] == [("a", 50), ("b", 50)]
        assert len(p.hub.sent) == loads

    run(body)


def test_a_status_write_never_lands_on_a_newer_object() -> None:
    async def body() -> None:
        p = plane()
        p.store.apply(server(1))
        p.store.apply(model())
        connect(p.hub, 0)
        real = p.store.update_statuses
        conflicts: list[Conflict] = []

        def racing_update(updates: list[StatusUpdate]) -> list[Any]:
            if any(u.kind == "Model" for u in updates) and not conflicts:
                p.store.apply(model(uri="gs://bucket/iris-v2"))  # a user's apply lands mid-pass
                results = real(updates)
                conflicts.extend(r for r in results if isinstance(r, Conflict))
                return results
            return real(updates)

        p.store.update_statuses = racing_update  # type: ignore[method-assign]
        p.rc._dirty.clear()
        await p.pass_()
        assert conflicts, "the status write did not compare the resourceVersion"
        doc = stored(p.store)
        assert doc["metadata"]["generation"] == 2 and "status" not in doc
        assert NS in p.rc._dirty

        p.rc._dirty.clear()
        await p.pass_()
        st = stored(p.store)["status"]
        assert st["observedGeneration"] == 2 and st["artifactGeneration"] == 2

    run(body)

