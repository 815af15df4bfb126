"""An artifact's own model-settings.json is data, not code: hostile settings are refused naming what was
refused, unless the Server allows custom runtimes; inference servers start with a scrubbed environment."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from berth.adapters import settings
from berth.adapters.mlserver_proc import scrubbed_env
from berth.errors import LoadError


def artifact(tmp_path: Path, own: dict | None, files: tuple[str, ...] = ("model.joblib",)) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"0")
    if own is not None:
        (folder / settings.SETTINGS_FILE).write_text(json.dumps(own))
    return folder


@pytest.mark.parametrize(("own", "requirements", "why"), [
    ({"implementation": "os.system"}, ["sklearn"],
     "names implementation 'os.system', but the model's requirements ['sklearn'] select mlserver_sklearn.SKLearnModel"),
    ({"implementation": "evil_pkg.Payload"}, [], "names implementation 'evil_pkg.Payload'"),
    ({"implementation": settings.SKLEARN}, ["mlflow"], "select mlserver_mlflow.MLflowRuntime"),
    ({"implementation": settings.SKLEARN, "parameters": {"environment_tarball": "./env.tar.gz"}}, ["sklearn"],
     "sets parameters.environment_tarball"),
    ({"parameters": {"environment_path": "/opt/conda/envs/x"}}, ["sklearn"], "sets parameters.environment_path"),
    ({"implementation": settings.SKLEARN, "parameters": {"uri": "/etc/shadow"}}, ["sklearn"],
     "sets parameters.uri '/etc/shadow', outside the artifact's own folder"),
    ({"implementation": settings.SKLEARN, "parameters": {"uri": "../../other-tenant/model.joblib"}}, ["sklearn"],
     "outside the artifact's own folder"),
])
def test_hostile_settings_are_refused(tmp_path: Path, own: dict, requirements: list[str], why: str) -> None:
    folder = artifact(tmp_path, own)
    with pytest.raises(LoadError) as err:
        settings.check_artifact_settings(folder, name="m", requirements=requirements, allow_custom=False)
    assert why in err.value.message
    assert 'berth.io/allow-custom-runtime: "true"' in err.value.message
    settings.check_artifact_settings(folder, name="m", requirements=requirements, allow_custom=True)


def test_a_symlinked_uri_may_not_leave_the_folder(tmp_path: Path) -> None:
    folder = artifact(tmp_path, {"implementation": settings.SKLEARN, "parameters": {"uri": "./model.pkl"}})
    (folder / "model.pkl").symlink_to("/etc/passwd")
    with pytest.raises(LoadError, match="outside the artifact's own folder"):
        settings.check_artifact_settings(folder, name="m", requirements=["sklearn"], allow_custom=False)


def test_what_berth_would_choose_is_allowed(tmp_path: Path) -> None:
    for own, requirements in (({"implementation": settings.SKLEARN, "parameters": {"uri": "./model.joblib"}},
                               ["sklearn"]),
                              ({"implementation": settings.SKLEARN}, []),  # chosen from the .joblib file
                              ({"implementation": settings.XGBOOST}, ["xgboost", "sklearn"]),
                              ({"name": "no implementation: MLServer's default"}, ["sklearn"]),
                              (None, ["sklearn"])):
        folder = artifact(tmp_path, own)
        settings.check_artifact_settings(folder, name="m", requirements=requirements, allow_custom=False)
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


def test_inference_servers_get_a_scrubbed_environment() -> None:
    environ = {"PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "LC_ALL": "C", "MLSERVER_DEBUG": "1",
               "HTTPS_PROXY": "http://proxy:3128", "SSL_CERT_FILE": "/etc/ca.pem", "BERTH_TOKEN": "admin-token",
               "BERTH_AGENT_TOKEN": "agent-token", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_ACCESS_KEY_ID": "AKIA",
               "GOOGLE_APPLICATION_CREDENTIALS": "/k.json", "AZURE_STORAGE_KEY": "k", "PYTHONPATH": "/evil",
               "LD_PRELOAD": "/evil.so", "DATABASE_URL": "postgres://u:p@h/db"}
    assert scrubbed_env(environ) == {"PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "LC_ALL": "C",
                                     "MLSERVER_DEBUG": "1", "HTTPS_PROXY": "http://proxy:3128",
                                     "SSL_CERT_FILE": "/etc/ca.pem"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/environ")
def test_a_started_mlserver_process_holds_none_of_our_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from berth.adapters.mlserver_proc import MLServerProcess

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak-me-7f3a")
    monkeypatch.setenv("BERTH_AGENT_TOKEN", "agent-token-7f3a")
    program = tmp_path / "mlserver"  # a stand-in: only the environment it starts with is looked at
    program.write_text("#!/bin/sh\nsleep 10\n")
    program.chmod(0o700)
    monkeypatch.setenv("BERTH_MLSERVER", str(program))
    proc = MLServerProcess(tmp_path / "work")
    child = proc.start()
    try:
        # Between fork and exec the child still holds our environment: read it once the program runs.
        deadline = time.monotonic() + 10
        while str(program).encode() not in Path(f"/proc/{child.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the stand-in MLServer never started"
            time.sleep(0.01)
        environ = Path(f"/proc/{child.pid}/environ").read_bytes()
    finally:
        child.kill()
        child.wait(10)
    assert b"leak-me-7f3a" not in environ and b"agent-token-7f3a" not in environ
    assert b"PATH=" in environ and b"MLSERVER_LOGGING_LEVEL=" in environ
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "leak-me-7f3a"  # ours untouched
