"""Self-healing: a model waits for its server; a replica killed under traffic loses no request and
comes back; the control plane killed under traffic comes back without reloading anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from berth.adapters.mlserver_proc import free_ports
from tests.support.load import Traffic
from tests.support.models import train_sklearn
from tests.support.platform import Platform, model_doc, server_doc
from tests.support.servers import wait_http

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sklearn(tmp_path_factory.mktemp("models") / "iris")


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with Platform(tmp_path / "berth") as p:
        yield p


def _mlserver_pid(data: Path, ns: str, server: str, index: int) -> int | None:
    needle = str(data / "replicas" / ns / f"{server}-{index}" / "mlserver")
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if needle in " ".join(proc.info["cmdline"] or []) and "start" in (proc.info["cmdline"] or []):
            return int(proc.pid)
    return None


def test_model_before_its_server_becomes_ready(platform: Platform, iris: Path) -> None:
    platform.client.apply([model_doc("early", str(iris), namespace="late")])
    st = platform.wait_model("early", "late", state="ScheduleFailed")
    assert "no servers" in st["message"] or "no server" in st["message"]
    time.sleep(10)
    platform.client.apply([server_doc("mlserver", namespace="late")])
    started = time.monotonic()
    platform.wait_model("early", "late", timeout=60)
    assert time.monotonic() - started < 30


def test_replica_killed_under_traffic_loses_nothing(platform: Platform, iris: Path) -> None:
    data = platform.control.opts.data_dir.resolve()
    platform.client.apply([server_doc("pool", replicas=2), model_doc("twin", str(iris), replicas=2)])
    platform.wait_model("twin", available=2, timeout=90)
    victim = _mlserver_pid(data, "default", "pool", 1)
    assert victim is not None
    rows = platform.client.get("Server", "default", "pool")["status"]["replicaStatus"]
    old_address = next(r["address"] for r in rows if r["index"] == 1)
    with Traffic(platform.gateway_url, "twin", grpc_address=platform.gateway_grpc, grpc_threads=2) as traffic:
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        # the replica comes back (new MLServer and agent) and the model is on 2 replicas again
        deadline = killed + 60
        back = restored = None
        while time.monotonic() < deadline:
            st = platform.client.get("Server", "default", "pool")["status"]
            rows = {r["index"]: r for r in st["replicaStatus"]}
            new = rows.get(1, {})
            if back is None and new.get("ready") and new.get("address") not in (None, old_address):
                back = time.monotonic()
            m = platform.client.get("Model", "default", "twin")["status"]
            if back is not None and m["availableReplicas"] == 2:
                restored = time.monotonic()
                break
            time.sleep(0.05)
        time.sleep(0.5)
    assert back is not None and restored is not None, "replica 1 did not come back"
    print(f"\nreplica ready again {back - killed:.2f}s after kill -9 (new MLServer); model on 2 replicas "
          f"{restored - back:.2f}s later; "
          f"{traffic.ok} REST and {traffic.grpc_ok} gRPC requests ok, {len(traffic.failures)} failed")
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.ok > 50
    assert traffic.grpc_ok > 50
    assert restored - back <= 20.0  # about 2 s on an idle machine: a generous bound for a loaded one


def test_control_plane_killed_under_traffic(tmp_path: Path, iris: Path) -> None:
    data = tmp_path / "data"
    cport, gport, grpc = free_ports(3)
    env = dict(os.environ, BERTH_ADDRESS=f"127.0.0.1:{cport}", BERTH_GATEWAY=f"127.0.0.1:{gport}")
    env.pop("BERTH_TOKEN", None)  # the CLI finds the token `berth up` registered (discovery)
    berth = [sys.executable, "-m", "berth.main"]
    up = subprocess.Popen(berth + ["up", "--data-dir", str(data), "--control-port", str(cport),
                                   "--gateway-port", str(gport), "--grpc-port", str(grpc)],
                          env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert up.stderr is not None
        while "gateway (V2)" not in (line := up.stderr.readline()):
            assert line, "berth up ended before it was up"
        doc = (f"apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {{name: iris}}\n"
               f"spec: {{storageUri: '{iris}'}}\n")
        subprocess.run(berth + ["apply", "-f", "-"], input=doc, env=env, check=True, capture_output=True, text=True)
        subprocess.run(berth + ["wait", "model/iris", "--timeout=60s"], env=env, check=True, capture_output=True)
        mls_before = _mlserver_pid(data.resolve(), "default", "mlserver", 0)
        control = next(p for p in psutil.Process(up.pid).children()
                       if "control" in p.cmdline() and "--provision" in p.cmdline())
        with Traffic(f"http://127.0.0.1:{gport}", "iris", grpc_address=f"127.0.0.1:{grpc}", grpc_threads=2) as traffic:
            time.sleep(0.5)
            control.kill()
            assert wait_http(f"http://127.0.0.1:{cport}/healthz", 30), "berth up did not restart the control plane"
            r = subprocess.run(berth + ["wait", "model/iris", "--timeout=30s"], env=env, capture_output=True)
            assert r.returncode == 0, r.stderr
            time.sleep(1.0)
        assert traffic.failures == [], traffic.failures[:5]
        assert traffic.ok > 50
        assert traffic.grpc_ok > 50
        # the same MLServer still serves, and it loaded the model exactly once
        assert _mlserver_pid(data.resolve(), "default", "mlserver", 0) == mls_before
        log = (data / "replicas" / "default" / "mlserver-0" / "mlserver" / "mlserver.log").read_text()
        assert log.count("Loaded model 'iris' successfully") == 1
        auth = {"Authorization": f"Bearer {(data / 'admin.token').read_text().strip()}"}
        st = httpx.get(f"http://127.0.0.1:{cport}/api/v1/namespaces/default/models/iris",
                       headers=auth).json()["status"]
        assert st["state"] == "ModelAvailable"
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
