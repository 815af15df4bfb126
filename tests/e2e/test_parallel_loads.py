"""The agent's loader against a real MLServer using Berth's model repository: loads run concurrently.

Models that declare memory pass the load gate together (up to LOAD_CONCURRENCY MLServer load calls at
once); a model that declares none loads alone and has its RSS delta measured.  Everything is real: the
MLServer process (started with ``model_repository_implementation`` set to Berth's class), its REST API,
the files.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from berth.adapters.mlserver import MLServerClient
from berth.adapters.mlserver_proc import REPOSITORY_IMPLEMENTATION, MLServerProcess, free_port
from berth.agent.config import AgentConfig
from berth.agent.loader import LOAD_CONCURRENCY, ModelLoader
from berth.wire import agent as wire
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


def test_loads_run_concurrently_and_unmeasured_ones_alone(mlserver: MLServerProcess, tmp_path: Path) -> None:
    written = json.loads((mlserver.workdir / "settings.json").read_text())
    assert written["model_repository_implementation"] == REPOSITORY_IMPLEMENTATION
    iris = train_sklearn(tmp_path / "iris")
    cfg = AgentConfig(server="mlserver", replica=0, namespace="default", capabilities=("sklearn",),
                      memory=2 << 30, inference_http_port=mlserver.http_port,
                      inference_grpc_port=mlserver.grpc_port, control_port=free_port(),
                      data_dir=tmp_path / "agent", repository_dir=mlserver.repository)
    events: list[wire.ModelEvent] = []
    names = [f"m{i:02d}" for i in range(12)]

    async def emit(event: wire.ModelEvent) -> None:
        events.append(event)

    async def scenario() -> list[wire.ModelEvent]:
        client = MLServerClient("127.0.0.1", mlserver.http_port, mlserver.grpc_port)
        loader = ModelLoader(cfg, client, emit)
        try:
            declared = [loader.load(wire.Load(name=n, generation=1, source=wire.ModelSource(
                storage_uri=str(iris), requirements=["sklearn"], memory=1 << 20))) for n in names]
            measured = loader.load(wire.Load(name="measured", generation=1, source=wire.ModelSource(
                storage_uri=str(iris), requirements=["sklearn"], artifact_version=4)))
            outcomes = await asyncio.wait_for(asyncio.gather(*declared, measured), 120)
            assert 2 <= loader.gate.peak <= LOAD_CONCURRENCY, loader.gate.peak
            index = await client.index()
            assert all(index.get(n) == "READY" for n in [*names, "measured"]), index
            return outcomes
        finally:
            await client.aclose()

    outcomes = asyncio.run(scenario())
    assert [o.state for o in outcomes] == ["LOADED"] * (len(names) + 1), [o.message for o in outcomes]
    # declared memory: loaded beside others; a load that overlapped another is not measured (peak >= 2: at least
    # two overlapped), one that happened to run alone is
    assert sum(o.memory == 0 for o in outcomes[:-1]) >= 2
    assert outcomes[-1].memory > 0  # no declaration: loaded alone and measured
    for name in [*names, "measured"]:
        r = httpx.post(f"http://{mlserver.http_address}/v2/models/{name}/infer", json=IRIS_INPUT, timeout=10)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [0, 2], r.text
    # the version Berth writes from artifactVersion is the one MLServer serves
    base = f"http://{mlserver.http_address}/v2/models/measured/versions"
    assert httpx.post(f"{base}/4/infer", json=IRIS_INPUT, timeout=10).status_code == 200
    assert httpx.post(f"{base}/3/infer", json=IRIS_INPUT, timeout=10).status_code == 404
    assert "Failed load model settings" not in mlserver.log_tail(200)
