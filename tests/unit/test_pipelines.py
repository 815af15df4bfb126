"""Pipelines: the pure checker/compiler and the DAG executor with a model-call function written here."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from berth.errors import BerthError, Timeout
from berth.gateway.pipelines.dag import PipelineError, Result, execute
from berth.resources.pipelines import check_namespace, compile_pipeline, parse_ref


def _model(state: str = "ModelAvailable") -> dict[str, Any]:
    return {"status": {"state": state, "message": "" if state == "ModelAvailable" else "no server fits"}}


def _pipe(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"annotations": annotations or {}}, "spec": spec}


def test_parse_ref_forms() -> None:
    assert parse_ref("a") == ("a", "outputs", None)
    assert parse_ref("a.outputs") == ("a", "outputs", None)
    assert parse_ref("a.outputs.T") == ("a", "outputs", "T")
    assert parse_ref("iris.v1.inputs.x.y") == ("iris.v1", "inputs", "x.y")


def test_ready_pipeline_has_no_problems() -> None:
    spec = {"steps": [{"name": "a"}, {"name": "b", "inputs": ["a.outputs.OUT"], "tensorMap": {"a.outputs.OUT": "X"}}],
            "output": {"steps": ["b"]}}
    result = check_namespace("ns", {"p": _pipe(spec)}, {"a": _model(), "b": _model()})
    dag, problems = result["p"]
    assert problems == []
    assert dag.step_names == ("a", "b")
    assert dag.output.refs[0].source == "b"


def test_every_problem_is_named_one_line_each() -> None:
    spec = {"steps": [
        {"name": "a", "inputs": ["c.outputs"]},
        {"name": "b", "inputs": ["ghost.outputs.T"]},
        {"name": "c", "inputs": ["a"], "joinType": "sideways"},
        {"name": "d", "inputs": ["other-ns/x.outputs"]},
        {"name": "e", "inputs": ["p.inputs.X"], "tensorMap": {"p.inputs.X": "Y"}},
        {"name": "f", "inputs": ["e.inputs.Z"]},
    ]}
    models = {"a": _model(), "b": _model("ScheduleFailed"), "c": _model(), "d": _model(), "e": _model(),
              "f": _model()}
    problems = check_namespace("ns", {"p": _pipe(spec)}, models)["p"][1]
    text = "\n".join(problems)
    assert "step b: input 'ghost.outputs.T' names ghost, which is no step of pipeline p" in text
    assert "joinType is 'sideways'; expected one of inner, outer, any" in text
    assert "'other-ns/x.outputs' names other-ns/x, in another namespace" in text
    assert "'e.inputs.Z' names tensor Z, which step e never receives (it receives Y)" in text
    assert "steps form a cycle: a → c → a" in text
    assert "step b: model b is not ready: ScheduleFailed (no server fits)" in text
    assert all("\n" not in p for p in problems)


def test_missing_model_suggests_a_near_name() -> None:
    problems = check_namespace("ns", {"p": _pipe({"steps": [{"name": "iris-modl"}]})}, {"iris-model": _model()})["p"][1]
    assert problems == ["step iris-modl: model iris-modl not found in namespace ns (did you mean iris-model?); "
                        "a step calls the model of its name"]


def test_cycle_through_other_pipelines_and_readiness_propagates() -> None:
    pipes = {
        "p1": _pipe({"steps": [{"name": "a", "inputs": ["p2.outputs"]}]}),
        "p2": _pipe({"steps": [{"name": "a", "inputs": ["p1.outputs"]}]}),
        "top": _pipe({"steps": [{"name": "a", "inputs": ["p1.outputs"]}]}),
        "fine": _pipe({"steps": [{"name": "a"}]}),
        "user": _pipe({"steps": [{"name": "a", "inputs": ["fine.outputs"]}]}),
    }
    result = check_namespace("ns", pipes, {"a": _model()})
    assert any("pipelines form a cycle: p1 → p2 → p1" in p for p in result["p1"][1])
    assert any("pipelines form a cycle" in p for p in result["p2"][1])
    assert result["top"][1] == ["pipeline p1, whose outputs it reads, is not ready"]
    assert result["user"][1] == [] and result["user"][0].uses == {"fine"}


def test_step_timeouts_from_annotations() -> None:
    dag = compile_pipeline("ns", "p", {"steps": [{"name": "a"}, {"name": "b"}]}, (),
                           {"berth.io/step-timeout": "2s", "berth.io/step-timeout.b": "150ms"})
    assert [s.timeout_s for s in dag.steps] == [2.0, 0.15]
    bad = compile_pipeline("ns", "p", {"steps": [{"name": "a"}]}, (), {"berth.io/step-timeout.zz": "fast"})
    assert any("is not a duration" in p for p in bad.problems)


# --- the executor, with model calls made by this test -----------------------------------------------------


def _t(name: str, value: float) -> dict[str, Any]:
    return {"name": name, "datatype": "FP64", "shape": [1], "data": [value]}


class Models:
    """Adders, a chooser and a failing model, answering V2 dicts; records the calls and their overlap."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.delay = delay
        self.active = 0
        self.peak = 0

    async def __call__(self, model: str, request: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((model, [t["name"] for t in request["inputs"]]))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
            ins = {t["name"]: t["data"][0] for t in request["inputs"]}
            if model.startswith("add"):
                return {"outputs": [_t("SUM", sum(ins.values()) + int(model[3:] or 0))]}
            if model == "chooser":
                return {"outputs": [_t("LEFT" if ins["X"] < 0 else "RIGHT", ins["X"])]}
            if model == "slow":
                await asyncio.sleep(5)
            if model == "broken":
                raise BerthError("MLServer said: boom", code="Unavailable")
            return {"outputs": [_t(f"{model}-OUT", next(iter(ins.values())))]}
        finally:
            self.active -= 1


def run(spec: dict[str, Any], request: dict[str, Any], models: Models | None = None, *,
        others: dict[str, dict[str, Any]] | None = None, annotations: dict[str, str] | None = None) -> Result:
    models = models or Models()
    names = ["p", *(others or {})]
    dag = compile_pipeline("ns", "p", spec, names, annotations)

    async def other(name: str, req: dict[str, Any]) -> Result:
        sub = compile_pipeline("ns", name, (others or {})[name], names)
        return await execute(sub, req, models, other)

    return asyncio.run(execute(dag, request, models, other))


REQ = {"id": "r1", "inputs": [_t("X", 2.0), _t("Y", 3.0)]}


def test_chain_with_tensor_map() -> None:
    spec = {"steps": [{"name": "add1"},
                      {"name": "add10", "inputs": ["add1.outputs.SUM"], "tensorMap": {"add1.outputs.SUM": "IN"}}],
            "output": {"steps": ["add10"], "tensorMap": {"add10.outputs.SUM": "RESULT"}}}
    models = Models()
    result = run(spec, REQ, models)
    assert result.response == {"model_name": "p", "outputs": [_t("RESULT", 16.0)], "id": "r1"}
    assert models.calls == [("add1", ["X", "Y"]), ("add10", ["IN"])]
    assert result.route == ["add1", "add10"]


def test_independent_steps_run_concurrently_and_inner_join_waits_for_both() -> None:
    spec = {"steps": [{"name": "a", "inputs": ["p.inputs.X"]}, {"name": "b", "inputs": ["p.inputs.Y"]},
                      {"name": "add", "inputs": ["a", "b"]}]}
    models = Models(delay=0.2)
    started = time.perf_counter()
    result = run(spec, REQ, models)
    assert time.perf_counter() - started < 0.55  # a and b overlapped: 2 × 0.2s, not 3 × 0.2s
    assert models.peak == 2
    assert result.response["outputs"] == [_t("SUM", 5.0)]


def test_chooser_triggers_and_any_output() -> None:
    spec = {"steps": [{"name": "chooser"},
                      {"name": "add100", "inputs": ["p.inputs.X"], "triggers": ["chooser.outputs.LEFT"]},
                      {"name": "add200", "inputs": ["p.inputs.X"], "triggers": ["chooser.outputs.RIGHT"]}],
            "output": {"steps": ["add100", "add200"], "stepsJoin": "any"}}
    right = run(spec, {"inputs": [_t("X", 1.0)]})
    assert right.response["outputs"] == [_t("SUM", 201.0)] and right.route == ["chooser", "add200"]
    left = run(spec, {"inputs": [_t("X", -1.0)]})
    assert left.response["outputs"] == [_t("SUM", 99.0)] and left.route == ["chooser", "add100"]


def test_inner_output_without_its_step_says_what_did_not_run() -> None:
    spec = {"steps": [{"name": "chooser"}, {"name": "add1", "inputs": ["chooser.outputs.LEFT"]}],
            "output": {"steps": ["add1"]}}
    with pytest.raises(PipelineError) as info:
        run(spec, {"inputs": [_t("X", 1.0)]})
    assert info.value.code == "PipelineNoOutput" and "steps that did not run: add1" in info.value.message


def test_outer_and_any_joins() -> None:
    base = [{"name": "chooser"}, {"name": "echo"}]
    outer = {"steps": base + [{"name": "add", "inputs": ["chooser.outputs.LEFT", "echo.outputs"],
                               "joinType": "outer"}]}
    assert run(outer, {"inputs": [_t("X", 4.0)]}).response["outputs"] == [_t("SUM", 4.0)]  # only echo arrived
    inner = {"steps": base + [{"name": "add", "inputs": ["chooser.outputs.LEFT", "echo.outputs"]}],
             "output": {"steps": ["add", "echo"], "stepsJoin": "outer"}}
    assert run(inner, {"inputs": [_t("X", 4.0)]}).response["outputs"] == [_t("echo-OUT", 4.0)]
    anyj = {"steps": base + [{"name": "add", "inputs": ["chooser.outputs.RIGHT", "echo.outputs"],
                              "inputsJoinType": "any"}]}
    models = Models()
    run(anyj, {"inputs": [_t("X", 4.0)]}, models)
    assert len(models.calls[-1][1]) == 1  # one input only: the first that arrived


def test_step_inputs_reference_and_pipeline_of_pipelines() -> None:
    others = {"inner": {"steps": [{"name": "add5"}]}}
    spec = {"steps": [{"name": "add1", "inputs": ["inner.outputs.SUM", "echo.inputs.X"]},
                      {"name": "echo", "inputs": ["p.inputs.X"]}],
            "output": {"steps": ["add1"]}}
    result = run(spec, {"inputs": [_t("X", 1.0)]}, others=others)
    assert result.response["outputs"] == [_t("SUM", (1 + 5) + 1 + 1)]  # inner's SUM, echo's input X, add1's +1
    assert set(result.route) == {"inner.pipeline", "add5", "echo", "add1"} and result.route[-1] == "add1"


def test_failing_step_is_named() -> None:
    spec = {"steps": [{"name": "add1"}, {"name": "broken", "inputs": ["add1"]}]}
    with pytest.raises(PipelineError) as info:
        run(spec, REQ)
    assert info.value.code == "PipelineStepFailed"
    assert info.value.message == "pipeline p: step broken failed: MLServer said: boom"


def test_step_timeout_names_the_step() -> None:
    with pytest.raises(Timeout) as info:
        run({"steps": [{"name": "slow"}]}, REQ, annotations={"berth.io/step-timeout.slow": "100ms"})
    assert "step slow did not answer within 0.1s" in info.value.message


def test_tensor_clash_asks_for_a_tensor_map() -> None:
    spec = {"steps": [{"name": "add1"}, {"name": "add2"}, {"name": "add3", "inputs": ["add1", "add2"]}]}
    with pytest.raises(PipelineError) as info:
        run(spec, REQ)
    assert info.value.code == "PipelineTensorClash" and "two tensors named SUM" in info.value.message


def test_pipeline_with_problems_is_not_run() -> None:
    with pytest.raises(PipelineError) as info:
        run({"steps": [{"name": "a", "inputs": ["nope"]}]}, REQ)
    assert info.value.code == "PipelineNotReady" and info.value.http_status == 503
