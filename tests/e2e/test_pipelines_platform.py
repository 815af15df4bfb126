"""Pipelines applied to the whole platform: status (PipelineReady with reasons, re-evaluated as models change),
and routes published to the gateway, served over REST."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from berth.errors import BerthError
from tests.support.models import IRIS_INPUT, train_sklearn
from tests.support.platform import SELDON, Platform, model_doc, server_doc

pytestmark = pytest.mark.e2e


def pipeline(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": SELDON, "kind": "Pipeline", "metadata": {"name": name, "namespace": "default"},
            "spec": spec}


def wait_pipeline(p: Platform, name: str, ready: bool, contains: str = "", timeout: float = 60) -> dict[str, Any]:
    """The pipeline's status once PipelineReady is ``ready`` and its message contains ``contains``."""
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = p.client.get("Pipeline", "default", name).get("status") or {}
        cond = next((c for c in st.get("conditions", []) if c["type"] == "PipelineReady"), None)
        if cond is not None and (cond["status"] == "True") == ready and contains in cond["message"]:
            return st
        time.sleep(0.1)
    raise AssertionError(f"pipeline {name} not ready={ready} with {contains!r} in {timeout}s: {st}")


BOTH = {"steps": [{"name": "iris"}, {"name": "iris2"}],
        "output": {"steps": ["iris", "iris2"],
                   "tensorMap": {"iris.outputs.predict": "first", "iris2.outputs.predict": "second"}}}


def test_pipeline_status_routes_serving_and_cli(tmp_path: Path, cli: Any) -> None:
    model = train_sklearn(tmp_path / "model")
    with Platform(tmp_path / "berth") as p:
        p.client.apply([server_doc("mlserver", replicas=1), model_doc("iris", str(model)),
                        pipeline("both", BOTH),
                        pipeline("loop", {"steps": [{"name": "iris", "inputs": ["loop2.outputs"]}]}),
                        pipeline("loop2", {"steps": [{"name": "iris", "inputs": ["loop.outputs"]}]})])
        p.wait_model("iris")
        st = wait_pipeline(p, "both", False, "step iris2: model iris2 not found in namespace default (did")
        assert st["message"] == "step iris2: model iris2 not found in namespace default (did you mean iris?); a " \
                                "step calls the model of its name"  # iris is ready: no line about it
        assert {s["name"]: s["ready"] for s in st["steps"]} == {"iris": True, "iris2": False}
        assert "pipelines form a cycle: loop → loop2 → loop" in wait_pipeline(p, "loop", False)["message"]
        with pytest.raises(BerthError) as info:
            p.gateway.infer("both.pipeline", IRIS_INPUT)
        assert info.value.code == "PipelineNotReady" and "step iris2: model iris2 not found" in info.value.message
        p.client.apply([model_doc("iris2", str(model))])  # the missing step model arrives: re-evaluated
        wait_pipeline(p, "both", True, "pipeline ready")
        deadline = time.monotonic() + 20
        while True:  # the gateway gets the new table within a push
            try:
                res = p.gateway.infer("both.pipeline", IRIS_INPUT)
                break
            except BerthError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert {o["name"]: o["data"] for o in res.body["outputs"]} == {"first": [0, 2], "second": [0, 2]}
        assert res.route.startswith(":both.pipeline:") and set(res.route.strip(":").split(":")[1:]) == {"iris", "iris2"}
        server = ("--server", p.control.url, "--gateway", p.gateway_url)
        r = cli(*server, "get", "pipelines", "-o", "wide")
        rows = {line.split()[0]: line for line in r.out.splitlines()[1:]}
        assert "True" in rows["both"] and "iris, iris2" in rows["both"]
        assert "False" in rows["loop"] and "pipelines form a cycle" in rows["loop"]
        r = cli(*server, "describe", "pipeline", "both")
        assert r.code == 0 and "both.pipeline" in r.out and "Steps" in r.out
        assert any(line.split()[:1] == ["iris2"] and "True" in line for line in r.out.splitlines()), r.out
        r = cli(*server, "infer", "both.pipeline", "-d", json.dumps(IRIS_INPUT), "-o", "json")
        assert r.code == 0, r.err
        assert [o["name"] for o in json.loads(r.out)["outputs"]] == ["first", "second"]
        r = cli(*server, "describe", "pipeline", "loop")
        assert "cycle" in r.out
