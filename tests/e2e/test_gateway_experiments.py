"""Experiments through the real gateway: weighted split, sticky routes, default takeover, mirrors.

A real MLServer holds iris and iris2; mirrors are loopback stand-ins (one that answers after 2 s, one
that counts copies, and a gRPC one that keeps the copies it gets) or a closed port.  The last test runs
the whole platform: the Experiment is applied to the real control plane, whose routing table the
gateway follows, REST and gRPC.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from aiohttp import web
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

from berth.adapters.mlserver_proc import MLServerProcess, free_port
from berth.wire.routes import Candidate, ExperimentRoute, RoutingTable
from tests.e2e.test_gateway_grpc import infer_request, metadata_of, stand_in
from tests.support.gateway import Gateway, LoopThread, eventually, route, start_mlserver
from tests.support.models import IRIS_INPUT, train_sklearn
from tests.support.platform import SELDON, Platform, model_doc, server_doc

pytestmark = pytest.mark.e2e


def exp(name: str, weights: dict[str, int], *, namespace: str = "default", default: str | None = None,
        mirror: str | None = None, percent: int = 0, ready: bool = True, reason: str = "") -> ExperimentRoute:
    return ExperimentRoute(namespace=namespace, name=name, default=default, mirror=mirror, mirror_percent=percent,
                           candidates=[Candidate(name=n, weight=w) for n, w in weights.items()], ready=ready,
                           reason=reason)


class Mirror:
    """A stand-in inference server for mirrors: counts the copies it gets, answering after ``delay``."""

    def __init__(self, lt: LoopThread, delay: float) -> None:
        self.lt, self.delay = lt, delay
        self.paths: list[str] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

        async def answer(request: web.Request) -> web.Response:
            await request.read()
            self.paths.append(request.path)
            await asyncio.sleep(self.delay)
            return web.json_response({"model_name": "mirror", "outputs": []})

        async def start() -> web.AppRunner:
            app = web.Application()
            app.router.add_post("/v2/models/{name}/infer", answer)
            runner = web.AppRunner(app, shutdown_timeout=0.2)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            return runner

        self.runner = lt.call(start())

    def stop(self) -> None:
        self.lt.call(self.runner.cleanup())


class GrpcMirror:
    """A stand-in inference server's gRPC port for mirrors: keeps every ModelInfer request it gets, as bytes."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.requests: list[bytes] = []

        async def model_infer(request: bytes, context: Any) -> bytes:
            self.requests.append(request)
            return b""

        self.server, port = lt.call(stand_in(model_infer))
        self.address = f"127.0.0.1:{port}"

    def stop(self) -> None:
        self.lt.call(self.server.stop(0))


@pytest.fixture(scope="module")
def grpc_mirror(lt: LoopThread) -> Iterator[GrpcMirror]:
    mirror = GrpcMirror(lt)
    yield mirror
    mirror.stop()


@pytest.fixture(scope="module")
def mirrors(lt: LoopThread) -> Iterator[dict[str, Mirror]]:
    found = {"slow": Mirror(lt, 2.0), "counting": Mirror(lt, 0.0)}
    yield found
    for m in found.values():
        m.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, lt: LoopThread, mirrors: dict[str, Mirror],
       grpc_mirror: GrpcMirror) -> Iterator[Gateway]:
    proc: MLServerProcess = start_mlserver(tmp_path_factory.mktemp("mlserver"), "iris", "iris2")
    live, live_grpc = proc.http_address, (f"127.0.0.1:{proc.grpc_port}",)
    closed = f"127.0.0.1:{free_port()}"
    models = [route(n, live, namespace=ns, grpc=live_grpc) for ns in ("default", "takeover", "paused")
              for n in ("iris", "iris2")]
    models += [route("slow-mirror", mirrors["slow"].address), route("counting-mirror", mirrors["counting"].address),
               route("dead-mirror", closed), route("grpc-mirror", closed, grpc=(grpc_mirror.address,))]
    experiments = [
        exp("split", {"iris": 70, "iris2": 30}),
        exp("ab", {"iris": 50, "iris2": 50}, default="iris", namespace="takeover"),
        exp("paused-ab", {"iris": 50, "iris2": 50}, default="iris", namespace="paused", ready=False,
            reason="candidate model iris2 is not ready: ModelProgressing"),
        exp("slow", {"iris": 1}, mirror="slow-mirror", percent=100),
        exp("dead", {"iris": 1}, mirror="dead-mirror", percent=100),
        exp("half", {"iris2": 1}, mirror="counting-mirror", percent=50),
        exp("grpc-copy", {"iris": 1}, mirror="grpc-mirror", percent=100),
    ]
    gateway = Gateway(lt, grpc=True, routes=RoutingTable(revision=1, models=models, experiments=experiments),
                      upstream_timeout=10.0)
    yield gateway
    gateway.stop()
    proc.stop()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def post(http: httpx.Client, gw: Gateway, model: str, **headers: str) -> httpx.Response:
    return http.post(f"{gw.url}/v2/models/{model}/infer", json=IRIS_INPUT, headers=headers)


def test_live_split_follows_the_weights(gw: Gateway, http: httpx.Client) -> None:
    n = 400
    answers = [post(http, gw, "split.experiment") for _ in range(n)]
    assert all(r.status_code == 200 for r in answers)
    by_model = Counter(r.json()["model_name"] for r in answers)
    assert abs(by_model["iris"] / n - 0.7) <= 0.08, by_model
    assert {r.headers["x-seldon-route"] for r in answers} == {":split.experiment:iris:", ":split.experiment:iris2:"}


def test_sticky_route_returns_to_the_same_candidate_by_path_or_header(gw: Gateway, http: httpx.Client) -> None:
    for candidate in ("iris", "iris2"):
        sticky = f":split.experiment:{candidate}:"
        for _ in range(15):
            r = post(http, gw, "split.experiment", **{"x-seldon-route": sticky})
            assert r.json()["model_name"] == candidate and r.headers["x-seldon-route"] == sticky
        r = post(http, gw, "anything", **{"seldon-model": "split.experiment", "x-seldon-route": sticky})
        assert r.json()["model_name"] == candidate


def test_default_model_is_split_while_ready_and_direct_while_not(gw: Gateway, http: httpx.Client) -> None:
    taken = Counter(post(http, gw, "iris", **{"seldon-namespace": "takeover"}).headers["x-seldon-route"]
                    for _ in range(40))
    assert set(taken) == {":ab.experiment:iris:", ":ab.experiment:iris2:"}
    for _ in range(5):
        r = post(http, gw, "iris", **{"seldon-namespace": "paused"})
        assert r.status_code == 200 and r.headers["x-seldon-route"] == ":iris:"


def test_experiment_not_ready_is_503_json_naming_it_and_why(gw: Gateway, http: httpx.Client) -> None:
    r = post(http, gw, "paused-ab.experiment", **{"seldon-namespace": "paused"})
    assert r.status_code == 503
    body = r.json()
    assert body["code"] == "ExperimentNotReady"
    assert body["message"].startswith("experiment paused-ab in namespace paused is not ready: candidate model "
                                      "iris2 is not ready: ModelProgressing")
    assert body["details"]["experiment"] == "paused-ab"
    missing = post(http, gw, "nope.experiment")
    assert missing.status_code == 404
    assert missing.json()["message"].startswith("experiment nope not found in namespace default; experiments here: ")


def test_slow_mirror_never_delays_the_answer(gw: Gateway, mirrors: dict[str, Mirror], http: httpx.Client) -> None:
    slow = mirrors["slow"]
    before = len(slow.paths)
    for transport in ("rest", "grpc"):
        for _ in range(5):
            started = time.monotonic()
            if transport == "rest":
                r = post(http, gw, "slow.experiment")
                assert r.status_code == 200 and r.json()["model_name"] == "iris"
            else:
                with grpc.insecure_channel(gw.grpc) as channel:
                    answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                        infer_request(), metadata=(("seldon-model", "slow.experiment"),))
                assert answer.model_name == "iris"
            assert time.monotonic() - started < 1.5  # the mirror answers after 2 s: never waited for
    eventually(lambda: len(slow.paths) - before >= 5, timeout=5)  # the REST copies arrived, named for the mirror
    assert set(slow.paths[before:]) == {"/v2/models/slow-mirror/infer"}


def test_grpc_request_is_copied_to_the_mirror_over_grpc(gw: Gateway, grpc_mirror: GrpcMirror) -> None:
    before = len(grpc_mirror.requests)
    with grpc.insecure_channel(gw.grpc) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request("grpc-copy.experiment"))
    assert answer.model_name == "iris"
    eventually(lambda: len(grpc_mirror.requests) > before, timeout=10)
    copy = pb.ModelInferRequest.FromString(grpc_mirror.requests[before])
    assert copy.model_name == "grpc-mirror" and list(copy.inputs) == list(infer_request().inputs)
    eventually(lambda: 'berth_gateway_mirror_requests_total{experiment="grpc-copy",model="grpc-mirror",'
               'namespace="default",outcome="ok",protocol="grpc"} 1.0' in httpx.get(f"{gw.url}/metrics").text,
               timeout=10)


def test_failing_mirror_never_fails_the_answer(gw: Gateway, http: httpx.Client) -> None:
    for _ in range(5):
        r = post(http, gw, "dead.experiment")
        assert r.status_code == 200 and r.json()["model_name"] == "iris"
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'berth_gateway_mirror_requests_total{experiment="dead",model="dead-mirror",namespace="default",' \
           'outcome="unavailable",protocol="rest"}' in metrics


def test_mirror_gets_its_percent_of_requests(gw: Gateway, mirrors: dict[str, Mirror], http: httpx.Client) -> None:
    counting = mirrors["counting"]
    before = len(counting.paths)
    n = 200
    for _ in range(n):
        assert post(http, gw, "half.experiment").json()["model_name"] == "iris2"
    time.sleep(0.3)
    copies = len(counting.paths) - before
    assert 0.35 * n <= copies <= 0.65 * n, copies


def test_metrics_per_experiment_candidate(gw: Gateway, http: httpx.Client) -> None:
    post(http, gw, "split.experiment", **{"x-seldon-route": ":split.experiment:iris2:"})
    text = httpx.get(f"{gw.url}/metrics").text
    assert 'berth_gateway_requests_total{candidate="iris2",code="200",experiment="split",model="iris2",' \
           'namespace="default",protocol="rest"}' in text


def test_experiment_applied_to_the_control_plane_routes_rest_and_grpc(tmp_path: Path, lt: LoopThread,
                                                                      http: httpx.Client) -> None:
    model = train_sklearn(tmp_path / "model")
    experiment = {"apiVersion": SELDON, "kind": "Experiment", "metadata": {"name": "ab", "namespace": "default"},
                  "spec": {"default": "iris", "candidates": [{"name": "iris", "weight": 50},
                                                             {"name": "iris2", "weight": 50}]}}
    with Platform(tmp_path / "berth") as p:
        p.client.apply([server_doc("mlserver", replicas=1), model_doc("iris", str(model)),
                        model_doc("iris2", str(model)), experiment])
        p.wait_model("iris")
        p.wait_model("iris2")
        gw = Gateway(lt, grpc=True, control_url=p.control.url, token=os.environ["BERTH_TOKEN"])
        try:
            def split_seen() -> bool:
                routes = {post(http, gw, "iris").headers.get("x-seldon-route") for _ in range(20)}
                return routes == {":ab.experiment:iris:", ":ab.experiment:iris2:"}
            eventually(split_seen, timeout=20)
            res = p.gateway.infer("ab.experiment", IRIS_INPUT, headers={"x-seldon-route": ":ab.experiment:iris2:"})
            assert res.route == ":ab.experiment:iris2:" and res.body["model_name"] == "iris2"
            with grpc.insecure_channel(gw.grpc) as channel:
                stub: Any = pb_grpc.GRPCInferenceServiceStub(channel)
                answer, call = stub.ModelInfer.with_call(infer_request("iris"),
                                                         metadata=(("x-seldon-route", ":ab.experiment:iris2:"),))
            assert answer.model_name == "iris2"
            assert metadata_of(call)["x-seldon-route"] == ":ab.experiment:iris2:"
        finally:
            gw.stop()
