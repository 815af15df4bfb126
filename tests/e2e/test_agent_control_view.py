"""The agent's view of the control plane, end to end: a real agent pointed at a port where nothing listens
yet (refused: it retries), then the real control plane comes up on that port; once through, the agent's
report, kept in the Server's status, names the refused address, and `berth doctor`'s row says so."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from berth.adapters.mlserver_proc import free_ports
from berth.agent.config import AgentConfig
from berth.agent.runner import run_agent
from berth.cli.doctor_agents_view import agents_view_rows
from berth.client.http import BerthClient
from berth.control.tokens import TokenRegistry
from berth.resources.identity import AgentIdentity
from berth.wire import agent as wire
from tests.support.platform import server_doc
from tests.support.servers import ControlPlane, LoopThread

pytestmark = pytest.mark.e2e


def _view(client: BerthClient, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = (client.get("Server", "default", "mlserver").get("status") or {}).get("replicaStatus") or []
        view = rows[0].get("controlPlane") if rows else None
        if view and view.get("connectedSince"):
            return dict(view)
        time.sleep(0.1)
    raise AssertionError(f"no report of a connected agent in the Server's status in {timeout}s: {rows}")


async def _hostile(url: str, token: str, look: Callable[[], list[dict[str, Any]]]) -> list[Any]:
    """Answers to an oversized hello and to a fine one, then the hub's record after oversized heartbeats
    (``look``: the control plane's agent list, asked while the connection is still open)."""
    attempt = {"at": 1.0, "outcome": "refused", "address": "10.0.0.5:9004", "error": "connection refused"}
    big = wire.Hello(server="mlserver", replica=1).model_dump()
    answers = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async with session.ws_connect(url + wire.AGENT_PATH) as ws:
            await ws.send_json({**big, "control": {"url": "ws://x", "attempts": [attempt] * 11}})
            answers.append(json.loads((await ws.receive(timeout=10)).data)["code"])
        async with session.ws_connect(url + wire.AGENT_PATH) as ws:
            await ws.send_json({**big, "control": {"url": "ws://fine", "attempts": [attempt]}})
            answers.append(json.loads((await ws.receive(timeout=10)).data)["type"])
            await ws.send_json({"type": "heartbeat", "control": {"url": "u" * 100_000}})
            await ws.send_json({"type": "heartbeat", "control": {"url": "ws://x", "attempts": [attempt] * 11}})
            await ws.send_json({"type": "heartbeat"})
            await asyncio.sleep(0.5)  # the hub has read them all
            answers.append([a.get("controlPlane") for a in look() if a["replica"] == 1])
    return answers


def test_an_agent_refused_at_first_reports_the_refused_address_once_through(tmp_path: Path) -> None:
    data = tmp_path / "control"
    data.mkdir(mode=0o700)
    control = ControlPlane(data, store=str(data / "berth.db"))  # its port chosen, nothing listening there yet
    registry = TokenRegistry(data / "auth.db")
    try:
        token = registry.create("agent-view", kind="agent", agent=AgentIdentity("default", "mlserver", 0))
        hostile = registry.create("agent-view-1", kind="agent", agent=AgentIdentity("default", "mlserver", 1))
    finally:
        registry.close()
    http, grpc = free_ports(2)  # no inference server: the agent connects anyway, reporting it not ready
    config = AgentConfig(server="mlserver", replica=0, namespace="default", capabilities=("sklearn",),
                         memory=1 << 30, inference_http_port=http, inference_grpc_port=grpc,
                         control_port=control.port, data_dir=tmp_path / "agent", token=token,
                         reconnect_min=0.2, reconnect_max=0.4, probe_timeout=0.5)
    agent = LoopThread(lambda stop: run_agent(config, stop)).start()
    try:
        time.sleep(2.5)  # refused, again and again
        with control, BerthClient(control.url, token=control.admin_token) as client:
            client.apply([server_doc("mlserver")])
            view = _view(client, 30)
            address = f"127.0.0.1:{control.port}"
            refused = [a for a in view["attempts"] if a["outcome"] == "refused"]
            assert len(refused) >= 3 and {a["address"] for a in refused} == {address}, view
            assert {a["error"] for a in refused} == {"connection refused"}
            assert view["attempts"][-1]["outcome"] == "ok" and view["connectedTo"] == address
            assert view["failures"] >= len(refused) and view["resolution"]["addresses"] == ["127.0.0.1"]
            doc = client.get("Server", "default", "mlserver")
            [row] = agents_view_rows([doc], time.time())
            assert row.ok is True and row.detail.startswith(
                f"replica 0 of default/mlserver was refused by {address} (connection refused) ")
            assert f"through {address}" in row.detail
            deadline = time.monotonic() + 20  # the first heartbeat (5 s) carries the ping's round trip
            rtt = None
            while rtt is None and time.monotonic() < deadline:
                [live] = client.agents("default")
                rtt = (live.get("controlPlane") or {}).get("rtt")
                time.sleep(0.2)
            assert rtt is not None and 0 < rtt < 5
            # an enrolled but hostile agent: an oversized report in its hello is refused, one in a heartbeat
            # dropped (the last good report stays)
            refused, welcomed, [kept] = asyncio.run(_hostile(control.url, hostile, lambda: client.agents("default")))
            assert (refused, welcomed) == ("InvalidInput", "welcome")
            assert kept["url"] == "ws://fine" and len(kept["attempts"]) == 1
    finally:
        agent.stop()
