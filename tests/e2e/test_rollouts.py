"""Updates that drop nothing: under steady REST and gRPC traffic through the gateway, a new artifact loads
beside the serving one and every answer after the switch comes from it; a broken artifact leaves the old one
serving with MLServer's error in the status; `berth rollout status|undo` follow and revert (docs/rollouts.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.load import Traffic
from tests.support.models import train_sklearn
from tests.support.platform import Platform, model_doc, server_doc

pytestmark = pytest.mark.e2e

OLD_ANSWER, NEW_ANSWER = [0, 2], [10, 12]  # what the two models predict for IRIS_INPUT


def train_shifted(folder: Path) -> Path:
    """A LogisticRegression on iris whose classes are 10, 11, 12: answers unlike train_sklearn's model."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=300).fit(x, y + 10), folder / "model.joblib")
    return folder


def broken(folder: Path) -> Path:
    """An artifact MLServer fails to load: model.joblib that is not a pickle."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.joblib").write_bytes(b"this is not a joblib file\n" * 10)
    return folder


def cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "BERTH_ADDRESS")}
    env["BERTH_TOKEN"] = platform.control.admin_token or ""
    return subprocess.run([sys.executable, "-m", "berth.main", "--server", platform.control.url, *args],
                          capture_output=True, text=True, env=env, timeout=180, stdin=subprocess.DEVNULL)


def rollout(platform: Platform, name: str, state: str, timeout: float = 90.0) -> dict[str, Any]:
    """The model's status once its rollout of the current generation reached ``state``."""
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = platform.client.get("Model", "default", name)
        st = doc.get("status") or {}
        if st.get("observedGeneration") == doc["metadata"]["generation"] and \
                (st.get("rollout") or {}).get("state") == state:
            return st
        time.sleep(0.1)
    raise AssertionError(f"rollout of {name} not {state} in {timeout}s; last status: {st.get('rollout')} "
                         f"{st.get('state')}: {st.get('message')}")


def check_switch(rows: list[tuple[float, float, str, list[int]]], old: str, new: str) -> None:
    """Answers went from ``old`` to ``new`` once, for every client at once: nothing sent after the first
    answer of the new version was answered by the old one, and each version answered its own predictions."""
    assert {r[2] for r in rows} <= {old, new}, {r[2] for r in rows}
    for _, _, who, outputs in rows:
        assert outputs == (OLD_ANSWER if who == old else NEW_ANSWER), (who, outputs)
    first_new = min(r[1] for r in rows if r[2] == new)
    late_old = [r for r in rows if r[2] == old and r[0] > first_new]
    assert not late_old, f"{len(late_old)} request(s) sent after the switch were answered by the old version"


@pytest.mark.timeout(480)  # two MLServer replicas and three rollouts on a shared machine
@pytest.mark.parametrize("replicas", [1, 2])
def test_update_and_broken_update_under_traffic_drop_nothing(tmp_path: Path, replicas: int) -> None:
    v1 = train_sklearn(tmp_path / "v1")
    v2 = train_shifted(tmp_path / "v2")
    bad = broken(tmp_path / "bad")
    t0 = time.monotonic()
    with Platform(tmp_path / "data") as platform:
        platform.client.apply([server_doc("mlserver", replicas=replicas)])
        platform.wait_server("mlserver", ready_replicas=replicas, timeout=120)
        platform.client.apply([model_doc("iris", f"file://{v1}", replicas=replicas)])
        platform.wait_model("iris", available=replicas, timeout=90)
        ready = time.monotonic()
        with Traffic(platform.gateway_url, "iris", rest_threads=2, grpc_address=platform.gateway_grpc,
                     grpc_threads=1, pause=0.002, record=True) as traffic:
            time.sleep(0.5)
            # a good update: generation 2 loads beside generation 1, routes switch, generation 1 goes
            started = time.monotonic()
            platform.client.apply([model_doc("iris", f"file://{v2}", replicas=replicas)])
            done = cli(platform, "rollout", "status", "model/iris", "--timeout", "90s")
            assert done.returncode == 0, done.stdout + done.stderr
            assert "successfully rolled out" in done.stdout
            st = platform.client.get("Model", "default", "iris")["status"]
            assert st["servingGeneration"] == 2 and st["availableReplicas"] == replicas
            time.sleep(1.5)  # the old version drains, then unloads, under traffic
            update = traffic.since(started)
            switch_s = min(r[1] for r in update if r[2] == "iris_2") - started
            check_switch(update, "iris", "iris_2")
            assert update[-1][2] == "iris_2"
            # a broken update: generation 3 fails to load, generation 2 keeps serving and the status says why
            broke_at = time.monotonic()
            platform.client.apply([model_doc("iris", f"file://{bad}", replicas=replicas)])
            st = rollout(platform, "iris", "Failed")
            failed_s = time.monotonic() - broke_at
            assert st["state"] == "ModelAvailable" and st["servingGeneration"] == 2, st
            assert "generation 3 failed to load" in st["message"] and "MLServer" in st["message"], st["message"]
            failed = cli(platform, "rollout", "status", "model/iris", "--timeout", "10s")
            assert failed.returncode != 0 and "rollout failed" in failed.stderr, failed.stdout + failed.stderr
            described = cli(platform, "describe", "model", "iris")
            assert described.returncode == 0 and "Versions" in described.stdout, described.stdout
            time.sleep(1.0)
            assert {r[2] for r in traffic.since(broke_at)} == {"iris_2"}
            # undo: back to generation 2's artifact, as a new generation rolled out the same way
            undo_at = time.monotonic()
            undone = cli(platform, "rollout", "undo", "model/iris")
            assert undone.returncode == 0, undone.stdout + undone.stderr
            spec = platform.client.get("Model", "default", "iris")["spec"]
            assert spec["storageUri"] == f"file://{v2}"
            assert cli(platform, "rollout", "status", "model/iris", "--timeout", "90s").returncode == 0
            time.sleep(1.5)
            after_undo = traffic.since(undo_at)
        assert not traffic.failures, f"{len(traffic.failures)} failed of {len(traffic.rows)}: {traffic.failures[:5]}"
        assert {r[2] for r in after_undo} <= {"iris_2", "iris_4"} and after_undo[-1][2] == "iris_4"
        assert all(r[3] == NEW_ANSWER for r in after_undo)
        assert len(traffic.rows) > 200 and traffic.grpc_ok > 20, (len(traffic.rows), traffic.grpc_ok)
        routes = [r for r in platform.client.routes()["models"] if r["name"] == "iris"]
        assert routes[0]["upstream"] == "iris_4" and len(routes[0]["endpoints"]) == replicas
        print(f"\nreplicas={replicas}: {len(traffic.rows)} answers ({traffic.grpc_ok} gRPC), 0 failures; "
              f"set-up {ready - t0:.1f}s, apply->first answer of the new version {switch_s:.2f}s, "
              f"apply->status Failed {failed_s:.2f}s, total {time.monotonic() - t0:.1f}s")
