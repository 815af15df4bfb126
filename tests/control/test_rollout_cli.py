"""`berth rollout status|undo` against a real control plane (no inference server needed: a model that cannot be
placed still records its versions), attacked as a hostile client would: a viewer cannot undo, a token of
another namespace learns nothing, and every refusal is audited."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.client.http import BerthClient
from tests.support.platform import model_doc
from tests.support.servers import ControlPlane

NS = "team-a"


def berth(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "BERTH_ADDRESS", "BERTH_TOKEN")}
    env["BERTH_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "berth.main", "--server", url, *args], capture_output=True,
                          text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)


def observed(client: BerthClient, generation: int) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        doc = client.get("Model", NS, "iris")
        if (doc.get("status") or {}).get("observedGeneration") == generation:
            return doc
        assert time.monotonic() < deadline, f"generation {generation} not observed: {doc.get('status')}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, BerthClient]]:
    with ControlPlane(Path(tmp_path_factory.mktemp("rollout-cli"))) as cp:
        client = BerthClient(cp.url, token=cp.admin_token)
        client.apply([model_doc("iris", "file:///models/v1", namespace=NS)])
        observed(client, 1)
        client.apply([model_doc("iris", "file:///models/v2", namespace=NS, replicas=1)])
        observed(client, 2)
        yield cp, client
        client.close()


def test_status_and_undo_are_refused_to_callers_without_the_role(plane: tuple[ControlPlane, BerthClient]) -> None:
    cp, admin = plane
    viewer = admin.create_token("rollout-viewer", grants={NS: "viewer"})["token"]
    stranger = admin.create_token("rollout-stranger", grants={"team-b": "editor"})["token"]
    st = admin.get("Model", NS, "iris")["status"]
    assert st["rollout"]["previous"]["artifact"]["storageUri"] == "file:///models/v1"

    seen = berth(cp.url, viewer, "rollout", "status", "model/iris", "-n", NS, "--no-watch")
    assert seen.returncode == 0, seen.stderr  # a viewer may follow a rollout
    refused = berth(cp.url, viewer, "rollout", "undo", "model/iris", "-n", NS)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "forbidden" in refused.stderr.lower(), refused.stderr
    for args in (("status", "--no-watch"), ("undo",)):
        other = berth(cp.url, stranger, "rollout", args[0], "model/iris", "-n", NS, *args[1:])
        assert other.returncode != 0 and "file:///models" not in other.stdout + other.stderr, other.stderr
    assert admin.get("Model", NS, "iris")["spec"]["storageUri"] == "file:///models/v2"  # nothing changed
    audited = [r for r in admin.audit(namespace=NS) if r["outcome"] != "ok"]
    assert any(r["principal"] == "rollout-viewer" for r in audited), audited


def test_undo_reapplies_the_previous_artifact_as_a_new_generation(plane: tuple[ControlPlane, BerthClient]) -> None:
    cp, admin = plane
    assert cp.admin_token is not None
    bad = berth(cp.url, cp.admin_token, "rollout", "undo", "deployment/iris", "-n", NS)
    assert bad.returncode != 0 and "expected model/NAME" in bad.stderr, bad.stderr
    done = berth(cp.url, cp.admin_token, "rollout", "undo", "model/iris", "-n", NS)
    assert done.returncode == 0, done.stderr
    doc = observed(admin, 3)
    assert doc["spec"]["storageUri"] == "file:///models/v1" and doc["spec"]["replicas"] == 1
    rollout = doc["status"]["rollout"]
    assert rollout["desiredGeneration"] == 3
    assert rollout["previous"]["artifact"]["storageUri"] == "file:///models/v2"
    waited = berth(cp.url, cp.admin_token, "rollout", "status", "model/iris", "-n", NS, "--timeout", "1s")
    assert waited.returncode != 0 and "timed out" in waited.stderr, waited.stderr  # nowhere to load it
