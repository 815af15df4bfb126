"""An artifact may not choose the code MLServer runs unless its Server allows it, and MLServer holds none of
the platform's secrets: the real platform (control plane, provisioner, agent, MLServer) on loopback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil
import pytest

from berth.adapters import settings
from tests.support.models import train_sklearn
from tests.support.platform import Platform, model_doc, server_doc

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/environ")
def test_custom_runtime_needs_the_servers_consent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "platform-secret-7f3a")  # in the control plane's environment
    artifact = train_sklearn(tmp_path / "artifacts" / "iris")
    # the artifact picks the scikit-learn class although the model's requirements select MLflow's
    (artifact / settings.SETTINGS_FILE).write_text(json.dumps({
        "name": "iris", "implementation": settings.SKLEARN, "parameters": {"uri": "./model.joblib"}}))
    with Platform(tmp_path / "data") as p:
        server = server_doc("mlserver", capabilities=["sklearn", "mlflow"])
        p.client.apply([server, model_doc("iris", str(artifact), requirements=["mlflow"])])
        st = p.wait_model("iris", state="LoadFailed", timeout=120)
        assert f"names implementation '{settings.SKLEARN}', but the model's requirements ['mlflow'] select " \
               f"{settings.MLFLOW}" in st["message"], st["message"]
        assert 'berth.io/allow-custom-runtime: "true"' in st["message"]
        # the replica's MLServer started without the platform's environment
        servers = [proc for proc in psutil.process_iter(["cmdline"])
                   if "start" in (proc.info["cmdline"] or []) and any(str(tmp_path) in a for a in proc.info["cmdline"])
                   and any(a.endswith("mlserver") for a in proc.info["cmdline"][:2])]
        assert servers, "no MLServer process of this platform found"
        for proc in servers:
            environ = proc.environ()
            assert "platform-secret-7f3a" not in environ.values()
            assert not [k for k in environ if k.startswith(("BERTH_", "AWS_"))], sorted(environ)
        # the Server consents: the same artifact loads (the failed load is retried, not re-applied)
        server["metadata"]["annotations"] = {settings.CUSTOM_RUNTIME_ANNOTATION: "true"}
        p.client.apply([server])
        p.wait_model("iris", timeout=120)
