"""Autoscaling end to end (docs/autoscaling.md): real MLServer replicas, the real gateway and its usage reports,
a load generator.  A model under sustained load scales up to a second replica, and back down once the load
falls to a trickle, with no failed request; the decisions are in the status (with reasons), in
`berth describe` and in the control plane's metric."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.load import Traffic
from tests.support.models import IRIS_INPUT, train_sklearn
from tests.support.platform import Platform, model_doc, server_doc
from tests.support.servers import auth_headers

pytestmark = pytest.mark.e2e

ANNOTATIONS = {"berth.io/autoscale-target-inflight": "0.5", "berth.io/autoscale-up-after": "1",
               "berth.io/autoscale-down-after": "3"}


def wait_scaled(platform: Platform, replicas: int, timeout: float) -> dict[str, Any]:
    """The model's status once autoscaling decided ``replicas`` and that many are available and routed."""
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = platform.client.get("Model", "default", "iris").get("status") or {}
        if (st.get("autoscaling") or {}).get("replicas") == replicas and st.get("availableReplicas") == replicas \
                and len(platform.routed_endpoints("iris")) == replicas:
            return st
        time.sleep(0.2)
    raise AssertionError(f"iris not at {replicas} replicas in {timeout}s: {st.get('autoscaling')}, "
                         f"available {st.get('availableReplicas')}")


@pytest.mark.timeout(240)
def test_a_model_under_load_scales_up_then_down_without_failed_requests(tmp_path: Path) -> None:
    iris = train_sklearn(tmp_path / "iris")
    with Platform(tmp_path / "data") as platform:
        platform.client.apply([server_doc("mlserver", replicas=2)])
        platform.wait_server("mlserver", ready_replicas=2, timeout=120)
        started = time.monotonic()
        doc = model_doc("iris", f"file://{iris}", minReplicas=1, maxReplicas=2)
        doc["metadata"]["annotations"] = ANNOTATIONS
        platform.client.apply([doc])
        platform.wait_model("iris", available=1, timeout=60)
        # the autoscaler's first decision comes on its own tick, possibly a pass after the model is available
        wait_scaled(platform, 1, timeout=30)
        assert platform.client.get("Model", "default", "iris")["spec"].get("replicas") is None
        with Traffic(platform.gateway_url, "iris", rest_threads=6, pause=0.0, timeout=30) as heavy:
            up = wait_scaled(platform, 2, timeout=40)
            scaled_up_s = time.monotonic() - started
            time.sleep(1.0)  # both replicas answer under load
        with Traffic(platform.gateway_url, "iris", rest_threads=1, pause=0.2, timeout=30) as trickle:
            down = wait_scaled(platform, 1, timeout=40)
            time.sleep(2.0)  # the replica scaled away drains, then unloads, while requests keep coming
        total_s = time.monotonic() - started
        assert not heavy.failures and not trickle.failures, (heavy.failures[:3], trickle.failures[:3])
        assert heavy.answers > 50 and trickle.answers > 5, (heavy.answers, trickle.answers)
        ups = [e for e in up["autoscaling"]["events"] if e["direction"] == "up"]
        assert ups and ups[-1]["previous"] == 1 and ups[-1]["replicas"] == 2
        assert "requests in flight per replica, over the target 0.5" in ups[-1]["reason"], ups[-1]
        downs = [e for e in down["autoscaling"]["events"] if e["direction"] == "down"]
        assert downs and downs[-1]["replicas"] == 1 and "under half the target" in downs[-1]["reason"], downs
        assert platform.client.get("Model", "default", "iris")["spec"].get("replicas") is None  # spec untouched
        metrics = httpx.get(f"{platform.control.url}/metrics", headers=auth_headers(), timeout=10).text
        assert 'berth_autoscale_decisions_total{direction="up",kind="Model",namespace="default"} 1.0' in metrics
        assert 'berth_autoscale_decisions_total{direction="down",kind="Model",namespace="default"}' in metrics
        assert 'berth_usage_reports_total{outcome="accepted"}' in metrics
        env = {k: v for k, v in os.environ.items() if k not in ("LINES", "BERTH_ADDRESS")}
        env.update(BERTH_TOKEN=platform.control.admin_token or "", COLUMNS="200")
        described = subprocess.run([sys.executable, "-m", "berth.main", "--server", platform.control.url, "describe",
                                    "model", "iris"], env=env, capture_output=True, text=True, timeout=60,
                                   stdin=subprocess.DEVNULL)
        assert described.returncode == 0, described.stderr
        assert "Autoscaling: 1 replicas (min 1, max 2)" in described.stdout, described.stdout
        assert "1 -> 2" in described.stdout and "2 -> 1" in described.stdout, described.stdout
    print(f"\nscaled up {scaled_up_s:.1f}s after apply; whole scenario {total_s:.1f}s; "
          f"{heavy.answers} answers under load, {trickle.answers} while scaling down")


@pytest.mark.timeout(240)
def test_a_server_grows_a_replica_for_a_model_that_needs_room_and_shrinks_when_it_leaves(tmp_path: Path) -> None:
    iris = train_sklearn(tmp_path / "iris")
    with Platform(tmp_path / "data") as platform:  # replicas of 1 GiB (+10% overcommit): one 600Mi model each
        pool = server_doc("pool")
        del pool["spec"]["replicas"]
        pool["spec"].update(minReplicas=1, maxReplicas=2)
        pool["metadata"]["annotations"] = {"berth.io/autoscale-up-after": "1", "berth.io/autoscale-down-after": "3"}
        platform.client.apply([pool])
        platform.wait_server("pool", ready_replicas=1, timeout=120)
        started = time.monotonic()
        platform.client.apply([model_doc(name, f"file://{iris}", memory="600Mi", server="pool") for name in "ab"])
        platform.wait_model("a", available=1, timeout=60)
        platform.wait_model("b", available=1, timeout=120)  # on a second replica, started for it
        grown_s = time.monotonic() - started
        st = platform.wait_server("pool", ready_replicas=2, timeout=10)
        (up,) = st["autoscaling"]["events"]
        assert (up["direction"], up["previous"], up["replicas"]) == ("up", 1, 2)
        assert "cannot be placed for lack of room (b)" in up["reason"] or "(a)" in up["reason"], up
        assert platform.client.get("Server", "default", "pool")["spec"].get("replicas") is None  # spec untouched
        platform.client.delete("Model", "default", "b")
        st = platform.wait_server("pool", ready_replicas=1, timeout=60)
        down = st["autoscaling"]["events"][-1]
        assert (down["direction"], down["replicas"]) == ("down", 1) and "replica 1 holds no model" in down["reason"]
        answer = platform.gateway.infer("a", IRIS_INPUT)  # model a still answers after the shrink
        assert answer.status == 200 and answer.body["outputs"], answer
        metrics = httpx.get(f"{platform.control.url}/metrics", headers=auth_headers(), timeout=10).text
        assert 'berth_autoscale_decisions_total{direction="up",kind="Server",namespace="default"} 1.0' in metrics
    print(f"\nserver grew and model b was available {grown_s:.1f}s after apply")
