"""ModelStreamInfer through the gateway, against a real MLServer running a streaming model.

The model (a custom MLServer runtime written by the test) answers every request of the stream with three
responses, 0.2 s apart, each naming the model and counting the request's values; the tests check that
answers arrive as they are produced (not gathered at the end), in order, interleaved with requests sent
later on the same stream, and routed like ModelInfer (experiments, errors).
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

from berth.adapters.mlserver_proc import MLServerProcess
from berth.wire.routes import Candidate, ExperimentRoute, RoutingTable
from tests.support.gateway import Gateway, LoopThread, route

pytestmark = pytest.mark.e2e

STREAMER = '''
import asyncio
from typing import AsyncIterator
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class Streamer(MLModel):
    async def load(self) -> bool:
        return True

    async def predict_stream(self, payloads: AsyncIterator[InferenceRequest]) -> AsyncIterator[InferenceResponse]:
        async for payload in payloads:
            count = len(payload.inputs[0].data)
            for step in range(3):
                if step:
                    await asyncio.sleep(0.2)
                yield InferenceResponse(model_name=self.name, outputs=[
                    ResponseOutput(name="step", shape=[1], datatype="INT64", data=[step * 100 + count])])
'''


def request(values: int, model: str = "echo") -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT64", shape=[values],
                                                   contents=pb.InferTensorContents(int64_contents=[1] * values))
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    proc = MLServerProcess(tmp_path_factory.mktemp("mlserver"))
    proc.start()
    try:
        proc.wait_ready(90)
        for name in ("echo", "echo2"):
            folder = proc.repository / name
            folder.mkdir(parents=True)
            (folder / "streamer.py").write_text(STREAMER)
            (folder / "model-settings.json").write_text(json.dumps({"name": name,
                                                                    "implementation": "streamer.Streamer"}))
            r = httpx.post(f"http://{proc.http_address}/v2/repository/models/{name}/load", timeout=60)
            assert r.status_code == 200, r.text
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def gw(mlserver: MLServerProcess, lt: LoopThread) -> Iterator[Gateway]:
    upstream = (f"127.0.0.1:{mlserver.grpc_port}",)
    table = RoutingTable(revision=1, models=[route("echo", mlserver.http_address, grpc=upstream),
                                             route("echo2", mlserver.http_address, grpc=upstream)],
                         experiments=[ExperimentRoute(namespace="default", name="ab", ready=True, candidates=[
                             Candidate(name="echo", weight=1), Candidate(name="echo2", weight=1)])])
    gateway = Gateway(lt, grpc=True, routes=table)
    yield gateway
    gateway.stop()


def answers_of(address: str, requests: Any, metadata: tuple[tuple[str, str], ...] = ()
               ) -> tuple[list[tuple[str, int, float]], Any]:
    """(model, value, seconds since the start) per answer, and the call."""
    with grpc.insecure_channel(address) as channel:
        started = time.monotonic()
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests, metadata=metadata, timeout=30)
        got = [(a.model_name, a.outputs[0].contents.int64_contents[0], time.monotonic() - started) for a in call]
        return got, call


def test_stream_through_gateway_equals_direct_and_arrives_as_produced(gw: Gateway, mlserver: MLServerProcess
                                                                      ) -> None:
    direct, _ = answers_of(f"127.0.0.1:{mlserver.grpc_port}", iter([request(2), request(5)]))
    via, call = answers_of(gw.grpc, iter([request(2), request(5)]))
    assert [(m, v) for m, v, _ in via] == [(m, v) for m, v, _ in direct] == [
        ("echo", 2), ("echo", 102), ("echo", 202), ("echo", 5), ("echo", 105), ("echo", 205)]
    assert via[-1][2] - via[0][2] >= 0.6  # the first answer came ~0.8 s before the last: forwarded as produced
    assert dict(call.initial_metadata())["x-seldon-route"] == ":echo:"
    assert dict(call.trailing_metadata())["x-seldon-route"] == ":echo:"


def test_requests_sent_later_on_the_stream_are_forwarded_as_they_come(gw: Gateway) -> None:
    """True bidi: the second request is only sent once the first one's answers are in."""
    outbox: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.ModelInferRequest]:
        while (item := outbox.get()) is not None:
            yield item

    with grpc.insecure_channel(gw.grpc) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=30)
        outbox.put(request(3))
        first = [next(call).outputs[0].contents.int64_contents[0] for _ in range(3)]
        outbox.put(request(7))
        outbox.put(None)
        rest = [a.outputs[0].contents.int64_contents[0] for a in call]
    assert first == [3, 103, 203] and rest == [7, 107, 207]


def test_stream_follows_experiments_and_names_errors(gw: Gateway) -> None:
    seen = set()
    with grpc.insecure_channel(gw.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(24):  # a 50/50 split: both candidates show up (all 24 on one: 1 in 8 million)
            call = stub.ModelStreamInfer(iter([request(1, "ab.experiment")]), timeout=30)
            seen.add(next(call).model_name)  # the first answer is enough; the rest is cancelled
            call.cancel()
    assert seen == {"echo", "echo2"}
    via, call = answers_of(gw.grpc, iter([request(1, "whatever")]), (("seldon-model", "echo2"),))
    assert {m for m, _, _ in via} == {"echo2"}
    with pytest.raises(grpc.RpcError) as info:
        answers_of(gw.grpc, iter([request(1, "nosuch")]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nosuch" in info.value.details()


def test_a_stream_the_client_cancels_is_cancelled_upstream_and_the_gateway_carries_on(gw: Gateway) -> None:
    with grpc.insecure_channel(gw.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(iter([request(4)]), timeout=30)
        assert next(call).outputs[0].contents.int64_contents[0] == 4
        call.cancel()
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() == grpc.StatusCode.CANCELLED
        again = [a.outputs[0].contents.int64_contents[0] for a in stub.ModelStreamInfer(iter([request(6)]),
                                                                                      timeout=30)]
    assert again == [6, 106, 206]
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'code="OK",experiment="",model="echo",namespace="default",protocol="grpc"' in metrics


def test_gzip_compressed_stream_is_routed_and_its_later_messages_pass_as_sent(gw: Gateway) -> None:
    with grpc.insecure_channel(gw.grpc, compression=grpc.Compression.Gzip) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([request(2, "ab.experiment"), request(3, "ab.experiment")]), timeout=30)
        got = [(a.model_name, a.outputs[0].contents.int64_contents[0]) for a in call]
    assert [v for _, v in got] == [2, 102, 202, 3, 103, 203] and len({m for m, _ in got}) == 1
