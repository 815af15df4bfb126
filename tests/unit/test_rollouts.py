"""Pure logic of version rollouts: instance names, which version serves, memory of two copies, the status, and
what `berth rollout undo` applies (docs/rollouts.md)."""

from __future__ import annotations

from typing import Any

import pytest

from berth.cli.rollout_cmd import progress, undo_document
from berth.control import rollouts
from berth.control.hub import ReplicaModel, ReplicaRecord
from berth.errors import NotFound
from berth.resources.instances import instance, instance_problem, model_of
from berth.wire import agent as wire


def record(index: int, models: dict[str, ReplicaModel], *, ready: bool = True) -> ReplicaRecord:
    hello = wire.Hello(server="mlserver", replica=index)
    return ReplicaRecord(key=("default", "mlserver", index), hello=hello, readiness=wire.Readiness(ready=ready),
                         models=models)


def loaded(gen: int, memory: int = 0) -> ReplicaModel:
    return ReplicaModel("LOADED", gen, memory)


def test_instance_names_round_trip_and_never_collide_with_model_names() -> None:
    assert instance("iris", 1) == "iris" and instance("iris", 0) == "iris"
    assert instance("iris", 7) == "iris_7" and model_of("iris_7") == ("iris", 7)
    assert model_of("iris") == ("iris", 1) and model_of("my-model-2") == ("my-model-2", 1)
    assert instance_problem("iris_7") is None and instance_problem("iris") is None
    for bad in ("iris_1", "iris_x", "Iris_3", "_3", "a_b_3", "../x_2"):
        assert instance_problem(bad) is not None, bad


def test_new_version_serves_only_once_loaded_on_every_live_planned_replica() -> None:
    keys = ["mlserver/0", "mlserver/1"]
    recs = {"mlserver/0": record(0, {"iris": loaded(1), "iris_2": loaded(2)}),
            "mlserver/1": record(1, {"iris": loaded(1), "iris_2": ReplicaModel("LOADING", 2)})}
    ro = rollouts.decide("iris", 2, 1, keys, recs)
    assert (ro.serving, ro.state, ro.serving_on) == (1, rollouts.PROGRESSING, 2)
    recs["mlserver/1"].models["iris_2"] = loaded(2)
    ro = rollouts.decide("iris", 2, 1, keys, recs)
    assert (ro.serving, ro.state, ro.serving_on) == (2, rollouts.COMPLETE, 2)
    # a replica that is down is not waited for
    recs["mlserver/1"] = record(1, {"iris": loaded(1)}, ready=False)
    assert rollouts.decide("iris", 2, 1, keys, recs).serving == 2


def test_failed_version_leaves_the_old_one_serving_with_the_reason() -> None:
    recs = {"mlserver/0": record(0, {"iris": loaded(1), "iris_2": ReplicaModel(
        "LOAD_FAILED", 2, message="MLServer at http://x failed to load iris_2: bad pickle", attempts=1)})}
    ro = rollouts.decide("iris", 2, 1, ["mlserver/0"], recs)
    assert (ro.serving, ro.state) == (1, rollouts.FAILED) and "bad pickle" in ro.failure
    # nothing of the old version left: the new one is all there is (still failed)
    recs["mlserver/0"].models.pop("iris")
    ro = rollouts.decide("iris", 2, 1, ["mlserver/0"], recs)
    assert (ro.serving, ro.state) == (2, rollouts.FAILED)


def test_a_new_model_has_no_rollout_to_wait_for() -> None:
    ro = rollouts.decide("iris", 1, None, ["mlserver/0"], {"mlserver/0": record(0, {})})
    assert (ro.serving, ro.state) == (1, rollouts.PROGRESSING)


def test_memory_of_a_second_copy_is_counted_while_both_are_held() -> None:
    models = {"iris": loaded(1, 300), "iris_2": ReplicaModel("LOADING", 2, 0), "wine": loaded(1, 50)}
    assert rollouts.extra_copies_memory(models) == 0  # the new copy's size is not known until it loaded
    models["iris_2"] = loaded(2, 200)
    assert rollouts.extra_copies_memory(models) == 200
    models["iris"] = ReplicaModel("UNLOADING", 1, 300)
    assert rollouts.extra_copies_memory(models) == 0


def _status(state: str = "ModelProgressing") -> Any:
    return {"state": state, "reason": state, "message": "replica mlserver/0: loading (generation 2)",
            "availableReplicas": 0, "history": [], "conditions": [
                {"type": "ModelReady", "status": "False"}, {"type": "Ready", "status": "False"},
                {"type": "Scheduled", "status": "True"}]}


def test_status_says_the_old_version_serves_and_keeps_the_previous_artifact() -> None:
    doc = {"metadata": {"name": "iris", "generation": 2}, "spec": {"storageUri": "file:///v2", "replicas": 1}}
    old = {"rollout": {"current": {"generation": 1, "artifact": {"storageUri": "file:///v1"}}}}
    st = _status()
    rollouts.amend(st, doc, rollouts.Rollout(2, 1, rollouts.FAILED, 1, "replica mlserver/0: boom"), old, 0.0)
    assert st["state"] == "ModelAvailable" and st["reason"] == "RolloutFailed" and st["availableReplicas"] == 1
    assert "generation 1 keeps serving" in st["message"] and "boom" in st["message"]
    assert st["servingGeneration"] == 1
    assert st["rollout"]["previous"] == {"generation": 1, "artifact": {"storageUri": "file:///v1"}}
    assert [c["status"] for c in st["conditions"]] == ["True", "True", "True"]
    assert progress({"metadata": {"name": "iris", "generation": 2}, "status": {**st, "observedGeneration": 2}}
                    )[0] == "Failed"


def test_undo_document_swaps_the_artifact_back_and_keeps_the_rest() -> None:
    doc = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
           "metadata": {"name": "iris", "namespace": "team", "generation": 3, "uid": "u"},
           "spec": {"storageUri": "file:///bad", "artifactVersion": 3, "replicas": 2, "requirements": ["sklearn"]},
           "status": {"rollout": {"previous": {"generation": 2, "artifact": {
               "storageUri": "file:///v2", "requirements": ["sklearn"]}}}}}
    again = undo_document(doc)
    assert again["spec"] == {"storageUri": "file:///v2", "requirements": ["sklearn"], "replicas": 2}
    assert again["metadata"] == {"name": "iris", "namespace": "team"}
    with pytest.raises(NotFound, match="no previous version"):
        undo_document({**doc, "status": {}})


def test_a_model_scaled_to_zero_has_nothing_to_roll_out() -> None:
    ro = rollouts.decide("iris", 3, 2, [], {}, replicas=0)
    assert (ro.serving, ro.state) == (3, rollouts.COMPLETE)


def test_gateway_sends_requests_to_the_serving_version_by_its_upstream_name() -> None:
    from berth.gateway.routing.table import compile_route
    from berth.wire import protowire
    from berth.wire.routes import Endpoint, ModelRoute

    ep = Endpoint(server="mlserver", replica=0, http="127.0.0.1:9500", grpc="127.0.0.1:9501")
    target = compile_route(ModelRoute(namespace="default", name="iris", state="ModelAvailable", endpoints=[ep],
                                      upstream="iris_2"))
    assert target.name == "iris" and target.upstream == "iris_2"
    assert target.line("127.0.0.1:9500", "infer").startswith(b"POST /v2/models/iris_2/infer HTTP/1.1")
    assert b"/v2/models/iris_2/versions/1/ready" in target.line("127.0.0.1:9500", "ready", "1")
    assert target.pb_name == protowire.string_field(1, "iris_2")
    plain = compile_route(ModelRoute(namespace="default", name="iris", state="ModelAvailable", endpoints=[ep]))
    assert plain.line("127.0.0.1:9500", "infer").startswith(b"POST /v2/models/iris/infer ")
