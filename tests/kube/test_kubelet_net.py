"""The harness kubelet's pod network (tests/kube/podnet.py), on its own and fast: a Deployment of two pods whose
containers are small Python servers, one on the pod's 0.0.0.0 (its Service port, probed for readiness) and one
on the pod's 127.0.0.1 only.

In both modes: each pod has its own IP as ``status.podIP``, is Ready once its probe answers, reaches what the
test runs behind a Service, and answers on its public port from the host and from the other pod. With
network namespaces (root with ``ip netns``), also: the loopback-bound server answers inside its pod only
(neither on the pod's IP from the host or the other pod, nor on the other pod's 127.0.0.1); a pod reaches
nothing but the pods and the bridge's address; a scaled-down pod's namespace is deleted, and teardown leaves
no namespace, veth or bridge; the namespaces and links of a harness killed with SIGKILL are swept by the next
one, while those of a harness still running are left alone.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.kube.apiserver import ApiServer
from tests.kube.kubelet import Kubelet, Pod
from tests.kube.podnet import LOCKS, LoopbackNetwork, NetnsNetwork, PodNetwork, netns_unavailable, sweep

NS = "netcheck"
SERVE = ("import http.server as h, os\n"
         "class H(h.BaseHTTPRequestHandler):\n"
         "    def do_GET(self):\n"
         "        self.send_response(200); self.end_headers(); self.wfile.write(os.environ['WHO'].encode())\n"
         "h.ThreadingHTTPServer((os.environ['BIND'], int(os.environ['HTTP_PORT'])), H).serve_forever()\n")
NETNS = pytest.mark.skipif(netns_unavailable() is not None, reason=f"no network namespaces: {netns_unavailable()}")


def _container(name: str, bind: str, port: int, probe: bool) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "command": ["python", "-c", SERVE], "env": [
        {"name": "BIND", "value": bind}, {"name": "HTTP_PORT", "value": str(port)},
        {"name": "WHO", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "CONTROL_URL", "value": "http://svc.test-system.svc:9004/"}]}
    if probe:
        c["ports"] = [{"name": "http", "containerPort": port}]
        c["readinessProbe"] = {"httpGet": {"path": "/", "port": "http"}}
    return c


def _deployment(replicas: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": NS},
            "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "containers": [_container("outer", "0.0.0.0", 7000, True),
                               _container("inner", "127.0.0.1", 7100, False)]}}}}


class _Service(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"service")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(params=["netns", "loopback"])
def network(request: pytest.FixtureRequest) -> Iterator[PodNetwork]:
    if request.param == "netns" and netns_unavailable():
        pytest.skip(f"no network namespaces: {netns_unavailable()}")
    made = NetnsNetwork() if request.param == "netns" else LoopbackNetwork()
    try:
        yield made
    finally:
        made.close()  # again after the kubelet's: harmless; alone when the API server failed to start


@pytest.fixture
def harness(network: PodNetwork, tmp_path: Path) -> Iterator[tuple[ApiServer, Kubelet, int]]:
    with ApiServer(tmp_path) as api:
        service = ThreadingHTTPServer((network.host, 0), _Service)
        threading.Thread(target=service.serve_forever, daemon=True).start()
        kubelet = Kubelet(api, tmp_path / "nodes", {"svc.test-system.svc": {9004: service.server_address[1]}},
                          network)
        print(f"pod network: {network.describe()}")
        try:
            yield api, kubelet, service.server_address[1]
        finally:
            kubelet.close()
            service.shutdown()
            service.server_close()
        if isinstance(network, NetnsNetwork):
            assert network.leftovers() == [], "teardown left namespaces or links behind"


def _settle(kubelet: Kubelet, check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kubelet.sync()
        if found := check():
            return found
        time.sleep(0.2)
    logs = {c.name: c.log.read_text()[-1500:] for p in kubelet.pods.values() for c in p.containers if c.log.exists()}
    raise AssertionError(f"{what} did not happen within {timeout} s; logs: {logs}")


def _get(host: str, port: int) -> str | None:
    try:
        return httpx.get(f"http://{host}:{port}/", timeout=3).text
    except httpx.HTTPError:
        return None


def test_each_pod_has_its_own_address_and_the_modes_say_which(harness: tuple[ApiServer, Kubelet, int]) -> None:
    api, kubelet, service_port = harness
    created = kubelet.http.post(f"/apis/apps/v1/namespaces/{NS}/deployments", json=_deployment(2))
    assert created.status_code == 201, created.text
    pods: list[Pod] = _settle(kubelet, lambda: len(kubelet.pods) == 2 and all(p.ready for p in kubelet.pods.values())
                              and sorted(kubelet.pods.values(), key=lambda p: p.name), "both pods Ready")
    a, b = pods
    assert a.ip != b.ip and "127.0.0.1" not in (a.ip, b.ip)
    for pod in pods:
        status = kubelet.http.get(f"/api/v1/namespaces/{NS}/pods/{pod.name}").json()["status"]
        assert status["podIP"] == pod.ip and status["conditions"] == [{"type": "Ready", "status": "True"}], status
    net = kubelet.network
    if isinstance(net, NetnsNetwork):
        assert all(ipaddress.ip_address(p.ip) in net.subnet for p in pods)
        assert a.ports == {7000: 7000, 7100: 7100}, a.ports  # a pod of its own keeps its ports
    else:
        assert a.ports[7000] != b.ports[7000], (a.ports, b.ports)  # one shared loopback: ports remapped per pod

    # the public port: from the host and from the other pod
    outer, inner = a.ports[7000], a.ports[7100]
    assert _get(a.ip, outer) == a.name
    assert kubelet.connects(b, a.ip, outer)
    # what the test runs behind a Service, and the API server, are reached at the network's host address
    assert a.container("outer").env["CONTROL_URL"] == f"http://{net.host}:{service_port}/"
    assert kubelet.connects(a, net.host, service_port)
    if not isinstance(net, NetnsNetwork):
        assert _get("127.0.0.1", inner) == a.name  # the fallback's limit: one loopback for everyone
        return

    # a loopback of its own: the inner server answers inside its pod, and nowhere else
    fetch = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{inner}/', timeout=3).read().decode())"
    for pod in pods:  # each pod's 127.0.0.1 is its own: the same port answers with that pod's own server
        inside = kubelet.exec(pod, [sys.executable, "-c", fetch])
        assert inside.returncode == 0 and inside.stdout.strip() == pod.name, inside.stderr
    assert _get(a.ip, inner) is None  # not on the pod's IP from the host
    assert not kubelet.connects(b, a.ip, inner)  # nor from the other pod
    assert kubelet.connects(a, net.host, api.port)  # the API server at the bridge's address
    assert not kubelet.connects(a, "127.0.0.1", api.port)  # not through the host's loopback
    route = kubelet.exec(a, ["ip", "route"]).stdout.strip().splitlines()
    assert route == [f"{net.subnet} dev eth0 proto kernel scope link src {a.ip}"], route
    assert not kubelet.connects(a, "192.0.2.1", 80)  # no route out of the /24

    # scaled down: the pod, its process and its namespace go
    gone = b.ip
    body = kubelet.http.get(f"/apis/apps/v1/namespaces/{NS}/deployments/web").json()
    body["spec"]["replicas"] = 1
    assert kubelet.http.put(f"/apis/apps/v1/namespaces/{NS}/deployments/web", json=body).is_success
    _settle(kubelet, lambda: len(kubelet.pods) == 1, "the scale-down")
    assert gone not in net.namespaces
    assert not any(b.name in n for n in net.leftovers()), net.leftovers()


@NETNS
def test_a_killed_harness_is_swept_by_the_next_and_a_running_one_is_not() -> None:
    root = Path(__file__).resolve().parents[2]
    code = ("from tests.kube.podnet import NetnsNetwork\n"
            "n = NetnsNetwork(); n.attach('x', 'pod-0'); n.attach('x', 'pod-1')\n"
            "print(n.tag, flush=True)\nimport time; time.sleep(120)\n")
    victim = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True)
    living = None
    try:
        assert victim.stdout is not None
        tag = victim.stdout.readline().strip()
        assert len(tag) == 6, tag
        # a harness still running (here: its lock held by this process) keeps what it made
        living = NetnsNetwork()
        living.attach("y", "pod-0")
        assert all(living.tag not in name for name in sweep())
        assert living.leftovers(), "the running harness's namespace was swept"

        os.kill(victim.pid, signal.SIGKILL)  # no teardown ran
        victim.wait(10)
        before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"berth-pod-0-2-{tag}" in before and f"berth-pod-1-3-{tag}" in before, before
        swept = sweep()
        assert {f"berth-pod-0-2-{tag}", f"berth-pod-1-3-{tag}", f"bbr{tag}"} <= set(swept), swept
        after = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        assert tag not in after and tag not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                              text=True).stdout
        assert not (LOCKS / f"{tag}.lock").exists()
        assert living.leftovers(), "the running harness's namespace was swept"
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
        if living is not None:
            living.close()
            assert living.leftovers() == []


@NETNS
def test_a_lock_held_elsewhere_keeps_its_namespace() -> None:
    """The liveness test is the flock, not the file: a lock file nobody holds is a dead harness's."""
    tag = secrets.token_hex(3)
    name = f"berth-held-2-{tag}"
    LOCKS.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with open(LOCKS / f"{tag}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            assert name not in sweep()
        assert name in sweep()  # let go: swept
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        (LOCKS / f"{tag}.lock").unlink(missing_ok=True)
