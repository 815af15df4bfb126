"""A batch of loads in one frame (protocol 2) against the real agent and a real MLServer.

The control plane's side is a small WebSocket server in the test that welcomes the agent with protocol 2 and
sends ONE ``loads`` frame; the agent, its loader and MLServer are real.  Each load of the batch is handled as a
lone load: the good ones load and answer inference, the broken artifact fails with MLServer's own error, the
badly named one with the name's problem, a malformed entry costs only itself, and the outcomes come back
batched (``models`` frames), fewer frames than outcomes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.adapters.mlserver_proc import MLServerProcess, free_port
from berth.agent.config import AgentConfig
from berth.agent.runner import run_agent
from berth.wire import agent as wire
from tests.support.agent_peer import AgentPeer
from tests.support.gateway import start_mlserver
from tests.support.models import IRIS_INPUT, train_sklearn

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    proc = start_mlserver(tmp_path_factory.mktemp("mlserver"))  # ready, no model loaded
    try:
        yield proc
    finally:
        proc.stop()


def test_one_frame_of_loads_with_a_broken_model_the_others_load(mlserver: MLServerProcess, tmp_path: Path) -> None:
    iris = train_sklearn(tmp_path / "artifacts" / "iris")
    broken = tmp_path / "artifacts" / "broken"
    broken.mkdir()
    (broken / "model.joblib").write_bytes(b"this is not a pickle")
    port = free_port()
    cfg = AgentConfig(server="mlserver", replica=0, namespace="team-a", capabilities=("sklearn",), memory=2 << 30,
                      inference_http_port=mlserver.http_port, inference_grpc_port=mlserver.grpc_port,
                      control_port=port, data_dir=tmp_path / "agent", repository_dir=mlserver.repository,
                      reconnect_max=1.0)
    good = [f"b{i:02d}" for i in range(10)]

    def load(name: str, uri: Path, namespace: str = "team-a") -> dict[str, Any]:
        source = wire.ModelSource(storage_uri=str(uri), requirements=["sklearn"], memory=1 << 20)
        doc: dict[str, Any] = json.loads(wire.dump(wire.Load(namespace=namespace, name=name, generation=1,
                                                             source=source)))
        return doc

    entries = [load(n, iris) for n in good[:5]] + [load("broken", broken), load("Bad_Name", iris)]
    entries += [{"type": "load", "name": "no-source", "generation": 1}]  # malformed: only itself is dropped
    entries += [load("elsewhere", iris, namespace="team-b")]  # another namespace's: ignored, as a lone load is
    entries += [load(n, iris) for n in good[5:]]

    async def scenario() -> None:
        peer = await AgentPeer(port, heartbeat_interval=0.5, protocol=wire.PROTOCOL_VERSION).start()
        stop = asyncio.Event()
        agent = asyncio.create_task(run_agent(cfg, stop))
        try:
            await asyncio.wait_for(peer.hello.wait(), 30)
            assert peer.raw[0]["protocol"] == wire.PROTOCOL_VERSION
            assert peer.ws is not None
            await peer.ws.send_str(json.dumps({"type": "loads", "loads": entries}))  # ONE frame
            expected = {*good, "broken", "Bad_Name"}
            for _ in range(1200):
                if expected <= set(peer.outcomes()):
                    break
                await asyncio.sleep(0.1)
            outcomes = peer.outcomes()
            assert expected <= set(outcomes), sorted(outcomes)
            for name in good:
                assert outcomes[name]["state"] == "LOADED", outcomes[name]
            assert outcomes["broken"]["state"] == "LOAD_FAILED"
            assert "failed to load broken: " in outcomes["broken"]["message"]
            assert outcomes["Bad_Name"]["state"] == "LOAD_FAILED" and "Bad_Name" in outcomes["Bad_Name"]["message"]
            assert "no-source" not in outcomes and "elsewhere" not in outcomes
            assert not (mlserver.repository / "broken").exists() and not (mlserver.repository / "elsewhere").exists()
            # outcomes came back batched: fewer frames than outcomes, each batch bounded
            frames = [f for f in peer.raw if f["type"] in ("model", "models")]
            events = sum(len(f["events"]) if f["type"] == "models" else 1 for f in frames)
            assert any(f["type"] == "models" for f in frames) and len(frames) < events, [f["type"] for f in frames]
            assert all(len(f["events"]) <= wire.MAX_BATCH_ITEMS for f in frames if f["type"] == "models")
            async with httpx.AsyncClient(base_url=f"http://{mlserver.http_address}", timeout=10) as http:
                for name in good:
                    r = await http.post(f"/v2/models/{name}/infer", json=IRIS_INPUT)
                    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [0, 2], r.text
        finally:
            stop.set()
            await asyncio.wait_for(agent, 15)
            await peer.stop()

    asyncio.run(asyncio.wait_for(scenario(), 180))

