"""The scheduler's fast paths (issue 12, 100,000 models) against the straightforward scan, and the pieces
they rest on: the one-replica path fused in ``Placer.place_all``, the placements compared at C speed,
the collector paused during a plan, and ``SnapshotCache`` (Model documents validated once)."""

from __future__ import annotations

import copy
import dataclasses
import gc
import random
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berth.errors import InvalidInput, InvalidManifest
from berth.scheduler import collector, plan
from berth.scheduler.basis import Basis, Placements
from berth.scheduler.build import SnapshotCache, model_want, snapshot_for
from berth.scheduler.collector import collector_paused
from berth.scheduler.plan import plan_by_scan
from berth.scheduler.replan import _same_placements
from berth.scheduler.snapshot import ModelPlan, ModelWant, Plan, ReplicaInfo, ReplicaRef, ServerInfo, Snapshot

NS = "ns"
MiB = 2**20
GiB = 2**30
CAPS = ("sklearn", "xgboost", "mlflow", "torch")
PROPS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def fleets(draw: st.DrawFn) -> Snapshot:
    """Many servers sharing capabilities, replicas of equal sizes (ties on free memory, broken by index),
    mostly one-replica models with nothing assigned: the fast path carries most of the plan."""
    servers: list[ServerInfo] = []
    replicas: list[ReplicaInfo] = []
    sizes = draw(st.lists(st.sampled_from([256, 512, 1024]), min_size=1, max_size=2))
    for i in range(draw(st.integers(1, 16))):
        name = f"s{i:02d}"
        caps = tuple(draw(st.lists(st.sampled_from(CAPS), unique=True, min_size=1, max_size=4)))
        servers.append(ServerInfo(name, NS, caps, 3))
        for index in range(draw(st.integers(0, 3))):
            replicas.append(ReplicaInfo(name, NS, index, memory=draw(st.sampled_from(sizes)) * MiB,
                                        overcommit_percent=draw(st.sampled_from([0, 10])),
                                        ready=draw(st.integers(0, 11)) > 0))
    names = [s.name for s in servers]
    models = [ModelWant(f"m{i:03d}", NS, tuple(draw(st.lists(st.sampled_from(CAPS), unique=True, max_size=2))),
                        memory=draw(st.sampled_from([0, 32, 64, 128, 200, 256, 300])) * MiB,
                        server=None if draw(st.integers(0, 9)) else draw(st.sampled_from(names)),
                        replicas=1 if draw(st.integers(0, 4)) else draw(st.integers(0, 3)),
                        min_replicas=None if draw(st.integers(0, 4)) else 1,
                        deleting=draw(st.integers(0, 29)) == 0)
              for i in range(draw(st.integers(0, 80)))]
    return Snapshot(NS, tuple(models), tuple(servers), tuple(replicas), {},
                    draw(st.sampled_from(["binpack", "spread"])))


@PROPS
@given(fleets())
def test_the_fast_paths_plan_as_the_scan(snap: Snapshot) -> None:
    fast, scanned = plan(snap), plan_by_scan(snap)
    assert fast == scanned
    assert list(fast.models) == list(scanned.models)
    assert fast.basis.used == scanned.basis.used
    for name, mp in fast.models.items():  # the same messages and reasons, word for word
        assert (mp.message, mp.reasons) == (scanned.models[name].message, scanned.models[name].reasons)


@PROPS
@given(fleets(), st.randoms(use_true_random=False))
def test_replans_from_rebuilt_or_reordered_assignments_equal_the_scan(snap: Snapshot, rng: random.Random) -> None:
    """The control plane hands back placements as new tuples of new ReplicaRefs, in its own order; a
    replica goes away, models come and go: every re-plan equals a full scan of its input."""
    current = plan(snap)
    for step in range(3):
        placed = [(n, tuple(ReplicaRef(r.server, r.index) for r in mp.replicas))
                  for n, mp in current.models.items() if mp.replicas]
        if step == 1:
            rng.shuffle(placed)
        replicas = list(snap.replicas)
        if replicas and step != 2:
            replicas.pop(rng.randrange(len(replicas)))
        models = list(snap.models)
        if models and step == 2:
            models.pop(rng.randrange(len(models)))
            models.append(ModelWant("zz-new", NS, ("sklearn",), memory=64 * MiB))
        snap = dataclasses.replace(snap, models=tuple(models), replicas=tuple(replicas), assignments=dict(placed))
        quick = plan(snap, previous=current)
        assert quick == plan_by_scan(snap)
        assert list(quick.models) == sorted(quick.models)
        _check_unsettled(quick.basis)
        current = quick


def test_placements_compare_as_dict_equality() -> None:
    a, b = ReplicaRef("s", 0), ReplicaRef("s", 1)
    placements = {"m1": (a,), "m2": (a, b)}
    assert _same_placements(placements, placements)
    assert _same_placements({"m1": (a,), "m2": (a, b)}, placements)
    assert _same_placements({"m1": (ReplicaRef("s", 0),), "m2": (ReplicaRef("s", 0), b)}, placements)
    assert _same_placements({"m2": (a, b), "m1": (a,)}, placements)  # another order: still equal
    assert not _same_placements({"m1": (a,), "m2": (b, a)}, placements)  # preference order matters
    assert not _same_placements({"m1": (a,)}, placements)
    assert not _same_placements({"m1": (a,), "m3": (a, b)}, placements)
    assert not _same_placements({"m1": (b,), "m2": (a, b)}, placements)


def test_plans_and_refs_stay_immutable_plain_data() -> None:
    ref = ReplicaRef("mlserver", 2)
    assert str(ref) == "mlserver/2" and ref == ("mlserver", 2) and hash(ref) == hash(("mlserver", 2))
    assert sorted([ReplicaRef("b", 0), ReplicaRef("a", 3), ReplicaRef("a", 1)])[0] == ReplicaRef("a", 1)
    mp = ModelPlan("m", 1, (ref,), "Scheduled", "scheduled on mlserver replica 2")
    assert mp.server == "mlserver" and mp.reasons == ()
    with pytest.raises(AttributeError):
        mp.state = "ScheduleFailed"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ref.index = 3  # type: ignore[misc]


def test_a_plan_pauses_the_collector_and_restores_it() -> None:
    snap = Snapshot(NS, (ModelWant("m", NS, memory=MiB),), (ServerInfo("s", NS, ("sklearn",)),),
                    (ReplicaInfo("s", NS, 0, memory=64 * MiB, ready=True),))
    assert gc.isenabled()
    seen: list[bool] = []
    with collector_paused():
        seen.append(gc.isenabled())
        plan(snap)  # nested: the outer pause holds
        seen.append(gc.isenabled())
    assert seen == [False, False] and gc.isenabled()
    twice = Snapshot(NS, (ModelWant("m", NS), ModelWant("m", NS)))
    with pytest.raises(InvalidInput):
        plan(twice)
    assert gc.isenabled()  # restored when the plan fails too
    gc.disable()
    try:
        plan(snap)
        assert not gc.isenabled()  # a collector the caller had disabled stays disabled
    finally:
        gc.enable()


def test_overlapping_plans_in_threads_resume_the_collector_once_all_end() -> None:
    inside, release = threading.Barrier(3), threading.Event()

    def hold() -> None:
        with collector_paused():
            inside.wait(timeout=10)
            release.wait(timeout=10)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait(timeout=10)
    assert not gc.isenabled()
    release.set()
    for t in threads:
        t.join(timeout=10)
    assert gc.isenabled()


def _many(n: int) -> Snapshot:
    servers = tuple(ServerInfo(f"s{i:02d}", NS, ("sklearn",)) for i in range(10))
    replicas = tuple(ReplicaInfo(s.name, NS, r, memory=64 * GiB, ready=True) for s in servers for r in range(4))
    return Snapshot(NS, tuple(ModelWant(f"m{i:05d}", NS, memory=MiB) for i in range(n)), servers, replicas)


def test_a_large_plan_ends_by_promoting_its_objects_instead_of_a_young_collection() -> None:
    snap = _many(20_000)
    gc.collect()
    assert gc.get_freeze_count() == 0
    before = collector.promotions
    kept = plan(snap)
    # nothing frozen: the plan's objects were moved to the oldest generation (no young collection walks them)
    assert collector.promotions == before + 1
    assert gc.get_count()[0] < collector.PROMOTE_AT and gc.get_freeze_count() == 0
    small = plan(Snapshot(NS, (ModelWant("m", NS, memory=MiB),), snap.servers, snap.replicas))
    assert collector.promotions == before + 1 and small.models["m"].state == "Scheduled"  # too few to bother
    gc.freeze()  # a process that froze its start-up objects and never sweeps them: no promotion
    try:
        frozen = gc.get_freeze_count()
        plan(snap)
        assert collector.promotions == before + 1 and gc.get_freeze_count() == frozen
        collector.frozen_objects_are_swept(True)  # as the control plane's GC policy says while it runs
        try:
            again = plan(snap)  # (kept: a freed object leaves the frozen ones)
            assert collector.promotions == before + 2 and gc.get_freeze_count() > frozen + 20_000
            del again
        finally:
            collector.frozen_objects_are_swept(False)
    finally:
        gc.unfreeze()
    assert gc.isenabled() and len(kept.models) == 20_000


def test_plans_and_replans_make_no_cyclic_garbage() -> None:
    # what collector.py's promotion relies on: a plan's objects are freed by reference counting alone
    snap = _many(3_000)
    first = plan(snap)
    after = dataclasses.replace(snap, replicas=snap.replicas[1:],
                                assignments={n: mp.replicas for n, mp in first.models.items() if mp.replicas})
    gc.collect()
    for _ in range(3):
        second = plan(after, previous=first)
        third = plan(snap, previous=second)
        assert second.basis is not None and third.models == first.models
        del second, third
    assert gc.collect() == 0


def _doc(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": "1"},
            "spec": {"storageUri": f"s3://b/{name}", "requirements": ["sklearn"], "memory": "64Mi", **spec},
            "status": {"state": "ModelAvailable"}}


def _models(cache: SnapshotCache, docs: list[dict[str, Any]]) -> tuple[ModelWant, ...]:
    return snapshot_for(NS, copy.deepcopy(docs), (), cache=cache).models  # a fresh read, as every pass


def test_snapshot_cache_validates_only_new_and_changed_models() -> None:
    docs = [_doc(f"m{i}") for i in range(5)]
    cache = SnapshotCache()
    first = _models(cache, docs)
    assert first == tuple(model_want(d) for d in docs) and cache.validated == 5
    again = _models(cache, docs)
    assert again is first and cache.validated == 5  # nothing changed: the very tuple, nothing validated
    docs[1]["status"] = {"state": "ModelProgressing"}
    docs[1]["metadata"]["resourceVersion"] = "2"
    assert _models(cache, docs) is first and cache.validated == 5  # a status-only write
    docs[2]["spec"]["memory"] = "128Mi"
    changed = _models(cache, docs)
    assert cache.validated == 6 and changed[2].memory == 128 * MiB
    assert all(changed[i] is first[i] for i in (0, 1, 3, 4))
    docs[3]["metadata"]["deletionTimestamp"] = "2026-11-30T16:00:00Z"
    assert _models(cache, docs)[3].deleting and cache.validated == 7
    del docs[0]
    assert [m.name for m in _models(cache, docs)] == ["m1", "m2", "m3", "m4"]
    assert cache.validated == 7


def test_snapshot_cache_is_not_fooled_by_a_caller_editing_documents_afterwards() -> None:
    """Hostile caller: the documents it handed over are changed in place (same resourceVersion)."""
    docs = [_doc("m0")]
    cache = SnapshotCache()
    first = snapshot_for(NS, docs, (), cache=cache).models
    docs[0]["spec"]["requirements"].append("torch")  # the cache kept its own copy of the spec
    assert snapshot_for(NS, docs, (), cache=cache).models[0].requirements == ("sklearn", "torch")
    assert first[0].requirements == ("sklearn",)


def test_snapshot_cache_never_keeps_an_invalid_model() -> None:
    cache = SnapshotCache()
    docs = [_doc("m0"), _doc("bad", replicas="three")]
    for _ in range(2):  # refused every time, with the model named
        with pytest.raises(InvalidManifest, match="bad"):
            _models(cache, docs)
    docs[1]["spec"]["replicas"] = 2
    assert _models(cache, docs)[1].replicas == 2


def test_snapshot_cache_keeps_namespaces_apart() -> None:
    cache = SnapshotCache()
    here = snapshot_for(NS, [_doc("m0")], (), cache=cache).models
    other = _doc("m0", memory="1Gi")
    other["metadata"]["namespace"] = "other"
    there = snapshot_for("other", [other], (), cache=cache).models
    assert (here[0].namespace, here[0].memory) == (NS, 64 * MiB)
    assert (there[0].namespace, there[0].memory) == ("other", 1024 * MiB)
    assert snapshot_for(NS, [_doc("m0")], (), cache=cache).models is here


def test_a_replan_refuses_a_replica_listed_twice_even_beside_its_previous_report() -> None:
    """Unchanged reports are found by identity; a second report for the same replica is still refused."""
    infos = tuple(ReplicaInfo("s", NS, i, ("sklearn",), memory=64 * MiB, ready=True) for i in range(3))
    snap = Snapshot(NS, (ModelWant("m", NS, ("sklearn",), memory=MiB),), (ServerInfo("s", NS, ("sklearn",), 3),),
                    infos)
    first = plan(snap)
    for extra in (dataclasses.replace(infos[1], memory=32 * MiB), infos[1]):
        again = dataclasses.replace(snap, replicas=(*infos, extra))
        with pytest.raises(InvalidInput, match="s/1 twice"):
            plan(again, previous=first)
    moved = dataclasses.replace(snap, replicas=(infos[0], dataclasses.replace(infos[1], memory=MiB), infos[2]))
    assert plan(moved, previous=first) == plan_by_scan(moved)


def test_models_no_server_can_take_keep_their_plan_when_a_change_leaves_their_reasons_alone() -> None:
    infos = tuple(ReplicaInfo("s", NS, i, ("sklearn",), memory=64 * MiB, ready=True) for i in range(2))
    models = (ModelWant("ok", NS, ("sklearn",), memory=MiB), ModelWant("torch-1", NS, ("torch",)),
              ModelWant("torch-2", NS, ("torch",)))
    snap = Snapshot(NS, models, (ServerInfo("s", NS, ("sklearn",), 2),), infos)
    first = plan(snap)
    assert first.models["torch-1"].state == "ScheduleFailed"
    placed = {n: mp.replicas for n, mp in first.models.items() if mp.replicas}
    # a model loaded on replica 0: its report changed, the reasons of the torch models did not
    loaded = dataclasses.replace(snap, replicas=(dataclasses.replace(infos[0], loaded=("ok",)), infos[1]),
                                 assignments=placed)
    quick = plan(loaded, previous=first)
    assert quick == plan_by_scan(loaded)
    assert quick.models["torch-1"] is first.models["torch-1"] and quick.models["torch-2"] is first.models["torch-2"]
    # replica 1 went away: the reasons list one replica fewer, so the plans are made again
    fewer = dataclasses.replace(snap, replicas=infos[:1], assignments=placed)
    again = plan(fewer, previous=first)
    assert again == plan_by_scan(fewer)
    assert again.models["torch-1"] != first.models["torch-1"]


def _next(snap: Snapshot, before: Plan, rng: random.Random) -> Snapshot:
    """The control plane's next snapshot: the placements as assignments, and one or two replicas lost,
    turned unready or shrunk (a server's other replicas unchanged: the re-plan rebuilds those alone)."""
    replicas = list(snap.replicas)
    for _ in range(rng.randint(1, 2)):
        if not replicas:
            break
        i = rng.randrange(len(replicas))
        what = rng.choice(["lose", "lose", "unready", "shrink"])
        if what == "lose":
            replicas.pop(i)
        elif what == "unready":
            replicas[i] = dataclasses.replace(replicas[i], ready=not replicas[i].ready)
        else:
            replicas[i] = dataclasses.replace(replicas[i], memory=replicas[i].memory // 2)
    assignments = {n: mp.replicas for n, mp in before.models.items() if mp.replicas}
    return dataclasses.replace(snap, replicas=tuple(replicas), assignments=assignments)


def _check_unsettled(basis: Basis) -> None:
    """A basis's models not fully placed, as re-plans keep them up to date, equal them found from scratch:
    those with replicas, and those without grouped by (their reasons object, spec.server, requirements)."""
    plans, wants = basis.plans, basis.wants
    unsettled = [n for n, mp in plans.items() if mp.state in ("ScheduleFailed", "PartiallyScheduled")]
    assert basis.unsettled_placed == {n for n in unsettled if plans[n].replicas}
    groups: dict[tuple[int, str | None, tuple[str, ...]], set[str]] = {}
    for n in unsettled:
        if not plans[n].replicas:
            groups.setdefault((id(plans[n].reasons), wants[n].server, wants[n].requirements), set()).add(n)
    assert {k: set(v[1]) for k, v in basis.failed.items()} == groups
    assert all(id(reasons) == key[0] for key, (reasons, _) in basis.failed.items())


@PROPS
@given(fleets(), st.randoms(use_true_random=False))
def test_replans_along_a_chain_and_back_to_older_plans_equal_the_scan(snap: Snapshot, rng: random.Random) -> None:
    """Re-plans share state along a chain (Slots of unchanged replicas, the placements dict rerooted to the
    plan re-planned from, fit trees carried over): re-planning from any earlier plan of the chain, again and
    again, in any order, must still equal the scan."""
    chain = [(snap, plan(snap))]
    for _ in range(4):
        base_snap, base = chain[rng.randrange(len(chain))] if rng.random() < 0.4 else chain[-1]
        nxt = _next(base_snap, base, rng)
        quick = plan(nxt, previous=base)
        again = plan(nxt, previous=base)  # the same previous plan twice: nothing of it was used up
        scanned = plan_by_scan(nxt)
        assert quick == scanned and again == scanned
        assert list(quick.models) == list(scanned.models)
        assert quick.basis.used == scanned.basis.used and quick.basis.residents == scanned.basis.residents
        _check_unsettled(quick.basis)
        _check_unsettled(again.basis)
        for name, mp in quick.models.items():
            assert (mp.message, mp.reasons) == (scanned.models[name].message, scanned.models[name].reasons)
        chain.append((nxt, quick))


def test_placements_versions_read_the_same_in_any_order() -> None:
    """``basis.Placements``: versions of one shared dict; each reads as its own placements whichever was
    read last (the dict is rerooted to the one read), and a removed model is absent, not empty."""
    a, b = (ReplicaRef("s", 0),), (ReplicaRef("s", 1),)
    root = Placements({"m1": a, "m2": b})
    v1 = root.then({"m3": a})
    v2 = v1.then({"m1": (), "m2": a})
    v3 = root.then({"m2": ()})
    want = {root: {"m1": a, "m2": b}, v1: {"m1": a, "m2": b, "m3": a}, v2: {"m2": a, "m3": a}, v3: {"m1": a}}
    order = [v2, root, v3, v1, v2, v3, root, v1, v1, v2]
    for version in order:
        assert dict(version.get()) == want[version]
    assert all(dict(v.get()) == w for v, w in reversed(list(want.items())))
