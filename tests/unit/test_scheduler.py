"""The scheduler's filters, messages, ordering and passes, one behaviour at a time."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from berth.errors import InvalidInput
from berth.scheduler import plan
from berth.scheduler.snapshot import (
    CROSS_NAMESPACE,
    INSUFFICIENT_MEMORY,
    MISSING_CAPABILITIES,
    NO_REPLICAS,
    NO_SERVERS,
    NOT_ENOUGH_REPLICAS,
    REPLICA_DRAINING,
    REPLICA_NOT_READY,
    SERVER_DELETING,
    SERVER_NOT_FOUND,
    ModelPlan,
    ModelWant,
    ReplicaInfo,
    ReplicaRef,
    ServerInfo,
    Snapshot,
)
from berth.scheduler.suggest import near_match
from berth.scheduler.summary import FAILED, FAILED_REPLICAS, compact

NS = "financial-ml"
GiB, MiB = 2**30, 2**20
CAPS = ("sklearn", "xgboost", "mlflow", "pytorch")


def server(name: str = "mlserver", replicas: int = 1, caps: tuple[str, ...] = CAPS, **kw: Any) -> ServerInfo:
    return ServerInfo(name, NS, caps, desired_replicas=replicas, **kw)


def replicas(name: str = "mlserver", n: int = 1, memory: int = GiB, overcommit: int = 10,
             **kw: Any) -> list[ReplicaInfo]:
    return [ReplicaInfo(name, NS, i, memory=memory, overcommit_percent=overcommit, ready=True, **kw)
            for i in range(n)]


def model(name: str = "m", **kw: Any) -> ModelWant:
    return ModelWant(name, NS, **kw)


def snap(models: list[ModelWant], servers: list[ServerInfo], reps: list[ReplicaInfo], **kw: Any) -> Snapshot:
    return Snapshot(NS, tuple(models), tuple(servers), tuple(reps), **kw)


def one(models: list[ModelWant], servers: list[ServerInfo], reps: list[ReplicaInfo], **kw: Any) -> ModelPlan:
    result = plan(snap(models, servers, reps, **kw))
    return result.models[models[0].name]


def codes(mp: ModelPlan) -> list[str]:
    return [r.code for r in mp.reasons]


def test_places_on_a_capable_replica() -> None:
    mp = one([model(requirements=("sklearn",))], [server()], replicas())
    assert (mp.state, mp.replicas, mp.reasons) == ("Scheduled", (ReplicaRef("mlserver", 0),), ())
    assert mp.message == "scheduled on mlserver replica 0"


def test_cross_namespace_reference_is_rejected_saying_so() -> None:
    mp = one([model(server="seldon-system/mlserver")], [], [],
             foreign_servers={"seldon-system": ("mlserver",)})
    assert mp.state == "ScheduleFailed" and mp.replicas == ()
    assert mp.message == (f"{FAILED}: server 'seldon-system/mlserver' is in namespace seldon-system; "
                          "a model in financial-ml can only use servers of its own namespace "
                          "(servers in financial-ml: none)")
    assert codes(mp) == [CROSS_NAMESPACE]
    assert dict(mp.reasons[0].data)["exists"] is True
    missing = one([model(server="other/x")], [server()], replicas(), foreign_servers={"other": ("y",)})
    assert "which has no server x either" in missing.message
    assert "(servers in financial-ml: mlserver)" in missing.message


def test_own_namespace_qualified_pin_is_fine_and_foreign_servers_are_never_candidates() -> None:
    assert one([model(server=f"{NS}/mlserver")], [server()], replicas()).state == "Scheduled"
    foreign = ServerInfo("mlserver", "seldon-system", CAPS)
    foreign_rep = ReplicaInfo("mlserver", "seldon-system", 0, memory=GiB, ready=True)
    mp = one([model()], [foreign], [foreign_rep])
    assert codes(mp) == [NO_SERVERS] and mp.replicas == ()


def test_pinned_server_must_exist_here() -> None:
    mp = one([model(server="mlsrever")], [server("a"), server("mlserver")], replicas("a") + replicas())
    assert codes(mp) == [SERVER_NOT_FOUND]
    assert mp.message == (f"{FAILED}: no server named mlsrever in namespace {NS}; servers here: a, mlserver "
                          "(did you mean mlserver?)")


def test_deleting_server_is_not_a_candidate() -> None:
    mp = one([model()], [server(deleting=True)], replicas())
    assert codes(mp) == [SERVER_DELETING] and "server mlserver is being deleted" in mp.message


def test_not_ready_replica_names_address_error_and_time() -> None:
    reps = [ReplicaInfo("mlserver", NS, 0, memory=GiB, ready=False, address="127.0.0.1:9500",
                        last_error="connection refused", error_since="14:00:00")]
    mp = one([model()], [server()], reps)
    assert codes(mp) == [REPLICA_NOT_READY]
    assert mp.message == (f"{FAILED}: server mlserver: replica 0: inference server 127.0.0.1:9500 not ready: "
                          "connection refused since 14:00:00")


def test_server_without_connected_agents() -> None:
    mp = one([model()], [server()], [])
    assert codes(mp) == [NO_REPLICAS]
    assert mp.message == f"{FAILED}: server mlserver has no connected replicas (0 of 1)"
    gone = [ReplicaInfo("mlserver", NS, 0, connected=False, last_error="broken pipe", error_since="13:59:00")]
    mp = one([model()], [server()], gone)
    assert codes(mp) == [NO_REPLICAS, REPLICA_NOT_READY]
    assert "replica 0: agent not connected (last error: broken pipe since 13:59:00)" in mp.message


def test_unusable_replicas_each_get_a_line_but_the_server_is_still_used() -> None:
    reps = replicas(n=2)
    reps[0] = dataclasses.replace(reps[0], draining=True)
    mp = one([model(replicas=2)], [server(replicas=3)], reps)
    assert mp.state == "ScheduleFailed"
    assert codes(mp) == [REPLICA_DRAINING, REPLICA_NOT_READY, NOT_ENOUGH_REPLICAS]
    assert mp.message.startswith(FAILED_REPLICAS + ": model needs 2 replicas on one server; "
                                 "server mlserver has 1 suitable replica (of 3)")
    assert "server mlserver: replica 0 is draining" in mp.message
    assert "server mlserver: replica 2: no agent connected" in mp.message
    assert one([model()], [server(replicas=3)], reps).replicas == (ReplicaRef("mlserver", 1),)


def test_missing_capabilities_with_near_matches() -> None:
    mp = one([model(requirements=("mlflow", "torch", "scikit-learn"))], [server()], replicas())
    assert codes(mp) == [MISSING_CAPABILITIES]
    assert mp.message == (f"{FAILED}: server mlserver lacks capabilities torch, scikit-learn "
                          "(did you mean pytorch for torch, sklearn for scikit-learn? "
                          "server offers: sklearn, xgboost, mlflow, pytorch)")
    assert dict(mp.reasons[0].data)["missing"] == ("torch", "scikit-learn")


def test_capability_match_is_case_sensitive_and_replica_report_wins() -> None:
    mp = one([model(requirements=("SKLearn",))], [server()], replicas())
    assert "lacks capability SKLearn (did you mean sklearn for SKLearn?" in mp.message
    own = replicas(capabilities=("onnx",))
    mp = one([model(requirements=("sklearn",))], [server()], own)
    assert "server mlserver replica 0 lacks capability sklearn (replica offers: onnx)" in mp.message
    assert one([model(requirements=("onnx",))], [server()], own).state == "Scheduled"


def test_near_match() -> None:
    assert near_match("scikit-learn", ["sklearn"]) == "sklearn"
    assert near_match("pytorch", ["torch"]) == "torch"
    assert near_match("tf", ["tensorflow"]) == "tensorflow"
    assert near_match("xgb", ["xgboost"]) == "xgboost"
    assert near_match("sklaern", ["mlflow", "sklearn"]) == "sklearn"
    assert near_match("huggingface", ["sklearn", "mlflow"]) is None
    assert near_match("sklearn", ["sklearn"]) is None


def test_memory_names_both_figures_and_overcommit_counts() -> None:
    mp = one([model(memory=64 * GiB)], [server()], replicas())
    assert codes(mp) == [INSUFFICIENT_MEMORY]
    assert mp.reasons[0].message == ("replica mlserver/0 has 1.1 GiB free "
                                     "(1 GiB + 10% overcommit, 0 B used); model needs 64 GiB")
    assert dict(mp.reasons[0].data)["need"] == 64 * GiB
    assert one([model(memory=int(1.05 * GiB))], [server()], replicas()).state == "Scheduled"
    assert one([model(memory=int(1.05 * GiB))], [server()], replicas(overcommit=0)).state == "ScheduleFailed"


def test_memory_already_planned_is_deducted() -> None:
    result = plan(snap([model("a", memory=600 * MiB), model("b", memory=600 * MiB)], [server()], replicas()))
    assert result.models["a"].state == "Scheduled"
    b = result.models["b"]
    assert b.state == "ScheduleFailed"
    assert "replica mlserver/0 has 526.4 MiB free (1 GiB + 10% overcommit, 600 MiB used)" in b.message


def test_replica_count_on_one_server() -> None:
    mp = one([model(replicas=3)], [server()], replicas())
    assert mp.replicas == () and codes(mp) == [NOT_ENOUGH_REPLICAS]
    assert mp.message == (f"{FAILED_REPLICAS}: model needs 3 replicas on one server; "
                          "server mlserver has 1 suitable replica (of 1)")
    # two servers of two replicas each do not make one server of three
    mp = one([model(replicas=3)], [server("a", 2), server("b", 2)], replicas("a", 2) + replicas("b", 2))
    assert mp.state == "ScheduleFailed"
    assert "server a has 2 suitable replicas (of 2); server b has 2 suitable replicas (of 2)" in mp.message


def test_min_replicas_places_what_fits() -> None:
    reps = replicas(n=3)
    reps[2] = dataclasses.replace(reps[2], memory=MiB)
    mp = one([model(replicas=3, min_replicas=2, memory=100 * MiB)], [server(replicas=3)], reps)
    assert mp.state == "PartiallyScheduled"
    assert mp.replicas == (ReplicaRef("mlserver", 0), ReplicaRef("mlserver", 1))
    assert mp.message.startswith("scheduled 2 of 3 replicas on mlserver (replicas 0, 1); 1 missing: ")
    assert "replica mlserver/2 has 1.1 MiB free" in mp.message
    assert set(codes(mp)) == {INSUFFICIENT_MEMORY, NOT_ENOUGH_REPLICAS}
    assert one([model(replicas=3, min_replicas=3)], [server(replicas=3)], reps[:2]).state == "ScheduleFailed"


def test_binpack_fills_the_fullest_replica_and_spread_the_emptiest() -> None:
    reps = replicas(n=3)
    assigned = {"big": (ReplicaRef("mlserver", 1),)}
    models = [model("big", memory=512 * MiB), model("small", memory=10 * MiB)]
    packed = plan(snap(models, [server(replicas=3)], reps, assignments=assigned))
    assert packed.models["small"].replicas == (ReplicaRef("mlserver", 1),)
    spread = plan(snap(models, [server(replicas=3)], reps, assignments=assigned, policy="spread"))
    assert spread.models["small"].replicas == (ReplicaRef("mlserver", 0),)  # most free, lowest index


def test_first_server_by_name_and_the_holder_first() -> None:
    servers, reps = [server("b"), server("a")], replicas("b") + replicas("a")
    assert one([model()], servers, reps).replicas == (ReplicaRef("a", 0),)
    held = one([model()], servers, reps, assignments={"m": (ReplicaRef("b", 0),)})
    assert held.replicas == (ReplicaRef("b", 0),)


def test_existing_assignments_are_kept_before_new_models_are_placed() -> None:
    # "a" would take the only replica if placed first; "z" already holds it and keeps it
    models = [model("a", memory=GiB), model("z", memory=GiB)]
    result = plan(snap(models, [server()], replicas(), assignments={"z": (ReplicaRef("mlserver", 0),)}))
    assert result.models["z"].state == "Scheduled" and result.models["a"].state == "ScheduleFailed"


def test_already_held_replicas_come_first_then_policy() -> None:
    reps = replicas(n=3)
    mp = one([model(replicas=2)], [server(replicas=3)], reps, assignments={"m": (ReplicaRef("mlserver", 2),)})
    assert mp.replicas == (ReplicaRef("mlserver", 2), ReplicaRef("mlserver", 0))


def test_a_model_that_cannot_grow_keeps_what_it_has() -> None:
    mp = one([model(replicas=2)], [server()], replicas(), assignments={"m": (ReplicaRef("mlserver", 0),)})
    assert mp.state == "ScheduleFailed" and mp.replicas == (ReplicaRef("mlserver", 0),)
    assert mp.message.endswith("; it stays on mlserver replica 0 meanwhile")


def test_deleting_and_zero_replicas() -> None:
    result = plan(snap([model("d", deleting=True), model("z", replicas=0)], [server()], replicas(),
                       assignments={"d": (ReplicaRef("mlserver", 0),)}))
    assert (result.models["d"].state, result.models["d"].replicas) == ("Deleting", ())
    assert (result.models["z"].state, result.models["z"].replicas) == ("Scheduled", ())


def test_many_replicas_fold_into_one_line_and_long_messages_are_capped() -> None:
    mp = one([model(memory=64 * GiB)], [server(replicas=10)], replicas(n=10))
    assert len(mp.reasons) == 10
    assert mp.message == (f"{FAILED}: server mlserver replicas 0-9 have 1.1 GiB free each "
                          "(1 GiB + 10% overcommit, 0 B used); model needs 64 GiB")
    names = [f"s{i:02d}" for i in range(30)]
    reps = [r for n in names for r in replicas(n)]
    mp = one([model(requirements=("torch",))], [server(n) for n in names], reps)
    assert len(mp.reasons) == 30
    assert mp.message.count(";") == 11 and mp.message.endswith("and 19 more candidates rejected "
                                                               "(every rejection is listed in the reasons)")
    assert compact([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7, 8"


def test_snapshot_must_be_one_namespace_with_unique_names() -> None:
    with pytest.raises(InvalidInput, match="plan each namespace"):
        plan(Snapshot(NS, (ModelWant("m", "other"),)))
    with pytest.raises(InvalidInput, match="model m twice"):
        plan(snap([model(), model()], [], []))
    with pytest.raises(InvalidInput, match="replica mlserver/0 twice"):
        plan(snap([], [server()], replicas() + replicas()))


def test_replica_of_an_undeclared_server_is_usable() -> None:
    mp = one([model()], [], replicas("by-hand", capabilities=("sklearn",)))
    assert mp.replicas == (ReplicaRef("by-hand", 0),)
    late = [dataclasses.replace(r, index=1) for r in replicas("by-hand", capabilities=("sklearn",))]
    mp = one([model(requirements=("torch",))], [], late)
    assert mp.message == f"{FAILED}: server by-hand lacks capability torch (server offers: sklearn)"


def test_incremental_replan_reuses_untouched_plans() -> None:
    names = [f"m{i}" for i in range(6)]
    first = plan(snap([model(n, memory=100 * MiB) for n in names], [server(replicas=3)], replicas(n=3),
                      policy="spread"))
    assigned = {n: mp.replicas for n, mp in first.models.items()}
    after = snap([model(n, memory=100 * MiB) for n in names], [server(replicas=3)], replicas(n=3)[1:],
                 assignments=assigned, policy="spread")
    quick, full = plan(after, previous=first), plan(after)
    assert quick == full
    for name, mp in quick.models.items():
        if ReplicaRef("mlserver", 0) not in first.models[name].replicas:
            assert mp is first.models[name]
        else:
            assert mp.replicas and ReplicaRef("mlserver", 0) not in mp.replicas


def test_incremental_replan_when_an_assignment_moves_onto_a_full_replica() -> None:
    models = [model("a", memory=600 * MiB), model("u", memory=600 * MiB)]
    reps = replicas(n=2, overcommit=0)
    first = plan(snap(models, [server(replicas=2)], reps, assignments={"u": (ReplicaRef("mlserver", 0),)}))
    assert first.models["u"].replicas == (ReplicaRef("mlserver", 0),)
    assert first.models["a"].replicas == (ReplicaRef("mlserver", 1),)
    # the control plane reports "a" on replica 0 too: "a" comes first by name and keeps it, "u" moves
    moved = {"a": (ReplicaRef("mlserver", 0),), "u": (ReplicaRef("mlserver", 0),)}
    after = snap(models, [server(replicas=2)], reps, assignments=moved)
    full = plan(after)
    assert full.models["a"].replicas == (ReplicaRef("mlserver", 0),)
    assert full.models["u"].replicas == (ReplicaRef("mlserver", 1),)
    assert plan(after, previous=first) == full
