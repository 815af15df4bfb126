"""`berth wait` judges only a status that has observed the resource's current generation, and follows the
control plane's watch (no polling) against a real control plane whose reconciler the test can hold."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from berth.client.http import BerthClient
from berth.control.reconcile import Reconciler
from tests.support.servers import ControlPlane

NS = "default"


def server_config(server_type: str) -> dict[str, Any]:
    """A ServerConfig: Ready=True when it runs MLServer, Ready=False (UnsupportedServerConfig) for Triton; its
    status is written by the reconciler without any agent."""
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "ServerConfig",
            "metadata": {"name": "cfg", "namespace": NS},
            "spec": {"podSpec": {"containers": [
                {"name": "agent", "env": [{"name": "SELDON_SERVER_TYPE", "value": server_type}]}]}}}


def ready(doc: dict[str, Any]) -> str | None:
    return next((c["status"] for c in (doc.get("status") or {}).get("conditions", []) if c["type"] == "Ready"),
                None)


def until(client: BerthClient, what: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = client.get("ServerConfig", NS, "cfg")
        if what(doc):
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"the ServerConfig did not get there in {timeout}s: {doc}")
        time.sleep(0.05)


class Gate(threading.Event):
    """Set: passes run.  :meth:`hold` clears it and returns once no pass is under way, so nothing written
    after it is observed until it is set again."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0

    def hold(self, timeout: float = 10.0) -> None:
        self.clear()
        deadline = time.monotonic() + timeout
        while self.running:
            assert time.monotonic() < deadline, "a reconcile pass did not finish"
            time.sleep(0.01)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """Holds the control plane's reconciler while cleared: every pass waits, before it reads anything, until
    the event is set again, so statuses stay at the generation they observed.  (Request it after `control`:
    it is opened before the control plane stops.)"""
    gate = Gate()
    gate.set()
    original = Reconciler.reconcile

    async def held(self: Reconciler, ns: str) -> None:
        while not gate.is_set():
            await asyncio.sleep(0.01)
        gate.running += 1
        try:
            await original(self, ns)
        finally:
            gate.running -= 1

    monkeypatch.setattr(Reconciler, "reconcile", held)
    yield gate
    gate.set()


def stale_but_satisfying(client: BerthClient, gate: Gate, *changes: str) -> dict[str, Any]:
    """cfg observed at generation 1 as Ready=True, then changed (``changes``) with the reconciler held."""
    client.apply([server_config("mlserver")])
    until(client, lambda d: ready(d) == "True" and d["status"]["observedGeneration"] == 1)
    gate.hold()  # a pass already under way could otherwise observe the change
    for server_type in changes:
        client.apply([server_config(server_type)])
    doc = client.get("ServerConfig", NS, "cfg")
    assert doc["metadata"]["generation"] == 1 + len(changes)
    assert doc["status"]["observedGeneration"] == 1 and ready(doc) == "True"  # stale, and it says Ready
    return doc


def test_wait_never_judges_a_status_of_an_older_generation(control: ControlPlane, gate: Gate,
                                                           cli) -> None:
    client = BerthClient(control.url)
    stale_but_satisfying(client, gate, "triton")  # generation 2 will be Ready=False
    r = cli("--server", control.url, "wait", "serverconfig/cfg", "--for=condition=Ready", "--timeout=1s")
    assert r.code == 1, (r.out, r.err)
    assert r.out == ""
    line = r.err.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith("error: timed out after 1s waiting for condition=Ready on serverconfig/cfg "
                           "(generation 2; status observed generation 1: ServerConfigStored: stored; "), line
    gate.set()  # the reconciler observes generation 2: Ready=False
    r = cli("--server", control.url, "wait", "serverconfig/cfg", "--for=condition=Ready=False", "--timeout=10s")
    assert (r.code, r.out) == (0, "serverconfig.mlops.seldon.io/cfg condition met\n"), r.err
    doc = client.get("ServerConfig", NS, "cfg")
    assert doc["status"]["observedGeneration"] == 2 and ready(doc) == "False"
    # a condition the current status does not meet: the message names both generations and the reason
    r = cli("--server", control.url, "wait", "serverconfig/cfg", "--for=condition=Ready", "--timeout=0.5s")
    assert r.code == 1
    assert "(generation 2; status observed generation 2: UnsupportedServerConfig: " in r.err


def test_wait_follows_the_watch_and_returns_when_the_status_catches_up(
        control: ControlPlane, gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    from berth.main import main

    client = BerthClient(control.url)
    stale_but_satisfying(client, gate, "triton", "mlserver")  # generation 3 is Ready=True again
    gets: list[str] = []
    watching = threading.Event()
    real_get, real_watch = BerthClient.get, BerthClient.watch

    def get(self: BerthClient, kind: str, namespace: str, name: str) -> dict[str, Any]:
        gets.append(name)
        return real_get(self, kind, namespace, name)

    def watch(self: BerthClient, *args: Any, **kw: Any) -> Iterator[dict[str, Any]]:
        watching.set()
        yield from real_watch(self, *args, **kw)

    monkeypatch.setattr(BerthClient, "get", get)
    monkeypatch.setattr(BerthClient, "watch", watch)
    codes: list[int] = []
    waiter = threading.Thread(target=lambda: codes.append(main(
        ["--server", control.url, "wait", "serverconfig/cfg", "--for=condition=Ready", "--timeout=30s"])))
    waiter.start()
    try:
        assert watching.wait(10), "wait never opened a watch"
        time.sleep(1.0)
        assert waiter.is_alive(), "wait returned on the status of generation 1"
        opened = time.monotonic()
        gate.set()
        waiter.join(10)
        took = time.monotonic() - opened
    finally:
        gate.set()
        waiter.join(30)
    assert codes == [0]
    assert took < 3.0, f"wait took {took:.2f}s after the reconciler ran"
    assert gets == ["cfg"], "wait read the object more than once: it polled instead of watching"
    doc = real_get(client, "ServerConfig", NS, "cfg")
    assert doc["status"]["observedGeneration"] == 3 and ready(doc) == "True"


def test_wait_for_delete_and_for_jsonpath(control: ControlPlane, cli) -> None:
    client = BerthClient(control.url)
    client.apply([server_config("triton")])
    r = cli("--server", control.url, "wait", "serverconfig/cfg", "--timeout=10s",
            '--for=jsonpath={.status.conditions[?(@.type=="Ready")].reason}=UnsupportedServerConfig')
    assert (r.code, r.out) == (0, "serverconfig.mlops.seldon.io/cfg condition met\n"), r.err
    r = cli("--server", control.url, "wait", "serverconfig/cfg", "--for=delete", "--timeout=0.5s")
    assert r.code == 1 and "waiting for delete on serverconfig/cfg (still exists at generation 1)" in r.err
    codes: list[int] = []
    from berth.main import main

    waiter = threading.Thread(target=lambda: codes.append(main(
        ["--server", control.url, "wait", "serverconfig/cfg", "--for=delete", "--timeout=20s"])))
    waiter.start()
    time.sleep(0.5)
    started = time.monotonic()
    client.delete("ServerConfig", NS, "cfg")
    waiter.join(20)
    assert codes == [0] and time.monotonic() - started < 3.0
    r = cli("--server", control.url, "wait", "serverconfig/cfg", "--for=delete", "--timeout=1s")
    assert r.code == 0, r.err  # already gone
    r = cli("--server", control.url, "wait", "model/ghost", "--timeout=0.5s")
    assert r.code == 1 and "(not found in namespace default)" in r.err
    r = cli("--server", control.url, "wait", "model/ghost", "--for=ready")
    assert r.code == 1 and "expected condition=NAME[=True|False], jsonpath='{EXPR}'=VALUE or delete" in r.err
