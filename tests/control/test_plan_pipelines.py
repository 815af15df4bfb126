"""`berth plan` names every problem the live status would report for Pipelines and Experiments, one line each."""

from __future__ import annotations

import json

MANIFESTS = """
apiVersion: mlops.seldon.io/v1alpha1
kind: Server
metadata: {name: mlserver}
spec: {serverConfig: mlserver, replicas: 1}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: iris}
spec: {storageUri: "file:///tmp/iris", requirements: [sklearn], memory: 10Mi}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: huge}
spec: {storageUri: "file:///tmp/huge", requirements: [sklearn], memory: 64Gi}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata: {name: chain}
spec:
  steps:
  - {name: iris}
  - {name: huge, inputs: [iris.outputs.predict]}
  - {name: irsi, inputs: [ghost.outputs]}
  - {name: iris-b, inputs: [elsewhere/x.outputs]}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata: {name: fine}
spec:
  steps: [{name: iris}]
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Experiment
metadata: {name: ab}
spec:
  resourceType: pipeline
  candidates: [{name: chain, weight: 1}, {name: fine, weight: 1}, {name: nope, weight: 1}]
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Experiment
metadata: {name: models}
spec:
  candidates: [{name: iris, weight: 1}, {name: huge, weight: 1}]
"""


def test_plan_names_pipeline_and_experiment_problems(cli) -> None:
    r = cli("plan", "-f", "-", stdin=MANIFESTS)
    assert r.code == 1
    lines = [line for line in r.out.splitlines() if line.startswith(("✗ pipeline", "✗ experiment", "✓ pipeline"))]
    expected = [
        "✗ pipeline default/chain: step irsi: input 'ghost.outputs' names ghost, which is no step of pipeline "
        "chain and no pipeline of namespace default",
        "✗ pipeline default/chain: step iris-b: input 'elsewhere/x.outputs' names elsewhere/x, in another "
        "namespace; a pipeline uses models and pipelines of default only",
        "✗ pipeline default/chain: step huge: model huge is not ready: ScheduleFailed",
        "✗ pipeline default/chain: step irsi: model irsi not found in namespace default (did you mean iris?); a "
        "step calls the model of its name",
        "✗ pipeline default/chain: step iris-b: model iris-b not found in namespace default (did you mean iris?); "
        "a step calls the model of its name",
        "✓ pipeline default/fine: ready once its models are",
    ]
    for line in expected:
        assert any(got.startswith(line) for got in lines), f"{line!r} not in:\n" + "\n".join(lines)
    exp = [line for line in r.out.splitlines() if line.startswith("✗ experiment")]
    assert any(line.startswith("✗ experiment default/ab: candidate pipeline chain is not ready: step irsi")
               for line in exp), exp
    assert "✗ experiment default/ab: candidate pipeline nope not found in namespace default" in exp
    assert "✗ experiment default/models: candidate model huge is not ready: ScheduleFailed" in exp
    assert "error: 1 model(s) cannot be placed; 8 problem(s) in pipelines and experiments" in r.err


def test_plan_json_lists_problems_and_a_clean_set_exits_zero(cli) -> None:
    r = cli("plan", "-f", "-", "-o", "json", stdin=MANIFESTS)
    doc = json.loads(r.out)
    assert {p["name"]: len(p["problems"]) for p in doc["pipelines"]} == {"chain": 5, "fine": 0}
    assert {e["name"]: len(e["problems"]) for e in doc["experiments"]} == {"ab": 2, "models": 1}
    clean = MANIFESTS.split("---")[0:2] + MANIFESTS.split("---")[4:5]
    r = cli("plan", "-f", "-", stdin="---".join(clean))
    assert r.code == 0, r.out + r.err
    assert "✓ pipeline default/fine: ready once its models are" in r.out
