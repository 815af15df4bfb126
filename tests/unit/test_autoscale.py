"""Autoscaling decisions (control/autoscale.py) and the autoscaler's bookkeeping (control/autoscale_loop.py),
with injected clocks: up after a sustained overload, down after a sustained quiet (one step per cool-down),
hysteresis, bounds, unknown load, bad annotations, resumption from the stored status, the docs the
reconciler plans with."""

from __future__ import annotations

from typing import Any

import pytest

from berth.control import autoscale
from berth.control.autoscale import Bounds, Scaling, Targets, decide
from berth.control.autoscale_loop import Autoscaler
from berth.control.usage import ModelLoad, UsageBook
from berth.scheduler.snapshot import (
    INSUFFICIENT_MEMORY,
    MISSING_CAPABILITIES,
    NOT_ENOUGH_REPLICAS,
    REPLICA_NOT_READY,
    ModelPlan,
    PlacementState,
    Plan,
    Rejection,
    ReplicaRef,
)
from berth.store import MemoryStore
from berth.wire.usage import ModelUsage, ReplicaLoad, UsageReport

FAST = Targets(inflight=2.0, up_after=3.0, down_after=5.0)


def load(*per_replica: float, p95: float | None = None) -> ModelLoad:
    return ModelLoad(requests_per_s=1.0, inflight={f"r{i}": v for i, v in enumerate(per_replica)},
                     latency_p95_ms=p95, gateways=1, concurrency=sum(per_replica))


def run(s: Scaling, signal: ModelLoad | None, t0: float, t1: float, targets: Targets = FAST,
        reporting: bool = True) -> list[tuple[float, autoscale.Decision]]:
    """Decide every 0.5 s from t0 to t1 with a constant signal, recording decisions as the loop does."""
    out = []
    t = t0
    while t <= t1 + 1e-9:
        d = decide(s, signal, reporting, targets, t)
        if d is not None:
            s.record(d, f"t={t}")
            out.append((t, d))
        t += 0.5
    return out


def test_a_sustained_overload_scales_up_by_the_ratio_after_the_delay() -> None:
    s = Scaling(replicas=1, bounds=Bounds(1, 4))
    got = run(s, load(5.0), 0.0, 2.5)
    assert got == []  # above the target, but not for up_after yet
    got = run(s, load(5.0), 3.0, 3.0)
    assert [(d.direction, d.previous, d.replicas) for _, d in got] == [("up", 1, 3)]  # ceil(1 * 5/2)
    assert "5.0 requests in flight per replica, over the target 2" in got[0][1].reason
    assert s.events[-1]["replicas"] == 3 and s.changes == 1


def test_up_never_passes_max_and_waits_again_after_each_change() -> None:
    s = Scaling(replicas=2, bounds=Bounds(1, 3))
    got = run(s, load(10.0, 10.0), 0.0, 20.0)
    assert [(t, d.replicas) for t, d in got] == [(3.0, 3)]  # then at max: nothing more


def test_latency_over_its_target_scales_up_too() -> None:
    targets = Targets(inflight=100.0, latency_ms=50.0, up_after=1.0, down_after=5.0)
    s = Scaling(replicas=1, bounds=Bounds(1, 5))
    got = run(s, load(0.5, p95=120.0), 0.0, 1.0, targets)
    assert [(d.replicas, "p95 latency 120 ms, over the target 50 ms" in d.reason) for _, d in got] == [(3, True)]


def test_quiet_scales_down_one_step_per_cool_down_to_min() -> None:
    s = Scaling(replicas=4, bounds=Bounds(2, 4))
    got = run(s, load(0.2, 0.1), 0.0, 30.0)
    assert [(t, d.direction, d.replicas) for t, d in got] == [(5.0, "down", 3), (10.5, "down", 2)]
    assert "under half the target 2" in got[0][1].reason


def test_no_traffic_while_gateways_report_is_quiet_but_no_reports_is_unknown() -> None:
    s = Scaling(replicas=3, bounds=Bounds(1, 3))
    assert run(s, None, 0.0, 30.0, reporting=False) == []  # nobody measures: nothing moves
    got = run(s, None, 30.0, 36.0, reporting=True)
    assert [(d.replicas, d.reason.startswith("no traffic")) for _, d in got] == [(2, True)]


def test_hysteresis_a_load_between_the_thresholds_moves_nothing() -> None:
    s = Scaling(replicas=2, bounds=Bounds(1, 4))
    assert run(s, load(1.5, 1.5), 0.0, 60.0) == []  # 0.75 of the target: neither over it nor under half
    # a dip below half that does not last the cool-down resets the clock
    assert run(s, load(0.1, 0.1), 60.0, 64.0) == []
    assert run(s, load(1.5, 1.5), 64.5, 65.0) == []
    assert run(s, load(0.1, 0.1), 65.5, 70.0) == []


def test_an_overload_that_does_not_last_scales_nothing() -> None:
    s = Scaling(replicas=1, bounds=Bounds(1, 4))
    for start in (0.0, 10.0, 20.0):
        assert run(s, load(9.0), start, start + 2.5) == []
        assert run(s, load(1.0), start + 3.0, start + 9.5) == []


def test_bounds_that_change_pull_the_replicas_in_at_once() -> None:
    s = Scaling(replicas=5, bounds=Bounds(1, 5))
    s.bounds = Bounds(1, 3)
    d = decide(s, load(1.0), True, FAST, 0.0)
    assert d is not None and (d.direction, d.replicas) == ("down", 3) and "outside" in d.reason


def test_bounds_and_targets_from_specs_and_annotations() -> None:
    assert Bounds.of({"minReplicas": 1, "maxReplicas": 3}) == Bounds(1, 3)
    assert Bounds.of({"minReplicas": 0, "maxReplicas": 2}) == Bounds(1, 2)  # no scaling to zero
    assert Bounds.of({"replicas": 2}) is None and Bounds.of({"minReplicas": 2, "maxReplicas": 2}) is None
    t = Targets.of({autoscale.TARGET_INFLIGHT: "3", autoscale.TARGET_LATENCY: "250ms",
                    autoscale.UP_AFTER: "2s", autoscale.DOWN_AFTER: "30"})
    assert (t.inflight, t.latency_ms, t.up_after, t.down_after, t.problems) == (3.0, 250.0, 2.0, 30.0, ())
    bad = Targets.of({autoscale.TARGET_INFLIGHT: "lots", autoscale.DOWN_AFTER: "-1"})
    assert bad.inflight == autoscale.DEFAULT_TARGET_INFLIGHT and bad.down_after == autoscale.DEFAULT_DOWN_AFTER
    assert len(bad.problems) == 2 and "berth.io/autoscale-target-inflight: 'lots'" in bad.problems[0]


def test_the_first_state_comes_from_the_stored_status_else_the_spec() -> None:
    b = Bounds(1, 4)
    assert autoscale.start({"replicas": 2}, b, None).replicas == 2
    assert autoscale.start({"replicas": 9}, b, None).replicas == 4
    assert autoscale.start({}, b, None).replicas == 1
    stored = {"replicas": 3, "events": [{"time": "x", "direction": "up", "previous": 1, "replicas": 3,
                                         "reason": "busy"}]}
    s = autoscale.start({"replicas": 1}, b, stored)
    assert s.replicas == 3 and len(s.events) == 1


def test_events_kept_are_the_last_ones() -> None:
    s = Scaling(replicas=1, bounds=Bounds(1, 100))
    for i in range(autoscale.MAX_EVENTS + 5):
        s.record(autoscale.Decision("up", s.replicas, s.replicas + 1, f"step {i}"), "now")
    assert len(s.events) == autoscale.MAX_EVENTS and s.events[-1]["reason"] == f"step {autoscale.MAX_EVENTS + 4}"


# --- the autoscaler over Model documents and the usage book ------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def model(name: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "Model", "metadata": {"name": name, "namespace": "default", "annotations": {
        autoscale.TARGET_INFLIGHT: "2", autoscale.UP_AFTER: "1", autoscale.DOWN_AFTER: "2"}},
        "spec": {"storageUri": "file:///m", **spec}}


def test_the_autoscaler_decides_from_reports_and_adjusts_what_is_planned() -> None:
    clock = Clock()
    book = UsageBook(clock)
    marked: list[str] = []
    scaler = Autoscaler(MemoryStore(), book, marked.append, clock=clock, wall=lambda: 0.0)
    docs = [model("busy", minReplicas=1, maxReplicas=3), model("fixed", replicas=2)]
    assert scaler.tick(docs) == {"default"}  # the first sight of an autoscaled model
    assert set(scaler.models) == {("default", "busy")}

    def report(inflight: float) -> None:
        book.record("gw", UsageReport(window_s=1.0, models=[ModelUsage(
            namespace="default", name="busy", requests=10, idle_s=0.1, inflight_mean=inflight,
            replicas=[ReplicaLoad(address="a", inflight_mean=inflight, inflight_max=int(inflight))])]))

    report(5.0)
    assert scaler.tick(docs) == set()  # over the target, not for long enough
    clock.now += 1.0
    report(5.0)
    assert scaler.tick(docs) == {"default"}
    assert scaler.models[("default", "busy")].replicas == 3
    assert scaler.decisions[("default", "Model", "up")] == 1
    planned = {d["metadata"]["name"]: d for d in scaler.adjust("default", docs)}
    assert planned["busy"]["spec"]["replicas"] == 3 and "replicas" not in docs[0]["spec"]  # the spec is untouched
    assert planned["fixed"] is docs[1]
    st: dict[str, Any] = {}
    scaler.amend(st, "default", "busy")  # type: ignore[arg-type]
    assert st["autoscaling"]["replicas"] == 3 and st["autoscaling"]["events"][0]["direction"] == "up"
    for _ in range(6):  # quiet: one step down per 2 s
        clock.now += 1.0
        report(0.0)
        scaler.tick(docs)
    assert scaler.models[("default", "busy")].replicas == 1
    assert scaler.decisions[("default", "Model", "down")] == 2
    assert scaler.tick([docs[1]]) == {"default"}  # no longer autoscaled (or deleted): forgotten
    assert scaler.models == {}


def test_bad_annotations_are_named_in_the_status() -> None:
    scaler = Autoscaler(MemoryStore(), UsageBook(Clock()), lambda ns: None, clock=Clock())
    doc = model("m", maxReplicas=2)
    doc["metadata"]["annotations"][autoscale.TARGET_LATENCY] = "fast"
    scaler.tick([doc])
    st: dict[str, Any] = {}
    scaler.amend(st, "default", "m")  # type: ignore[arg-type]
    assert st["autoscaling"]["problems"] == [
        "annotation berth.io/autoscale-target-latency-ms: 'fast' is not a number in [0.01, 3.6e+06]; using no target"]


@pytest.mark.parametrize("spec", [{"maxReplicas": 1}, {"minReplicas": 3, "maxReplicas": 2}, {}])
def test_models_without_room_to_scale_are_not_autoscaled(spec: dict[str, Any]) -> None:
    scaler = Autoscaler(MemoryStore(), UsageBook(Clock()), lambda ns: None, clock=Clock())
    assert scaler.tick([model("m", **spec)]) == set() and scaler.models == {}


# --- servers: room for models ---------------------------------------------------------------------------

def plan_of(*models: tuple[str, PlacementState, list[tuple[str, int]], list[tuple[str, str]]]) -> Plan:
    """A plan from (name, state, placed replicas, rejections (code, server))."""
    return Plan(namespace="default", models={
        name: ModelPlan(name=name, desired=1, replicas=tuple(ReplicaRef(s, i) for s, i in placed), state=state,
                        message="", reasons=tuple(Rejection(code, "no", server=server) for code, server in rejected))
        for name, state, placed, rejected in models})


def test_room_wanted_counts_models_only_more_replicas_would_place() -> None:
    plan = plan_of(("a", "Scheduled", [("pool", 0)], []),
                   ("b", "ScheduleFailed", [], [(INSUFFICIENT_MEMORY, "pool")]),
                   ("c", "PartiallyScheduled", [("pool", 0)], [(NOT_ENOUGH_REPLICAS, "pool")]),
                   ("d", "ScheduleFailed", [], [(INSUFFICIENT_MEMORY, "pool"), (MISSING_CAPABILITIES, "pool")]),
                   ("e", "ScheduleFailed", [], [(INSUFFICIENT_MEMORY, "other")]))
    assert autoscale.room_wanted(plan, "pool") == (["b", "c"], False)
    assert autoscale.room_wanted(plan_of(("b", "ScheduleFailed", [], [(REPLICA_NOT_READY, "pool")])), "pool") \
        == ([], True)
    assert autoscale.room_wanted(None, "pool") == ([], True)
    assert autoscale.holds_models(plan, "pool", 0) and not autoscale.holds_models(plan, "pool", 1)


def test_a_server_grows_one_replica_while_models_wait_and_shrinks_when_its_last_is_empty() -> None:
    s = Scaling(replicas=1, bounds=Bounds(1, 3))
    assert autoscale.decide_server(s, ["b"], False, False, FAST, 0.0) is None
    d = autoscale.decide_server(s, ["b"], False, False, FAST, 3.0)
    assert d is not None and (d.direction, d.replicas) == ("up", 2) and "lack of room (b)" in d.reason
    s.record(d, "t")
    assert autoscale.decide_server(s, ["b"], True, False, FAST, 4.0) is None  # the new replica is starting
    assert autoscale.decide_server(s, [], False, False, FAST, 10.0) is None  # its last replica holds a model
    assert autoscale.decide_server(s, [], False, True, FAST, 11.0) is None
    d = autoscale.decide_server(s, [], False, True, FAST, 16.0)
    assert d is not None and (d.direction, d.replicas) == ("down", 1) and "replica 1 holds no model" in d.reason


def test_the_autoscaler_scales_servers_from_the_plan_and_wakes_the_provisioner(tmp_path: Any) -> None:
    from berth.control.provisioner import LocalProvisioner

    clock = Clock()
    store = MemoryStore()
    woken: list[str] = []
    scaler = Autoscaler(store, UsageBook(clock), lambda ns: None, clock=clock)
    scaler.on_server_change = woken.append
    server = {"kind": "Server", "metadata": {"name": "pool", "namespace": "default", "annotations": {
        autoscale.UP_AFTER: "1", autoscale.DOWN_AFTER: "1"}}, "spec": {"minReplicas": 1, "maxReplicas": 2}}
    scaler.plans = {"default": plan_of(("b", "ScheduleFailed", [], [(INSUFFICIENT_MEMORY, "pool")]))}
    scaler.tick([], [server])
    clock.now += 1.0
    assert scaler.tick([], [server]) == {"default"} and scaler.server_replicas("default", "pool") == 2
    assert woken == ["default", "default"] and scaler.decisions[("default", "Server", "up")] == 1
    assert scaler.adjust("default", [server])[0]["spec"]["replicas"] == 2
    provisioner = LocalProvisioner(store, "127.0.0.1", 1, tmp_path, replica_memory=1 << 30)
    store.apply({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
                 "metadata": {"name": "pool", "namespace": "default"},
                 "spec": {"serverConfig": "mlserver", "minReplicas": 1, "maxReplicas": 2}})
    assert sorted(provisioner.desired()) == [("default", "pool", 0)]  # spec: minReplicas
    provisioner.replicas_of = scaler.server_replicas
    assert sorted(provisioner.desired()) == [("default", "pool", 0), ("default", "pool", 1)]
    st: dict[str, Any] = {}
    scaler.amend_server(st, "default", "pool")  # type: ignore[arg-type]
    assert st["autoscaling"]["events"][0]["reason"].startswith("1 model(s) cannot be placed for lack of room")


def test_the_loop_follows_the_store_without_listing_it_each_second() -> None:
    import asyncio

    store = MemoryStore()
    marked: list[str] = []
    scaler = Autoscaler(store, UsageBook(Clock()), marked.append)
    doc = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": {"name": "m", "namespace": "t"},
           "spec": {"storageUri": "file:///m", "minReplicas": 1, "maxReplicas": 3}}
    store.apply(doc)
    lists: list[str | None] = []
    real_list = store.list

    def counted(kind: str | None = None, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        lists.append(kind)
        return real_list(kind, *args, **kwargs)

    store.list = counted  # type: ignore[method-assign]

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(scaler.run(stop, interval=0.02))
        await asyncio.sleep(0.1)
        assert ("t", "m") in scaler.models and marked == ["t"]
        store.apply({**doc, "spec": {"storageUri": "file:///m", "replicas": 2}})  # no longer autoscaled
        await asyncio.sleep(0.1)
        assert scaler.models == {} and marked == ["t", "t"]
        store.apply({**doc, "metadata": {"name": "n", "namespace": "u"}})
        await asyncio.sleep(0.1)
        assert ("u", "n") in scaler.models
        stop.set()
        await task

    asyncio.run(main())
    assert lists == ["Model", "Server"]  # one listing at start; events since
