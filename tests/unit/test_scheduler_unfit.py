"""Shortcuts of the full plan's set-up and failure paths (issue 12) against the general code they stand for:
``filters.uniform_incapable`` (a server lacking a model's requirements, worded without walking ``evaluate``),
the Slot shapes shared by replicas reporting alike, and ``models_by_name``'s C-speed pass."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berth.errors import InvalidInput
from berth.scheduler import filters
from berth.scheduler.plan import models_by_name
from berth.scheduler.pool import Pool, Shapes, Slot
from berth.scheduler.snapshot import ModelWant, Rejection, ReplicaInfo, ServerInfo, Snapshot
from berth.scheduler.summary import server_lines

NS = "ns"
CAPS = ("sklearn", "xgboost", "mlflow", "torch", "python")
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pools(draw: st.DrawFn) -> tuple[Snapshot, list[tuple[str, ...]]]:
    """Servers of every sort the filters tell apart: deleting, Triton, replicas missing, not connected, not
    ready, draining, reporting their own capabilities or none, with runtimes they cannot import."""
    servers: list[ServerInfo] = []
    replicas: list[ReplicaInfo] = []
    for i in range(draw(st.integers(1, 6))):
        name = f"s{i}"
        caps = tuple(draw(st.lists(st.sampled_from(CAPS), unique=True, min_size=1, max_size=3)))
        servers.append(ServerInfo(name, NS, caps, desired_replicas=draw(st.integers(0, 4)),
                                  deleting=draw(st.integers(0, 9)) == 0,
                                  inference_server="triton" if draw(st.integers(0, 9)) == 0 else "mlserver"))
        indexes = draw(st.lists(st.integers(0, 4), unique=True, max_size=4))
        for index in sorted(indexes):
            own = tuple(draw(st.lists(st.sampled_from(CAPS), unique=True, max_size=3))) \
                if draw(st.integers(0, 3)) == 0 else ()
            offered = own or caps
            broken = tuple((c, f"mod_{c}") for c in offered if draw(st.integers(0, 5)) == 0)
            replicas.append(ReplicaInfo(name, NS, index, own, memory=1 << 30, overcommit_percent=10,
                                        connected=draw(st.integers(0, 7)) > 0, ready=draw(st.integers(0, 7)) > 0,
                                        draining=draw(st.integers(0, 7)) == 0, unimportable=broken))
    wanted = draw(st.lists(st.lists(st.sampled_from((*CAPS, "scikit-learn")), unique=True, min_size=1,
                                    max_size=3).map(tuple), min_size=1, max_size=4))
    return Snapshot(NS, (), tuple(servers), tuple(replicas)), wanted


@PROPS
@given(pools())
def test_uniform_incapable_words_a_server_as_evaluate_does(case: tuple[Snapshot, list[tuple[str, ...]]]) -> None:
    snapshot, wanted = case
    pool = Pool(snapshot)
    for requirements in wanted:
        model = ModelWant("m", NS, requirements, memory=1 << 20)
        reqs = frozenset(requirements)
        for name in pool.names:
            quick = filters.uniform_incapable(pool, model, reqs, name)
            out: list[Rejection] = []
            suitable = filters.evaluate(pool, model, reqs, name, [], out)
            if quick is not None:
                assert not suitable
                assert quick == (out, server_lines(out))


def test_uniform_incapable_takes_the_common_case_and_leaves_the_rest() -> None:
    servers = (ServerInfo("sk", NS, ("sklearn", "mlflow"), 2), ServerInfo("torch", NS, ("torch",), 2),
               ServerInfo("short", NS, ("torch",), 3))
    replicas = (*(ReplicaInfo("sk", NS, i, memory=1 << 30, ready=True) for i in range(2)),
                ReplicaInfo("torch", NS, 0, memory=1 << 30, ready=True),
                ReplicaInfo("torch", NS, 1, memory=1 << 30, ready=True, draining=True),
                *(ReplicaInfo("short", NS, i, memory=1 << 30, ready=True) for i in range(2)))
    pool = Pool(Snapshot(NS, (), servers, replicas))
    model = ModelWant("m", NS, ("torch", "numpy"))
    reqs = frozenset(model.requirements)
    found = filters.uniform_incapable(pool, model, reqs, "sk")
    assert found is not None
    rejections, lines = found
    assert [r.replica for r in rejections] == [0, 1]
    assert {r.message for r in rejections} == set(lines)
    assert len(lines) == 1 and lines[0].startswith("server sk lacks capabilities torch, numpy (")
    out: list[Rejection] = []
    filters.evaluate(pool, model, reqs, "sk", [], out)
    assert found == (out, server_lines(out))
    assert filters.uniform_incapable(pool, model, reqs, "torch") is None  # a draining replica: evaluate words it
    assert filters.uniform_incapable(pool, model, reqs, "short") is None  # a declared replica missing
    assert filters.uniform_incapable(pool, ModelWant("m", NS, ("torch",)), frozenset({"torch"}), "short") is None


@PROPS
@given(pools())
def test_slots_built_with_shared_shapes_equal_slots_built_alone(case: tuple[Snapshot, list[tuple[str, ...]]]) -> None:
    snapshot, _ = case
    servers = {s.name: s for s in snapshot.servers}
    shapes: Shapes = {}
    fields = ("key", "ref", "server", "index", "offered", "caps", "broken", "per_server", "kind", "capacity", "used",
              "usable")
    for info in snapshot.replicas:
        shared, alone = Slot(info, servers[info.server], shapes), Slot(info, servers[info.server])
        assert [getattr(shared, f) for f in fields] == [getattr(alone, f) for f in fields]
        assert shared.capacity == info.capacity and shared.ref == info.ref and shared.key == (info.server, info.index)


def test_models_by_name_refuses_what_the_loop_refused() -> None:
    models = tuple(ModelWant(f"m{i}", NS) for i in range(50))
    assert list(models_by_name(Snapshot(NS, models))) == [m.name for m in models]
    with pytest.raises(InvalidInput, match="holds model other/x; plan each namespace"):
        models_by_name(Snapshot(NS, (*models, ModelWant("x", "other"))))
    with pytest.raises(InvalidInput, match="lists model m7 twice"):
        models_by_name(Snapshot(NS, (*models, ModelWant("m7", NS))))
    assert models_by_name(Snapshot(NS)) == {}
