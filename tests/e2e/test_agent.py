"""The agent against a real MLServer and a stand-in control plane (the agent's WebSocket peer).

The stand-in is a small aiohttp WebSocket server inside the test that answers ``hello`` with
``welcome``, records every frame and sends ``load``/``unload`` exactly as wire.agent describes them.
The agent, its adapters and MLServer are all real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from berth.adapters.mlserver_proc import MLServerProcess, free_port, free_ports
from berth.agent.config import AgentConfig
from berth.agent.runner import run_agent
from berth.wire import agent as wire
from tests.support.agent_peer import AgentPeer, Frame
from tests.support.gateway import start_mlserver
from tests.support.models import IRIS_INPUT, train_sklearn

pytestmark = pytest.mark.e2e


def _model(name: str, *states: str) -> Callable[[Frame], bool]:
    return lambda f: f["type"] == "model" and f["name"] == name and f["state"] in states


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    proc = start_mlserver(tmp_path_factory.mktemp("mlserver"))  # ready, no model loaded
    try:
        yield proc
    finally:
        proc.stop()


def _config(tmp_path: Path, control_port: int, http_port: int, grpc_port: int,
            repository: Path | None = None) -> AgentConfig:
    return AgentConfig(server="mlserver", replica=1, namespace="team-a", capabilities=("sklearn", "mlflow"),
                       memory=2 << 30, inference_http_port=http_port, inference_grpc_port=grpc_port,
                       control_port=control_port, data_dir=tmp_path / "agent", repository_dir=repository,
                       reconnect_max=1.0)


def test_agent_loads_fails_reconnects_and_unloads(mlserver: MLServerProcess, tmp_path: Path) -> None:
    iris = train_sklearn(tmp_path / "artifacts" / "iris")
    broken = tmp_path / "artifacts" / "broken"
    broken.mkdir()
    (broken / "model.joblib").write_bytes(b"this is not a pickle")
    import joblib

    with pytest.raises(Exception) as garbage:  # noqa: B017 - whatever joblib raises is what MLServer will say
        joblib.load(broken / "model.joblib")
    runtime_error = str(garbage.value)
    base = f"http://{mlserver.http_address}"
    port = free_port()
    cfg = _config(tmp_path, port, mlserver.http_port, mlserver.grpc_port, mlserver.repository)

    async def scenario() -> None:
        standin = await AgentPeer(port).start()
        stop = asyncio.Event()
        agent = asyncio.create_task(run_agent(cfg, stop))
        try:
            hello = await standin.wait_for(lambda f: f["type"] == "hello")
            assert (hello["namespace"], hello["server"], hello["replica"]) == ("team-a", "mlserver", 1)
            assert hello["capabilities"] == ["sklearn", "mlflow"] and hello["memory"] == 2 << 30
            assert hello["readiness"]["ready"] is True and hello["readiness"]["error"] is None
            assert hello["readiness"]["address"] == f"{base}/v2/health/ready"
            assert hello["inference"] == {"host": "127.0.0.1", "http_port": mlserver.http_port,
                                          "grpc_port": mlserver.grpc_port}
            assert hello["pid"] == mlserver.process.pid and hello["loaded"] == []

            await standin.send(wire.Load(name="iris", generation=2, source=wire.ModelSource(
                storage_uri=str(iris), requirements=["sklearn"], artifact_version=1)))
            await standin.send(wire.Load(name="broken", generation=1, source=wire.ModelSource(
                storage_uri=f"file://{broken}", requirements=["sklearn"])))
            loaded = await standin.wait_for(_model("iris", "LOADED", "LOAD_FAILED"), 60)
            assert loaded["state"] == "LOADED", loaded["message"]
            assert loaded["generation"] == 2 and loaded["memory"] > 0 and loaded["duration"] > 0
            assert await standin.wait_for(_model("iris", "LOADING"), 1)
            failed = await standin.wait_for(_model("broken", "LOADED", "LOAD_FAILED"), 60)
            assert failed["state"] == "LOAD_FAILED"
            assert f"MLServer at {base} failed to load broken: " in failed["message"]
            assert runtime_error in failed["message"]
            assert not (mlserver.repository / "broken").exists()
            await standin.wait_for(lambda f: f["type"] == "heartbeat", 5)

            async with httpx.AsyncClient(base_url=base) as http:
                r = await http.post("/v2/models/iris/infer", json=IRIS_INPUT)
                assert r.status_code == 200, r.text
                assert r.json()["outputs"][0]["data"] == [0, 2]
                assert r.json()["model_version"] == "1"
            settings = json.loads((mlserver.repository / "iris" / "model-settings.json").read_text())
            assert settings["implementation"] == "mlserver_sklearn.SKLearnModel"
            assert (cfg.models_dir / "iris" / "2" / "model.joblib").is_file()

            # the control plane restarts: the agent reconnects and says what it holds
            await standin.stop()
            standin = await AgentPeer(port).start()
            hello = await standin.wait_for(lambda f: f["type"] == "hello", 15)
            assert hello["loaded"] == [{"name": "iris", "generation": 2, "memory": loaded["memory"]}]
            if not hello["readiness"]["ready"]:  # MLServer may answer 400 on ready for a moment after a failed load:
                # the agent greets with what it last probed, then reports the change (the control plane's view)
                await standin.wait_for(lambda f: f["type"] == "status" and f["readiness"]["ready"] is True, 10)

            # the agent restarts: it adopts what MLServer still holds instead of reloading it
            stop.set()
            await asyncio.wait_for(agent, 10)
            standin.frames.clear()
            stop = asyncio.Event()
            agent = asyncio.create_task(run_agent(cfg, stop))
            hello = await standin.wait_for(lambda f: f["type"] == "hello", 15)
            assert hello["loaded"] == [{"name": "iris", "generation": 2, "memory": loaded["memory"]}]
            await standin.send(wire.Load(name="iris", generation=2, source=wire.ModelSource(
                storage_uri="s3://not-fetched-again/iris", requirements=["sklearn"])))
            again = await standin.wait_for(_model("iris", "LOADED", "LOAD_FAILED"), 10)
            assert again["state"] == "LOADED" and again["memory"] == loaded["memory"]

            await standin.send(wire.Unload(name="iris"))
            await standin.send(wire.Unload(name="never-loaded"))
            unloaded = await standin.wait_for(_model("iris", "UNLOADED", "UNLOAD_FAILED"), 30)
            assert unloaded["state"] == "UNLOADED", unloaded["message"]
            assert (await standin.wait_for(_model("never-loaded", "UNLOADED", "UNLOAD_FAILED")))[
                "state"] == "UNLOADED"
            assert not (mlserver.repository / "iris").exists() and not (cfg.models_dir / "iris").exists()
            async with httpx.AsyncClient(base_url=base) as http:
                assert (await http.get("/v2/models/iris")).status_code == 404
        finally:
            stop.set()
            await asyncio.wait_for(agent, 10)
            await standin.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_agent_reports_an_unready_inference_server_until_it_answers(tmp_path: Path) -> None:
    port, http_port, grpc_port = free_ports(3)
    cfg = _config(tmp_path, port, http_port, grpc_port)
    address = f"http://127.0.0.1:{http_port}/v2/health/ready"

    async def scenario() -> None:
        standin = await AgentPeer(port).start()
        stop = asyncio.Event()
        started = time.time()
        agent = asyncio.create_task(run_agent(cfg, stop))
        fake: web.AppRunner | None = None
        try:
            hello = await standin.wait_for(lambda f: f["type"] == "hello", 10)
            assert hello["readiness"] == {"ready": False, "address": address, "error": "connection refused",
                                          "since": hello["readiness"]["since"]}
            assert started <= hello["readiness"]["since"] <= time.time() and hello["pid"] is None

            # something answers on the port, but not ready yet: 503, then ready
            answer = {"status": 503}

            async def ready(_: web.Request) -> web.Response:
                return web.Response(status=answer["status"], text="models still loading")

            app = web.Application()
            app.router.add_get("/v2/health/ready", ready)
            fake = web.AppRunner(app)
            await fake.setup()
            await web.TCPSite(fake, "127.0.0.1", http_port).start()
            status = await standin.wait_for(lambda f: f["type"] == "status", 10)
            assert status["readiness"]["ready"] is False
            assert status["readiness"]["error"] == "HTTP 503: models still loading"
            assert status["readiness"]["address"] == address
            answer["status"] = 200
            status = await standin.wait_for(lambda f: f["type"] == "status" and f["readiness"]["ready"], 10)
            assert status["readiness"]["error"] is None
        finally:
            stop.set()
            await asyncio.wait_for(agent, 10)
            await standin.stop()
            if fake is not None:
                with contextlib.suppress(Exception):
                    await fake.cleanup()

    asyncio.run(asyncio.wait_for(scenario(), 60))


@contextlib.asynccontextmanager
async def _agent_holding(cfg: AgentConfig, port: int, name: str, artifact: Path) -> AsyncIterator[AgentPeer]:
    """An agent (run_agent with ``cfg``) talking to a stand-in control plane on ``port``, which has it load
    ``artifact`` as ``name``; yields the stand-in once the model is LOADED, stops both after."""
    standin = await AgentPeer(port).start()
    stop = asyncio.Event()
    agent = asyncio.create_task(run_agent(cfg, stop))
    try:
        await standin.wait_for(lambda f: f["type"] == "hello")
        await standin.send(wire.Load(name=name, generation=1, source=wire.ModelSource(
            storage_uri=str(artifact), requirements=["sklearn"])))
        loaded = await standin.wait_for(_model(name, "LOADED", "LOAD_FAILED"), 60)
        assert loaded["state"] == "LOADED", loaded["message"]
        yield standin
    finally:
        stop.set()
        await asyncio.wait_for(agent, 10)
        await standin.stop()


def test_agent_notices_models_lost_when_the_inference_server_restarts(mlserver: MLServerProcess,
                                                                     tmp_path: Path) -> None:
    iris = train_sklearn(tmp_path / "artifacts" / "iris")
    port = free_port()
    cfg = _config(tmp_path, port, mlserver.http_port, mlserver.grpc_port, mlserver.repository)

    async def scenario() -> None:
        async with _agent_holding(cfg, port, "iris-restart", iris) as standin:
            await asyncio.to_thread(mlserver.stop)
            down = await standin.wait_for(lambda f: f["type"] == "status" and not f["readiness"]["ready"], 10)
            assert down["readiness"]["error"] == "connection refused"
            await asyncio.to_thread(mlserver.start)
            await standin.wait_for(lambda f: f["type"] == "status" and f["readiness"]["ready"], 60)
            lost = await standin.wait_for(_model("iris-restart", "UNLOADED"), 10)
            assert "the inference server no longer holds this model" in lost["message"]
            assert not (mlserver.repository / "iris-restart").exists()

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_agent_notices_a_restart_its_readiness_probes_missed(mlserver: MLServerProcess, tmp_path: Path) -> None:
    """A restart between two readiness probes (as a kubelet restarts a killed MLServer within seconds) is never
    seen as "not ready"; the periodic check still finds the model gone and reports it UNLOADED."""
    iris = train_sklearn(tmp_path / "artifacts" / "iris")
    port = free_port()
    cfg = _config(tmp_path, port, mlserver.http_port, mlserver.grpc_port, mlserver.repository)
    cfg = cfg.model_copy(update={"ready_poll_ready": 3600.0, "resync_interval": 1.0})  # probes never see it

    async def scenario() -> None:
        async with _agent_holding(cfg, port, "iris-quick", iris) as standin:
            await asyncio.to_thread(mlserver.stop)
            await asyncio.to_thread(mlserver.start)
            lost = await standin.wait_for(_model("iris-quick", "UNLOADED"), 30)
            assert "no longer holds this model" in lost["message"] and "restarted?" in lost["message"]
            assert not any(f["type"] == "status" and not f["readiness"]["ready"] for f in standin.frames)

    asyncio.run(asyncio.wait_for(scenario(), 120))
