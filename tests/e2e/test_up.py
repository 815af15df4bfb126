"""`berth up` as a user runs it: one command, ready, a bare Model served, Ctrl-C leaves no process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from berth.adapters.mlserver_proc import free_ports
from tests.support.models import train_sklearn

pytestmark = pytest.mark.e2e
BERTH = [sys.executable, "-m", "berth.main"]


def _run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(BERTH + list(args), env=env, capture_output=True, text=True, timeout=timeout)


def _ours(data: Path) -> list[int]:
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if str(data) in " ".join(proc.info["cmdline"] or []) or \
                    proc.environ().get("BERTH_DATA_DIR", "").startswith(str(data)):
                out.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


IRIS_JSON = '{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2,6.7,3.0,5.2,2.3]}]}'


def test_up_serves_and_stops_clean(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cport, gport, grpc = free_ports(3)
    env = dict(os.environ, BERTH_ADDRESS=f"127.0.0.1:{cport}", BERTH_GATEWAY=f"127.0.0.1:{gport}",
               BERTH_GATEWAY_GRPC=f"127.0.0.1:{grpc}")
    env.pop("BERTH_TOKEN", None)  # the CLI finds the token `berth up` registered (discovery)
    up = subprocess.Popen(BERTH + ["up", "--data-dir", str(data), "--control-port", str(cport),
                                   "--gateway-port", str(gport), "--grpc-port", str(grpc)],
                          env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert up.stderr is not None
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = up.stderr.readline()
            lines.append(line)
            if "gateway (V2)" in line or not line:
                break
        assert any("berth is up" in x for x in lines), "".join(lines)
        assert any(f"127.0.0.1:{gport}" in x for x in lines)
        r = _run(env, "get", "servers")
        assert r.returncode == 0 and "mlserver" in r.stdout and "True" in r.stdout
        model = train_sklearn(tmp_path / "iris")
        doc = (f"apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {{name: iris}}\n"
               f"spec: {{storageUri: '{model}', requirements: [sklearn]}}\n")
        r = subprocess.run(BERTH + ["apply", "-f", "-"], input=doc, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        r = _run(env, "wait", "model/iris", "--for=condition=Ready", "--timeout=60s")
        assert r.returncode == 0, r.stderr
        r = _run(env, "infer", "iris", "-d",
                 '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}')
        assert r.returncode == 0 and '"data": [\n        0\n      ]' in r.stdout, r.stdout + r.stderr
        rest = json.loads(_run(env, "infer", "iris", "-o", "json", "-d", IRIS_JSON).stdout)
        r = _run(env, "infer", "iris", "--inference-mode", "grpc", "-o", "json", "-d", IRIS_JSON)
        assert r.returncode == 0, r.stderr
        via_grpc = json.loads(r.stdout)
        assert via_grpc["model_name"] == rest["model_name"] == "iris"
        assert [o["data"] for o in via_grpc["outputs"]] == [o["data"] for o in rest["outputs"]]
        r = _run(env, "infer", "iris", "--inference-mode", "grpc", "-i", "20", "-o", "json", "-d", IRIS_JSON)
        summary = json.loads(r.stdout)
        assert (summary["ok"], summary["routes"]) == (20, {":iris:": 20}), r.stdout + r.stderr
        assert 0 < summary["latencyMs"]["p50"] <= summary["latencyMs"]["max"]
        r = _run(env, "infer", "iris", "-o", "yaml", "-d", IRIS_JSON)
        assert r.returncode == 0 and "model_name: iris" in r.stdout, r.stdout + r.stderr
        r = _run(env, "infer", "nosuch", "--inference-mode", "grpc", "-d", IRIS_JSON)
        assert r.returncode != 0 and "model nosuch" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0
        assert len(_ours(data)) >= 4  # control plane, gateway, agent, mlserver
        # port in use: a second `berth up` on the same ports says so in one line
        r = _run(env, "up", "--data-dir", str(tmp_path / "other"), "--control-port", str(cport))
        assert r.returncode == 1
        assert r.stderr.strip().count("\n") == 0 and f"port {cport}" in r.stderr and "in use" in r.stderr
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
    deadline = time.monotonic() + 10
    while _ours(data) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ours(data) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{gport}/v2/health/live", timeout=2)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", cport))  # the port is free again


def test_up_without_mlserver_says_so_in_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, BERTH_MLSERVER=str(tmp_path / "no-mlserver-here"))
    r = _run(env, "up", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "BERTH_MLSERVER" in r.stderr and "Traceback" not in r.stderr
