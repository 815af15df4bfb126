"""The CLI reads statuses through their typed shapes (issue 18): tables and `describe` for a resource with no
status yet and with a full one."""

from __future__ import annotations

from typing import Any

import pytest

from berth.cli import describe_cmd, render

COND = {"type": "Ready", "status": "False", "reason": "NotReady", "message": "step b: model b is not ready",
        "lastTransitionTime": "2026-01-01T00:00:00Z"}


def doc(kind: str, status: dict[str, Any] | None = None, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": "x", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec or {}, **({"status": status} if status is not None else {})}


def printed(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().out.split())


def test_rows_before_and_after_the_first_pass() -> None:
    assert render.ready_text(doc("Model")) == "[yellow]Unknown[/yellow]"
    assert render.model_row(doc("Model", spec={"replicas": 2}), True)[2:4] == ["2", "0"]
    assert render.pipeline_row(doc("Pipeline", {"conditions": [COND]}), True)[-1] == COND["message"]
    assert render.ready_text(doc("Pipeline", {"conditions": [COND]})) == "[red]False[/red]"
    assert render.server_row(doc("Server", {}), True)[2] == "0/1"


def test_describe_pipeline_reads_its_steps_typed(capsys: pytest.CaptureFixture[str]) -> None:
    spec = {"steps": [{"name": "a"}, {"name": "b", "inputs": ["a"]}]}
    render.describe_pipeline(doc("Pipeline", spec=spec))  # no status yet
    text = printed(capsys)
    assert "Message -" in text and text.count("Unknown") == 3  # Ready and both steps
    status = {"conditions": [{**COND, "type": "PipelineReady"}, COND], "message": COND["message"],
              "steps": [{"name": "a", "ready": True, "message": "ready"},
                        {"name": "b", "ready": False, "message": "model b is not ready"}]}
    render.describe_pipeline(doc("Pipeline", status, spec))
    text = printed(capsys)
    assert "step b: model b is not ready" in text and "a (pipeline inputs) - inner True ready" in text
    assert "b a - inner False model b is not ready" in text


def test_describe_model_and_server_with_and_without_status(capsys: pytest.CaptureFixture[str]) -> None:
    describe_cmd.describe_model(doc("Model", spec={"storageUri": "s3://b/m"}))
    describe_cmd.describe_server(doc("Server"))
    text = printed(capsys)
    assert "(no status yet)" in text and "(not checked yet)" in text
    model_status = {"state": "ModelAvailable", "conditions": [COND],
                    "replicaStatus": {"mlserver/0": {"state": "Loaded", "message": "loaded"}},
                    "placement": {"reasons": [{"code": "NoMemory", "message": "replica 1 is full", "server": "mlserver",
                                               "replica": 1}]}}
    describe_cmd.describe_model(doc("Model", model_status, {"storageUri": "s3://b/m"}))
    text = printed(capsys)
    assert "mlserver 0 Loaded loaded" in text and "mlserver 1 NoMemory replica 1 is full" in text
    server_status = {"replicas": 1, "readyReplicas": 1, "conditions": [
        {**COND, "type": "CapabilitiesAvailable", "status": "True", "message": "sklearn"}],
        "replicaStatus": [{"index": 0, "connected": True, "ready": True, "message": "", "models": ["iris"]}]}
    describe_cmd.describe_server(doc("Server", server_status))
    text = printed(capsys)
    assert "ok: sklearn" in text and "0 True True" in text and "iris" in text
