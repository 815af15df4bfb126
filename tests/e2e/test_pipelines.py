"""Pipelines through the real gateway, with real MLServer models in the steps.

One MLServer holds iris (sklearn, trained here) and small custom runtimes written by this test: adders
(sum of their input tensors plus a constant), a chooser that emits LEFT or RIGHT by the sign of its input
(for triggers), and a model that always fails.  The gateway follows a routing table the test writes (the
control plane's part is covered by the last test, which applies Pipelines to the whole platform).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from berth.adapters.mlserver_proc import MLServerProcess
from berth.gateway.transports.restlimits import RestLimits
from berth.wire.routes import Candidate, ExperimentRoute, PipelineRoute, RoutingTable
from tests.support.gateway import Gateway, LoopThread, eventually, route
from tests.support.models import IRIS_INPUT, train_sklearn
from tests.support.runtimes import load_custom

pytestmark = pytest.mark.e2e

@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    proc = MLServerProcess(tmp_path_factory.mktemp("pipelines-mlserver"))
    proc.start()
    try:
        proc.wait_ready(90)
        folder = train_sklearn(proc.repository / "iris")
        (folder / "model-settings.json").write_text(json.dumps({
            "name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib"}}))
        assert httpx.post(f"http://{proc.http_address}/v2/repository/models/iris/load", timeout=60).status_code == 200
        for name, add in (("add1", 1), ("add10", 10), ("add100", 100), ("add200", 200)):
            load_custom(proc, name, "Adder", add=add)
        load_custom(proc, "chooser", "Chooser")
        load_custom(proc, "failing", "Failing")
        yield proc
    finally:
        proc.stop()


def pipe(name: str, spec: dict[str, Any], *, ready: bool = True, **annotations: str) -> PipelineRoute:
    return PipelineRoute(namespace="default", name=name, spec=spec, ready=ready, annotations=annotations,
                         reason="pipeline ready" if ready else "step add1: model add1 is not ready: LoadFailed")


PIPELINES = [
    pipe("chain", {"steps": [{"name": "add1"}, {"name": "add10", "inputs": ["add1.outputs.SUM"]}],
                   "output": {"steps": ["add10"]}}),
    pipe("mapped", {"steps": [{"name": "add1", "inputs": ["mapped.inputs.X"], "tensorMap": {"mapped.inputs.X": "A"}},
                              {"name": "add10", "inputs": ["add1.outputs.SUM", "mapped.inputs.Y"]}],
                    "output": {"steps": ["add10"], "tensorMap": {"add10.outputs.SUM": "TOTAL"}}}),
    pipe("fork", {"steps": [{"name": "chooser"},
                            {"name": "add100", "inputs": ["chooser.outputs.LEFT"]},
                            {"name": "add200", "inputs": ["chooser.outputs.RIGHT"]}],
                  "output": {"steps": ["add100", "add200"], "stepsJoin": "any"}}),
    pipe("gated", {"steps": [{"name": "chooser"},
                             {"name": "add100", "inputs": ["gated.inputs.X"], "triggers": ["chooser.outputs.LEFT"]},
                             {"name": "add200", "inputs": ["gated.inputs.X"], "triggers": ["chooser.outputs.RIGHT"]}],
                   "output": {"steps": ["add100", "add200"], "stepsJoin": "outer"}}),
    pipe("outer", {"steps": [{"name": "chooser"}, {"name": "add1"},
                             {"name": "add10", "inputs": ["chooser.outputs.LEFT", "add1.outputs.SUM"],
                              "joinType": "outer"}],
                   "output": {"steps": ["add10"]}}),
    pipe("inner", {"steps": [{"name": "chooser"}, {"name": "add1"},
                             {"name": "add10", "inputs": ["chooser.outputs.LEFT", "add1.outputs.SUM"]}],
                   "output": {"steps": ["add10", "add1"], "stepsJoin": "outer"}}),
    pipe("first", {"steps": [{"name": "chooser"}, {"name": "add1"},
                             {"name": "add10", "inputs": ["chooser.outputs.RIGHT", "add1.outputs.SUM"],
                              "inputsJoinType": "any"}]}),
    pipe("chainb", {"steps": [{"name": "add1"}]}),
    pipe("outerchain", {"steps": [{"name": "add100", "inputs": ["chain.outputs.SUM"]}]}),
    pipe("classify", {"steps": [{"name": "iris"}]}),
    pipe("broken", {"steps": [{"name": "add1"}, {"name": "failing", "inputs": ["add1"]}]}),
    pipe("unready", {"steps": [{"name": "add1"}]}, ready=False),
]


@pytest.fixture(scope="module")
def gw(mlserver: MLServerProcess) -> Iterator[Gateway]:
    live = mlserver.http_address
    names = ["iris", "add1", "add10", "add100", "add200", "chooser", "failing"]
    table = RoutingTable(
        models=[route(n, live, grpc=(f"127.0.0.1:{mlserver.grpc_port}",)) for n in names],
        pipelines=PIPELINES,
        experiments=[ExperimentRoute(namespace="default", name="ab", resource_type="pipeline", ready=True,
                                     default="chainb", candidates=[Candidate(name="chain", weight=1),
                                                                  Candidate(name="fork", weight=1)]),
                     ExperimentRoute(namespace="default", name="shadowed", resource_type="pipeline", ready=True,
                                     candidates=[Candidate(name="chain", weight=1)], mirror="fork",
                                     mirror_percent=100)])
    lt = LoopThread()
    gateway = Gateway(lt, grpc=True, routes=table, upstream_timeout=20.0)
    try:
        yield gateway
    finally:
        gateway.stop()
        lt.close()


def x(*values: float, name: str = "X") -> dict[str, Any]:
    return {"name": name, "shape": [len(values)], "datatype": "FP64", "data": list(values)}


def infer(gw: Gateway, name: str, *inputs: dict[str, Any], header: bool = False, **headers: str) -> httpx.Response:
    path = "anything" if header else name
    if header:
        headers["seldon-model"] = name
    return httpx.post(f"{gw.url}/v2/models/{path}/infer", json={"inputs": list(inputs)}, headers=headers,
                      timeout=30)


def out(r: httpx.Response) -> dict[str, list[float]]:
    assert r.status_code == 200, r.text
    return {o["name"]: o["data"] for o in r.json()["outputs"]}


def test_chain_by_path_and_header_names_the_steps(gw: Gateway) -> None:
    r = infer(gw, "chain.pipeline", x(1.0, 2.0))
    assert out(r) == {"SUM": [12.0, 13.0]}
    assert r.headers["x-seldon-route"] == ":chain.pipeline:add1:add10:"
    assert out(infer(gw, "chain.pipeline", x(5.0), header=True)) == {"SUM": [16.0]}


def test_tensor_map_in_and_out(gw: Gateway) -> None:
    assert out(infer(gw, "mapped.pipeline", x(1.0), x(3.0, name="Y"))) == {"TOTAL": [1 + 1 + 3 + 10.0]}


def test_chooser_routes_to_one_branch(gw: Gateway) -> None:
    left = infer(gw, "fork.pipeline", x(-1.0))
    assert out(left) == {"SUM": [99.0]} and left.headers["x-seldon-route"] == ":fork.pipeline:chooser:add100:"
    right = infer(gw, "fork.pipeline", x(1.0))
    assert out(right) == {"SUM": [201.0]} and right.headers["x-seldon-route"] == ":fork.pipeline:chooser:add200:"


def test_triggers_gate_steps(gw: Gateway) -> None:
    r = infer(gw, "gated.pipeline", x(-2.0))
    assert out(r) == {"SUM": [98.0]} and "add200" not in r.headers["x-seldon-route"]


def test_join_types(gw: Gateway) -> None:
    assert out(infer(gw, "outer.pipeline", x(1.0))) == {"SUM": [1 + 1 + 10.0]}  # RIGHT: only add1's SUM came
    assert out(infer(gw, "outer.pipeline", x(-1.0))) == {"SUM": [-1 + 0 + 10.0]}  # both: LEFT -1 + SUM 0
    inner = infer(gw, "inner.pipeline", x(1.0))  # LEFT absent: add10 does not run; the outer output has add1
    assert out(inner) == {"SUM": [2.0]} and "add10" not in inner.headers["x-seldon-route"]
    assert out(infer(gw, "first.pipeline", x(3.0))) in ({"SUM": [13.0]}, {"SUM": [14.0]})  # one input only


def test_pipeline_of_pipelines_and_sklearn_step(gw: Gateway) -> None:
    r = infer(gw, "outerchain.pipeline", x(1.0))
    assert out(r) == {"SUM": [112.0]}
    assert r.headers["x-seldon-route"] == ":outerchain.pipeline:chain.pipeline:add1:add10:add100:"
    assert out(infer(gw, "classify.pipeline", *IRIS_INPUT["inputs"])) == {"predict": [0, 2]}


def test_failing_step_is_named_and_unready_pipeline_says_why(gw: Gateway) -> None:
    r = infer(gw, "broken.pipeline", x(1.0))
    assert r.status_code >= 400
    assert r.json()["code"] == "PipelineStepFailed"
    assert r.json()["message"].startswith("pipeline broken: step failing failed: model failing answered")
    assert "this model always fails" in r.json()["message"]
    r = infer(gw, "unready.pipeline", x(1.0))
    assert r.status_code == 503 and r.json()["code"] == "PipelineNotReady"
    assert "step add1: model add1 is not ready" in r.json()["message"]
    r = infer(gw, "nope.pipeline", x(1.0))
    assert r.status_code == 404 and "pipelines here: broken, chain, chainb" in r.json()["message"]


def test_hostile_bodies_are_refused(gw: Gateway) -> None:
    bad = httpx.post(f"{gw.url}/v2/models/chain.pipeline/infer", content=b"{not json", timeout=10)
    assert bad.status_code == 400
    lying = httpx.post(f"{gw.url}/v2/models/chain.pipeline/infer", timeout=10,
                       json={"inputs": [{"name": "X", "shape": [1000000000], "datatype": "FP64", "data": [1.0]}]})
    assert lying.status_code == 400


def test_experiment_splits_between_pipelines(gw: Gateway) -> None:
    seen = set()
    for _ in range(30):
        r = infer(gw, "ab.experiment", x(1.0))
        assert r.status_code == 200, r.text
        seen.add(r.headers["x-seldon-route"].split(":")[2])
    assert seen == {"chain", "fork"}
    sticky = infer(gw, "ab.experiment", x(1.0), **{"x-seldon-route": ":ab.experiment:fork:"})
    assert sticky.headers["x-seldon-route"].startswith(":ab.experiment:fork:fork.pipeline:")
    takeover = infer(gw, "chainb.pipeline", x(1.0))  # the experiment's default: its requests go through it
    assert takeover.headers["x-seldon-route"].startswith(":ab.experiment:")


def test_mirror_pipeline_gets_a_copy(gw: Gateway) -> None:
    def copies() -> float:
        for line in httpx.get(f"{gw.url}/metrics", timeout=10).text.splitlines():
            if line.startswith("berth_gateway_mirror_requests_total{") and 'model="fork.pipeline"' in line \
                    and 'outcome="ok"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = copies()
    for _ in range(3):
        r = infer(gw, "shadowed.experiment", x(1.0))
        assert out(r) == {"SUM": [12.0]} and r.headers["x-seldon-route"].startswith(":shadowed.experiment:chain:")
    eventually(lambda: copies() == before + 3)


def test_grpc_pipeline(gw: Gateway) -> None:
    from mlserver.grpc import dataplane_pb2 as pb
    from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name="chain.pipeline", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="X", datatype="FP64", shape=[2], contents=pb.InferTensorContents(fp64_contents=[1.0, 2.0]))])
    with grpc.insecure_channel(gw.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer, call = stub.ModelInfer.with_call(request, timeout=20)
        assert [o.name for o in answer.outputs] == ["SUM"]
        assert list(answer.outputs[0].contents.fp64_contents) == [12.0, 13.0]
        assert dict(call.initial_metadata())["x-seldon-route"] == ":chain.pipeline:add1:add10:"
        assert dict(call.trailing_metadata())["x-seldon-route"] == ":chain.pipeline:add1:add10:"
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(pb.ModelInferRequest(model_name="broken.pipeline", inputs=request.inputs), timeout=20)
        assert "step failing failed" in (info.value.details() or "")


def test_two_step_pipeline_costs_no_more_than_two_client_calls(gw: Gateway, mlserver: MLServerProcess) -> None:
    body = {"inputs": [x(1.0)]}
    with httpx.Client(timeout=10) as client:
        def pipeline() -> None:
            assert client.post(f"{gw.url}/v2/models/chain.pipeline/infer", json=body).status_code == 200

        def by_hand() -> None:
            first = client.post(f"{gw.url}/v2/models/add1/infer", json=body).json()
            second = {"inputs": [{k: v for k, v in first["outputs"][0].items() if k != "parameters"}]}
            assert client.post(f"{gw.url}/v2/models/add10/infer", json=second).status_code == 200

        def timed(fn: Any) -> float:
            started = time.perf_counter()
            fn()
            return time.perf_counter() - started

        for _ in range(5):
            pipeline()
            by_hand()
        n = 50  # interleaved, so that the machine's load of the moment weighs on both alike
        pairs = [(timed(pipeline), timed(by_hand)) for _ in range(n)]
        through, hand = sorted(p for p, _ in pairs)[n // 2], sorted(h for _, h in pairs)[n // 2]
    assert through <= hand, f"pipeline {through * 1000:.2f} ms vs two client calls {hand * 1000:.2f} ms"


def test_guarded_namespace_refuses_before_naming_anything(mlserver: MLServerProcess) -> None:
    """A hostile caller: no token, a wrong token, probing for a pipeline name; only a good token gets an answer."""
    from berth.resources.identity import hash_token
    from berth.wire.routes import NamespaceAuth, TableAuth

    table = RoutingTable(
        models=[route("add1", mlserver.http_address, namespace="locked")],
        pipelines=[PipelineRoute(namespace="locked", name="secret", ready=True, spec={"steps": [{"name": "add1"}]})],
        auth=TableAuth(namespaces=[NamespaceAuth(namespace="locked", tokens=[hash_token("good-token")])]))
    lt = LoopThread()
    gateway = Gateway(lt, routes=table, upstream_timeout=20.0, rest_limits=RestLimits(body_timeout=0.5))
    try:
        ns = {"seldon-namespace": "locked"}
        anonymous = infer(gateway, "secret.pipeline", x(1.0), **ns)
        assert anonymous.status_code == 401 and "secret" not in anonymous.text
        wrong = infer(gateway, "secret.pipeline", x(1.0), Authorization="Bearer nope", **ns)
        assert wrong.status_code == 403 and "secret" not in wrong.text
        probing = infer(gateway, "other.pipeline", x(1.0), Authorization="Bearer good-token", **ns)
        assert probing.status_code == 404 and "secret" not in probing.text
        ok = infer(gateway, "secret.pipeline", x(1.0), Authorization="Bearer good-token", **ns)
        assert out(ok) == {"SUM": [2.0]}
        port = int(gateway.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # a body that never finishes
            sock.sendall(b"POST /v2/models/secret.pipeline/infer HTTP/1.1\r\nHost: x\r\nseldon-namespace: locked\r\n"
                         b"Authorization: Bearer good-token\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"inputs\": [")
            started = time.monotonic()
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5s" in answer
            assert time.monotonic() - started < 3
    finally:
        gateway.stop()
        lt.close()
