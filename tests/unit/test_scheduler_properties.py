"""Invariants of the scheduler over generated namespaces (hypothesis)."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berth.scheduler import plan
from berth.scheduler.snapshot import ModelWant, Plan, ReplicaInfo, ReplicaRef, ServerInfo, Snapshot

NS = "ns"
MiB = 2**20
CAPS = ("sklearn", "xgboost", "mlflow", "torch")
SERVER_NAMES = ("a", "b", "c")
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

caps = st.lists(st.sampled_from(CAPS), unique=True, max_size=4).map(tuple)
requirements = st.lists(st.sampled_from(CAPS), unique=True, max_size=2).map(tuple)
memory = st.sampled_from([600 * MiB, 0, 100 * MiB, 600 * MiB, 1024 * MiB, 600 * MiB, 3072 * MiB])


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    servers: list[ServerInfo] = []
    replicas: list[ReplicaInfo] = []
    for name in draw(st.lists(st.sampled_from(SERVER_NAMES), unique=True, max_size=3)):
        desired = draw(st.integers(0, 3))
        servers.append(ServerInfo(name, NS, draw(caps), desired, deleting=draw(st.integers(0, 9)) == 0))
    for name in [s.name for s in servers] + draw(st.lists(st.just("by-hand"), max_size=1)):
        for index in range(4):
            if draw(st.integers(0, 3)) == 0:
                continue
            replicas.append(ReplicaInfo(
                name, NS, index, capabilities=draw(st.one_of(st.just(()), caps)),
                memory=draw(st.sampled_from([1024 * MiB, 0, 512 * MiB, 1024 * MiB, 2048 * MiB])),
                overcommit_percent=draw(st.sampled_from([0, 10, 50])),
                connected=draw(st.integers(0, 7)) > 0, ready=draw(st.integers(0, 5)) > 0,
                draining=draw(st.integers(0, 7)) == 0, address=f"127.0.0.1:{9000 + index}",
                last_error="connection refused", error_since="14:00:00"))
    servers.append(ServerInfo("a", "elsewhere", CAPS))  # another namespace's: never a candidate
    replicas.append(ReplicaInfo("a", "elsewhere", 0, CAPS, memory=1 << 40, ready=True))
    pins = st.sampled_from([None, None, None, "a", "b", "zz", f"{NS}/a", "elsewhere/a", "gone/x"])
    models: list[ModelWant] = []
    for i in range(draw(st.integers(0, 7))):
        models.append(ModelWant(
            f"m{i}", NS, requirements=draw(requirements),
            memory=draw(memory), server=draw(pins), replicas=draw(st.integers(0, 3)),
            min_replicas=draw(st.one_of(st.none(), st.integers(0, 3))),
            deleting=draw(st.integers(0, 9)) == 0))
    refs = [r.ref for r in replicas if r.namespace == NS] + [ReplicaRef("zz", 0)]
    assignments = {m.name: tuple(draw(st.lists(st.sampled_from(refs), max_size=3)))
                   for m in models if refs and draw(st.booleans())}
    return Snapshot(NS, tuple(models), tuple(servers), tuple(replicas), assignments,
                    draw(st.sampled_from(["binpack", "spread"])), {"elsewhere": ("a",)})


def _usable(snap: Snapshot) -> dict[ReplicaRef, ReplicaInfo]:
    deleting = {s.name for s in snap.servers if s.namespace == NS and s.deleting}
    return {r.ref: r for r in snap.replicas if r.namespace == NS and r.connected and r.ready
            and not r.draining and r.server not in deleting}


def _caps_of(snap: Snapshot, rep: ReplicaInfo) -> set[str]:
    if rep.capabilities:
        return set(rep.capabilities)
    declared = [s for s in snap.servers if s.namespace == NS and s.name == rep.server]
    if declared:
        return set(declared[0].capabilities)
    return set(min((r for r in snap.replicas if r.namespace == NS and r.server == rep.server),
                   key=lambda r: r.index).capabilities)


def check_invariants(snap: Snapshot, result: Plan) -> None:
    usable = _usable(snap)
    wants = {m.name: m for m in snap.models}
    assert set(result.models) == set(wants)
    load: dict[ReplicaRef, int] = {}
    for name, mp in result.models.items():
        want = wants[name]
        assert len(set(mp.replicas)) == len(mp.replicas) <= max(want.replicas, 0)
        assert len({r.server for r in mp.replicas}) <= 1
        for ref in mp.replicas:
            assert ref in usable, f"{name} on {ref}, not a usable replica of {NS}"
            assert set(want.requirements) <= _caps_of(snap, usable[ref])
            load[ref] = load.get(ref, 0) + want.memory
        if mp.state == "Scheduled":
            assert len(mp.replicas) == (0 if want.deleting else want.replicas) and not mp.reasons
        elif mp.state == "PartiallyScheduled":
            assert want.min_replicas is not None and 0 < len(mp.replicas) < want.replicas
        elif mp.state == "Deleting":
            assert want.deleting and mp.replicas == ()
        else:
            assert mp.reasons, f"{name} not placed and no reason given"
            assert mp.message.startswith("Failed to schedule model as no matching server")
        if mp.state in ("PartiallyScheduled", "ScheduleFailed"):
            assert mp.reasons and all(r.message and r.code for r in mp.reasons)
    for ref, used in load.items():
        assert used <= usable[ref].capacity, f"{ref} over capacity: {used} > {usable[ref].capacity}"
    assert {(r.server, r.index): n for r, n in load.items() if n} == \
        {k: n for k, n in result.basis.used.items() if n}


@PROPS
@given(snapshots())
def test_invariants_hold(snap: Snapshot) -> None:
    check_invariants(snap, plan(snap))


@PROPS
@given(snapshots(), st.randoms(use_true_random=False))
def test_same_input_same_plan_whatever_the_order(snap: Snapshot, rnd: random.Random) -> None:
    first = plan(snap)
    assert plan(snap) == first
    models, servers, replicas = list(snap.models), list(snap.servers), list(snap.replicas)
    rnd.shuffle(models)
    rnd.shuffle(servers)
    rnd.shuffle(replicas)
    shuffled = dataclasses.replace(snap, models=tuple(models), servers=tuple(servers),
                                   replicas=tuple(replicas))
    again = plan(shuffled)
    assert again == first
    assert list(again.models) == list(first.models)


@st.composite
def changes(draw: st.DrawFn, snap: Snapshot, before: Plan) -> Snapshot:
    """The next snapshot a control plane would hand in: placements as assignments, plus some changes."""
    models, replicas = list(snap.models), list(snap.replicas)
    assignments = {n: mp.replicas for n, mp in before.models.items() if mp.replicas}
    for _ in range(draw(st.integers(1, 4))):
        what = draw(st.sampled_from(["move", "drop", "unready", "shrink", "model", "move", "remove", "add"]))
        if what in ("drop", "unready", "shrink") and replicas:
            i = draw(st.integers(0, len(replicas) - 1))
            if what == "drop":
                replicas.pop(i)
            elif what == "unready":
                replicas[i] = dataclasses.replace(replicas[i], ready=not replicas[i].ready)
            else:
                replicas[i] = dataclasses.replace(replicas[i], memory=replicas[i].memory // 2)
        elif what in ("model", "remove") and models:
            i = draw(st.integers(0, len(models) - 1))
            if what == "remove":
                models.pop(i)
            else:
                models[i] = dataclasses.replace(models[i], memory=draw(memory),
                                                replicas=draw(st.integers(0, 3)))
        elif what == "add":
            taken = {m.name for m in models}
            name = next(f"new{i}" for i in range(len(taken) + 1) if f"new{i}" not in taken)
            models.append(ModelWant(name, NS, draw(caps), draw(memory), replicas=draw(st.integers(1, 2))))
        elif what == "move" and models and replicas:
            # often onto a replica that already holds models: they may no longer all fit there
            held = [r for mp in before.models.values() for r in mp.replicas]
            name = draw(st.sampled_from([m.name for m in models]))
            assignments[name] = (draw(st.sampled_from(held or [r.ref for r in replicas])),)
    return dataclasses.replace(snap, models=tuple(models), replicas=tuple(replicas), assignments=assignments)


@PROPS
@given(st.data())
def test_incremental_replan_equals_full_plan(data: st.DataObject) -> None:
    snap = data.draw(snapshots())
    current = plan(snap)
    for _ in range(3):
        snap = data.draw(changes(snap, current))
        quick, full = plan(snap, previous=current), plan(snap)
        assert quick == full
        assert list(quick.models) == list(full.models)
        assert quick.basis.used == full.basis.used and quick.basis.residents == full.basis.residents
        check_invariants(snap, quick)
        current = quick


def _fits_alone(snap: Snapshot, want: ModelWant) -> bool:
    """Oracle for one model alone: some allowed server has ``replicas`` usable, capable, roomy replicas."""
    usable = _usable(snap)
    names = {s.name for s in snap.servers if s.namespace == NS} | {r.server for r in usable.values()}
    pin = want.server
    if pin is not None and pin.startswith(f"{NS}/"):
        pin = pin.split("/", 1)[1]
    allowed = names if pin is None else ({pin} & names if "/" not in pin else set())
    for name in allowed:
        good = [r for r in usable.values() if r.server == name and set(want.requirements) <= _caps_of(snap, r)
                and r.capacity >= want.memory]
        if len(good) >= want.replicas:
            return True
    return False


@PROPS
@given(snapshots())
def test_a_lone_model_is_placed_exactly_when_some_server_can_take_it(snap: Snapshot) -> None:
    for want in snap.models:
        if want.deleting or want.replicas == 0:
            continue
        alone = dataclasses.replace(snap, models=(want,), assignments={})
        assert (plan(alone).models[want.name].state == "Scheduled") == _fits_alone(alone, want)
