"""Agents are enrolled, not trusted — against the real thing.

A real control plane (SQLite store, its own auth.db) and raw WebSocket clients posing as agents: without a
token, with a forged one, with another tenant's agent token or a user's, the claim of an existing replica is
refused and nothing (no load, no Secret value) reaches the caller; the genuine token gets the load with the
Secret; a copy of it is refused while the genuine agent is connected.  Then the local platform: provisioned
agents enrol by themselves, a model is served end to end, and the token read out of a running agent's
environment does not let a second agent take its replica.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import pytest

from berth.client.http import BerthClient
from berth.control.tokens import TokenRegistry
from berth.resources.identity import AgentIdentity, new_token
from berth.wire import agent as wire
from tests.support.models import IRIS_INPUT, train_sklearn
from tests.support.platform import Platform, model_doc, server_doc
from tests.support.servers import ControlPlane

pytestmark = pytest.mark.e2e

NS = "tenant-a"
MARKER = "wJalrXUtnFEMI-enrolment-41d2q"  # the Secret's value: must reach the enrolled agent only
CLAIM = AgentIdentity(NS, "mlserver", 0)


def claim_hello(ident: AgentIdentity = CLAIM) -> str:
    return wire.dump(wire.Hello(namespace=ident.namespace, server=ident.server, replica=ident.replica,
                                capabilities=["sklearn", "mlserver"], memory=4 << 30,
                                readiness=wire.Readiness(ready=True)))


def pose(url: str, token: str | None, *, hold: float = 0.0, ident: AgentIdentity = CLAIM) -> list[dict[str, Any]]:
    """Connect as an agent claiming ``ident`` and return every frame received until the connection closes
    (or, once welcomed, for ``hold`` seconds more, the first load included)."""

    async def run() -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        frames: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as s, s.ws_connect(url + wire.AGENT_PATH, headers=headers) as ws:
            await ws.send_str(claim_hello(ident))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                assert MARKER not in msg.data or json.loads(msg.data)["type"] == "load"
                frames.append(json.loads(msg.data))
                if frames[0]["type"] == "welcome":
                    deadline = min(deadline, time.monotonic() + hold)
        return frames

    return asyncio.run(run())


class Holder:
    """An agent connection kept open in a background loop (the genuine agent), with the frames it got."""

    def __init__(self, url: str, token: str) -> None:
        import threading

        self.frames: list[dict[str, Any]] = []
        self._url, self._token = url, token
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._up = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        headers = {"Authorization": f"Bearer {self._token}"}
        async with aiohttp.ClientSession() as s, s.ws_connect(self._url + wire.AGENT_PATH, headers=headers) as ws:
            await ws.send_str(claim_hello())
            reader = asyncio.ensure_future(self._read(ws))
            await self._stop.wait()
            reader.cancel()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(msg.data))
                self._up.set()

    def __enter__(self) -> Holder:
        self._thread.start()
        assert self._up.wait(10), "the genuine agent got no answer"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def loads(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "load"]


def wait_for(what: str, check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout}s")


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlPlane]:
    data = tmp_path / "data"
    with ControlPlane(data, store=str(data / "berth.db")) as cp:
        yield cp


def test_fake_agents_get_no_load_and_no_secret(control: ControlPlane) -> None:
    registry = TokenRegistry(control.opts.data_dir / "auth.db")  # the control plane's own auth.db
    client = BerthClient(control.url)
    try:
        client.apply([
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": NS},
             "stringData": {"s3": f"type: s3\nsecret_access_key: {MARKER}\n"}},
            server_doc("mlserver", namespace=NS),
            model_doc("fraud", "s3://bucket/fraud", namespace=NS, secretName="s3-creds")])
        genuine = registry.create("agent.tenant-a.mlserver.0.e2e", kind="agent", agent=CLAIM)
        other_tenant = registry.create("agent.tenant-b.mlserver.0.e2e", kind="agent",
                                       agent=AgentIdentity("tenant-b", "mlserver", 0))
        user = registry.create("alice-e2e", grants={NS: "admin"})
        revoked = registry.create("agent.tenant-a.mlserver.0.old", kind="agent", agent=CLAIM)
        registry.revoke("agent.tenant-a.mlserver.0.old")

        for token, code in ((None, "Unauthenticated"), (new_token(), "Unauthenticated"),
                            (revoked, "Unauthenticated"), (other_tenant, "Forbidden"), (user, "Forbidden")):
            frames = pose(control.url, token)
            assert [f["type"] for f in frames] == ["error"] and frames[0]["code"] == code, (code, frames)
            assert "tenant-b" not in frames[0]["message"]
        assert client.agents(NS) == []

        # the genuine agent gets the load, Secret included; a copy of its token is refused meanwhile
        with Holder(control.url, genuine) as agent:
            assert agent.frames[0]["type"] == "welcome"
            [load] = wait_for("the genuine agent gets the load", agent.loads)
            assert load["name"] == "fraud" and load["namespace"] == NS
            assert MARKER in load["source"]["secret"]["s3"]
            frames = pose(control.url, genuine)
            assert [f["type"] for f in frames] == ["error"] and frames[0]["code"] == "Conflict", frames
            [row] = client.agents(NS)
            assert row["connected"] and row["peer"] == "127.0.0.1"
        # gone: a reconnect with the genuine token is accepted (and is asked for the model again)
        wait_for("the hub sees the genuine agent go", lambda: not client.agents(NS)[0]["connected"])
        frames = pose(control.url, genuine, hold=5.0)
        assert frames[0]["type"] == "welcome" and any(f["type"] == "load" for f in frames), frames

        audit = registry.audit_records(namespaces=frozenset({NS}))
        refused = [r for r in audit if r["verb"] == "agent-hello" and r["outcome"] == "refused"]
        assert [r["reason"] for r in refused][:5] == [
            "no token", "token not valid (unknown, revoked or expired)",
            "token not valid (unknown, revoked or expired)", "the agent token was minted for another replica",
            "a user token, not an agent token"]
        assert any("replica tenant-a/mlserver/0 is already connected from 127.0.0.1" in r["reason"] for r in refused)
        assert [r["outcome"] for r in audit if r["verb"] == "agent-connect"] == ["ok", "ok"]
        assert MARKER not in json.dumps(registry.audit_records(namespaces=None))
    finally:
        client.close()
        registry.close()


def test_local_platform_enrols_its_agents_and_refuses_a_stolen_token(tmp_path: Path) -> None:
    iris = train_sklearn(tmp_path / "models" / "iris")
    data = tmp_path / "berth"
    with Platform(data) as p:
        p.client.apply([server_doc("mlserver", replicas=1), model_doc("iris", str(iris))])
        p.wait_model("iris", timeout=120)  # the provisioned agent enrolled by itself
        r = httpx.post(f"{p.gateway_url}/v2/models/iris/infer", json=IRIS_INPUT,
                       headers={"seldon-namespace": "default"}, timeout=30)
        assert r.status_code == 200, r.text

        # the token lives in the agent's environment only: not on its command line, no admin token beside it
        state = json.loads((data / "replicas" / "state.json").read_text())
        proc = psutil.Process(state["default/mlserver/0"]["agent"]["pid"])
        token = proc.environ()["BERTH_AGENT_TOKEN"]
        assert token not in " ".join(proc.cmdline()) and "BERTH_TOKEN" not in proc.environ()

        # copied, it does not let a second agent take the live replica, which keeps serving
        ident = AgentIdentity("default", "mlserver", 0)
        frames = pose(p.control.url, token, ident=ident)
        assert [f["type"] for f in frames] == ["error"] and frames[0]["code"] == "Conflict", frames
        for forged in (None, new_token()):
            frames = pose(p.control.url, forged, ident=ident)
            assert [f["type"] for f in frames] == ["error"] and frames[0]["code"] == "Unauthenticated"
        [row] = [a for a in p.client.agents("default") if a["connected"]]
        assert row["replica"] == 0 and row["peer"] == "127.0.0.1"
        assert p.wait_model("iris", available=1)["state"] == "ModelAvailable"
        r = httpx.post(f"{p.gateway_url}/v2/models/iris/infer", json=IRIS_INPUT,
                       headers={"seldon-namespace": "default"}, timeout=30)
        assert r.status_code == 200, r.text

    registry = TokenRegistry(data / "auth.db")
    try:
        audit = registry.audit_records(namespaces=frozenset({"default"}))
    finally:
        registry.close()
    assert any(r["verb"] == "agent-connect" and r["principal"] == "agent.default.mlserver.0" for r in audit)
    assert any("replica default/mlserver/0 is already connected from 127.0.0.1" in r["reason"] for r in audit)
