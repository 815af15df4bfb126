"""Honest capabilities: claim → runtime modules, the probe in a real interpreter, and what the scheduler and
the Server's status say about a claim whose runtime cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from berth.agent import capabilities as caps
from berth.control.hub import ReplicaRecord
from berth.control.status import server_status
from berth.scheduler import plan
from berth.scheduler.snapshot import (
    MISSING_CAPABILITIES,
    RUNTIME_NOT_IMPORTABLE,
    ModelWant,
    ReplicaInfo,
    ReplicaRef,
    ServerInfo,
    Snapshot,
)
from berth.wire import agent as wire

NS = "financial-ml"
CLAIMS = ("mlflow", "torch", "sklearn", "numpy", "python")


def test_each_served_capability_maps_to_its_runtime_modules() -> None:
    found = caps.modules_for(["sklearn", "scikit-learn", "mlflow", "xgboost", "lightgbm", "torch", "pytorch",
                              "mlserver", "python", "gpu", "Torch"])
    assert found["sklearn"] == found["scikit-learn"] == ("mlserver_sklearn", "sklearn")
    assert found["mlflow"] == ("mlserver_mlflow", "mlflow")
    assert found["xgboost"] == ("mlserver_xgboost", "xgboost")
    assert found["lightgbm"] == ("mlserver_lightgbm", "lightgbm")
    assert found["torch"] == found["pytorch"] == found["Torch"] == ("torch",)
    assert not {"mlserver", "python", "gpu"} & set(found)  # no runtime behind them: not checked


def test_problems_name_the_first_missing_module_of_each_claim() -> None:
    got = caps.problems(["xgboost", "torch", "sklearn", "gpu"],
                        {"mlserver_xgboost": "not installed", "xgboost": "not installed", "torch": "not installed"})
    assert [(p.capability, p.module) for p in got] == [("xgboost", "mlserver_xgboost"), ("torch", "torch")]
    assert caps.describe(got[1], "mlserver") == \
        "server mlserver claims torch but its MLServer cannot import torch (not installed)"


def test_probe_asks_a_real_interpreter(tmp_path: Path) -> None:
    """This venv (MLServer's in a local install) has the runtimes; a bare interpreter with a PYTHONPATH of
    stand-in modules lacks the others."""
    here = caps.probe(["sklearn", "mlflow", "torch", "xgboost", "lightgbm", "numpy"], sys.executable)
    assert (here.error, here.problems) == (None, ())
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy" / "__init__.py").write_text("")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tmp_path)
    try:
        bare = caps.probe(["numpy", "tensorflow", "catboost"], _base_python())
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    assert bare.error is None
    assert [(p.capability, p.module, p.error) for p in bare.problems] == [
        ("tensorflow", "tensorflow", "not installed"), ("catboost", "mlserver_catboost", "not installed")]


def _base_python() -> str:
    """The interpreter this venv was made from (its site-packages hold none of the venv's packages)."""
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    for line in cfg.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "executable":
            return value.strip()
    return sys.executable


def test_probe_of_a_missing_interpreter_reports_an_error_not_a_verdict(tmp_path: Path) -> None:
    got = caps.probe(["torch"], str(tmp_path / "no-python"))
    assert got.problems == () and got.error is not None and "no-python" in got.error


def test_interpreter_is_mlservers_own(tmp_path: Path) -> None:
    script = tmp_path / "mlserver"
    script.write_text(f"#!{sys.executable}\nprint('hi')\n")
    assert caps.interpreter(None, str(script)) == sys.executable
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert caps.interpreter(child.pid, "/nonexistent/mlserver") == sys.executable  # argv[0]: venv kept
    finally:
        child.kill()
        child.wait()
    (tmp_path / "plain").write_text("no shebang\n")
    assert caps.interpreter(None, str(tmp_path / "plain")) == sys.executable  # falls back to the agent's


def _snapshot(unimportable: tuple[tuple[str, str], ...], requirements: tuple[str, ...]) -> Snapshot:
    server = ServerInfo("mlserver", NS, CLAIMS, desired_replicas=2)
    reps = tuple(ReplicaInfo("mlserver", NS, i, capabilities=CLAIMS, memory=2**30, ready=True,
                             unimportable=unimportable) for i in range(2))
    return Snapshot(NS, (ModelWant("baseline-predictor", NS, requirements),), (server,), reps)


def test_scheduler_says_the_claim_cannot_be_imported() -> None:
    mp = plan(_snapshot((("torch", "torch"),), ("mlflow", "torch", "numpy"))).models["baseline-predictor"]
    assert mp.state == "ScheduleFailed" and mp.replicas == ()
    assert {r.code for r in mp.reasons} == {RUNTIME_NOT_IMPORTABLE}
    assert "server mlserver claims torch but its MLServer cannot import torch" in mp.message
    assert mp.message.count("claims torch") == 1  # both replicas fold into one line


def test_a_model_not_needing_the_broken_runtime_is_placed() -> None:
    mp = plan(_snapshot((("torch", "torch"),), ("mlflow", "numpy"))).models["baseline-predictor"]
    assert mp.replicas == (ReplicaRef("mlserver", 0),) and mp.reasons == ()


def test_a_capability_never_claimed_stays_a_missing_capability() -> None:
    mp = plan(_snapshot((("torch", "torch"),), ("torch", "xgboost"))).models["baseline-predictor"]
    assert {r.code for r in mp.reasons} == {MISSING_CAPABILITIES}
    assert "lacks capability xgboost" in mp.message


def test_server_status_carries_the_unimportable_claims() -> None:
    def record(index: int, bad: list[wire.CapabilityProblem]) -> ReplicaRecord:
        hello = wire.Hello(namespace=NS, server="mlserver", replica=index, capabilities=list(CLAIMS),
                           readiness=wire.Readiness(ready=True), unavailable=bad, probed_with=sys.executable)
        return ReplicaRecord(key=(NS, "mlserver", index), hello=hello, readiness=hello.readiness)

    torch = wire.CapabilityProblem(capability="torch", module="torch", error="not installed")
    doc = {"metadata": {"name": "mlserver", "namespace": NS, "generation": 1},
           "spec": {"serverConfig": "mlserver", "capabilities": list(CLAIMS), "replicas": 2}}
    st = server_status(doc, 2, [record(0, [torch]), record(1, [torch])], 0.0)
    cond = next(c for c in st["conditions"] if c["type"] == "CapabilitiesAvailable")
    assert cond["status"] == "False" and cond["reason"] == "RuntimeNotImportable"
    assert cond["message"] == "server mlserver claims torch but its MLServer cannot import torch (not installed)"
    assert st["replicaStatus"][0]["unavailableCapabilities"] == [torch.model_dump()]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"  # the server serves what it can; only the claim is wrong
    one = server_status(doc, 2, [record(0, []), record(1, [torch])], 0.0)
    cond = next(c for c in one["conditions"] if c["type"] == "CapabilitiesAvailable")
    assert cond["message"].startswith("server mlserver replica 1 claims torch")


def test_doctor_row_per_agent() -> None:
    from berth.cli.doctor_rows import capability_rows

    base = {"namespace": "default", "server": "s", "connected": True, "probedWith": "/venv/bin/python"}
    rows = capability_rows([
        {**base, "replica": 0, "unavailableCapabilities": []},
        {**base, "replica": 1, "unavailableCapabilities": [
            {"capability": "torch", "module": "torch", "error": "not installed"}]},
        {**base, "replica": 2, "probedWith": None},
        {**base, "replica": 3, "connected": False},
    ])
    assert [r.ok for r in rows] == [True, False, None, None]
    assert "server s claims torch but its MLServer cannot import torch (not installed)" in rows[1].detail
    assert "/venv/bin/python -m pip install" in rows[1].detail and "remove torch" in rows[1].detail
