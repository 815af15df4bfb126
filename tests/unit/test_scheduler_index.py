"""The fit index (berth.scheduler.index) against the straightforward scan it replaces (hypothesis).

``plan_by_scan`` tries every server in name order for every model, as the scheduler did before the
index; the indexed ``plan`` must give exactly the same Plan (placements, states, messages, reasons).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berth.scheduler import plan
from berth.scheduler.index import NONE, kth_free
from berth.scheduler.plan import plan_by_scan
from berth.scheduler.pool import Pool
from berth.scheduler.snapshot import ModelWant, ReplicaInfo, ServerInfo, Snapshot
from tests.unit.test_scheduler_properties import changes, check_invariants, snapshots

NS = "ns"
MiB = 2**20
CAPS = ("sklearn", "xgboost", "mlflow", "torch")
PROPS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def crowded(draw: st.DrawFn) -> Snapshot:
    """Many servers of few, small replicas and many models: servers fill up, so the index's bounds go
    loose, get tightened, and (with minReplicas and moves) memory is given back."""
    servers: list[ServerInfo] = []
    replicas: list[ReplicaInfo] = []
    for i in range(draw(st.integers(1, 12))):
        name = f"s{i:02d}"
        caps = tuple(draw(st.lists(st.sampled_from(CAPS), unique=True, min_size=1, max_size=4)))
        n = draw(st.integers(0, 4))
        servers.append(ServerInfo(name, NS, caps, n, deleting=draw(st.integers(0, 19)) == 0))
        for index in range(n):
            own = draw(st.one_of(st.just(()), st.lists(st.sampled_from(CAPS), unique=True, max_size=4)
                                 .map(tuple)))
            replicas.append(ReplicaInfo(name, NS, index, own,
                                        memory=draw(st.sampled_from([256, 512, 1024])) * MiB,
                                        overcommit_percent=draw(st.sampled_from([0, 10])),
                                        ready=draw(st.integers(0, 9)) > 0, draining=draw(st.integers(0, 19)) == 0))
    names = [s.name for s in servers]
    models = [ModelWant(f"m{i:03d}", NS, tuple(draw(st.lists(st.sampled_from(CAPS), unique=True, max_size=2))),
                        memory=draw(st.sampled_from([0, 64, 128, 200, 300, 600])) * MiB,
                        server=draw(st.one_of(st.none(), st.none(), st.none(), st.sampled_from(names or ["x"]))),
                        replicas=draw(st.integers(1, 4)), min_replicas=draw(st.one_of(st.none(), st.integers(1, 3))))
              for i in range(draw(st.integers(0, 40)))]
    refs = [r.ref for r in replicas]
    assignments = {m.name: tuple(draw(st.lists(st.sampled_from(refs), max_size=3)))
                   for m in models if refs and draw(st.integers(0, 3)) == 0}
    return Snapshot(NS, tuple(models), tuple(servers), tuple(replicas), assignments,
                    draw(st.sampled_from(["binpack", "spread"])))


@PROPS
@given(snapshots())
def test_indexed_plan_equals_the_scan(snap: Snapshot) -> None:
    indexed = plan(snap)
    assert indexed == plan_by_scan(snap)
    assert indexed.basis.used == plan_by_scan(snap).basis.used


@PROPS
@given(crowded())
def test_indexed_plan_equals_the_scan_when_servers_fill_up(snap: Snapshot) -> None:
    indexed, scanned = plan(snap), plan_by_scan(snap)
    assert indexed == scanned
    assert list(indexed.models) == list(scanned.models)
    assert indexed.basis.used == scanned.basis.used
    check_invariants(snap, indexed)


@PROPS
@given(st.data())
def test_incremental_replan_equals_the_scan(data: st.DataObject) -> None:
    snap = data.draw(crowded())
    current = plan(snap)
    for _ in range(3):
        snap = data.draw(changes(snap, current))
        quick = plan(snap, previous=current)
        assert quick == plan_by_scan(snap)
        current = quick


@PROPS
@given(crowded(), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40), st.sampled_from([0, 64, 300])
                                     .map(lambda m: m * MiB), st.booleans()), max_size=60))
def test_fit_tree_answers_as_a_scan_while_memory_moves(snap: Snapshot, steps: list[tuple[int, int, int, bool]]
                                                      ) -> None:
    """Random takes and give-backs; after each, every (k, memory) question gets the scan's answer."""
    pool = Pool(snap)
    reqs = frozenset[str]()
    cands = pool.candidates(reqs)
    slots = [s for name in cands.names for s in cands.by_server[name]]
    for k_minus_1, which, memory, give in steps:
        k = k_minus_1 + 1
        if slots:
            slot = slots[which % len(slots)]
            if give:
                pool.give_back([slot], memory)
            else:
                pool.take([slot], memory)
        for ask in (0, 64 * MiB, 300 * MiB, 900 * MiB):
            expected = None
            for name in cands.names:
                got = [s for s in cands.by_server[name] if s.capacity - s.used >= ask]
                if len(got) >= k:
                    expected = (name, got)
                    break
            assert cands.tree(k).first_fit(ask) == expected
    for k, tree in cands.trees.items():  # bounds stay upper bounds of the truth
        for i, name in enumerate(tree.names):
            assert tree.bounds[tree.size + i] >= kth_free(cands.by_server[name], k)
        assert all(b == NONE for b in tree.bounds[tree.size + len(tree.names):])


def test_a_thousand_servers_fill_in_name_order() -> None:
    """Binpack over many servers: each model lands on the first server by name with room."""
    servers = [ServerInfo(f"s{i:04d}", NS, ("sklearn",), 2) for i in range(1000)]
    replicas = [ReplicaInfo(s.name, NS, r, memory=1000 * MiB, ready=True) for s in servers for r in range(2)]
    models = [ModelWant(f"m{i:05d}", NS, ("sklearn",), memory=400 * MiB, replicas=1 + i % 2)
              for i in range(2000)]
    snap = Snapshot(NS, tuple(models), tuple(servers), tuple(replicas))
    result = plan(snap)
    assert all(mp.state == "Scheduled" for mp in result.models.values())
    used = result.basis.used
    full = sorted({key[0] for key, n in used.items() if n})
    assert full == [f"s{i:04d}" for i in range(len(full))]  # no gap: the first servers by name, in order
    assert result == plan_by_scan(snap)
