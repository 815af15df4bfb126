"""The gateway's V2 gRPC endpoint in front of a real MLServer: pass-through, routing, errors, retries.

One MLServer process holds the iris model under two names (iris, iris2); the gateway serves REST and
gRPC from a static table, and the tests talk to it with MLServer's own generated stubs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

from berth.adapters.mlserver_proc import MLServerProcess, free_port
from berth.wire.routes import Candidate, ExperimentRoute, RoutingTable
from tests.support.gateway import Gateway, LoopThread, route, start_mlserver
from tests.support.models import IRIS_INPUT

pytestmark = pytest.mark.e2e


def infer_request(model: str = "iris", values: list[float] | None = None, shape: tuple[int, ...] = (2, 4)
                  ) -> pb.ModelInferRequest:
    spec = IRIS_INPUT["inputs"][0]
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=spec["name"], datatype="FP64", shape=list(shape),
        contents=pb.InferTensorContents(fp64_contents=values if values is not None else spec["data"]))
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])


async def stand_in(model_infer: Any) -> tuple[grpc.aio.Server, int]:
    """A started gRPC server on a free loopback port whose ModelInfer is ``model_infer`` (raw bytes in, out)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def metadata_of(call: Any) -> dict[str, str]:
    return {m.key: m.value for m in (call.trailing_metadata() or ())}


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    proc = start_mlserver(tmp_path_factory.mktemp("mlserver"), "iris", "iris2")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def dead() -> tuple[str, str]:
    return f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def gw(mlserver: MLServerProcess, lt: LoopThread, dead: tuple[str, str]) -> Iterator[Gateway]:
    live, live_grpc = mlserver.http_address, f"127.0.0.1:{mlserver.grpc_port}"
    table = RoutingTable(revision=1, models=[
        route("iris", live, grpc=(live_grpc,)),
        route("iris2", live, grpc=(live_grpc,)),
        route("wine", state="LoadFailed", reason="replica mlserver/0: MLServer answered 400: bad model"),
        route("iris", dead[0], live, namespace="retry", grpc=(dead[1], live_grpc)),
        route("iris", dead[0], namespace="gone", grpc=(dead[1],)),
    ], experiments=[
        ExperimentRoute(namespace="default", name="ab", candidates=[Candidate(name="iris", weight=50),
                                                                    Candidate(name="iris2", weight=50)], ready=True),
        ExperimentRoute(namespace="default", name="waiting", candidates=[Candidate(name="iris", weight=1)],
                        ready=False, reason="candidate model iris3 not found in namespace default"),
    ])
    gateway = Gateway(lt, grpc=True, routes=table, upstream_timeout=20.0, max_request_bytes=1 << 20)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def stub(gw: Gateway) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(gw.grpc) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def direct(mlserver: MLServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{mlserver.grpc_port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_infer_through_gateway_equals_direct_and_names_the_route(stub: Any, direct: Any) -> None:
    via, call = stub.ModelInfer.with_call(infer_request())
    expected = direct.ModelInfer(infer_request())
    assert via.model_name == "iris"
    assert via.outputs == expected.outputs
    assert metadata_of(call)["x-seldon-route"] == ":iris:"
    assert dict(call.initial_metadata())["x-seldon-route"] == ":iris:"  # as Seldon's gateway sends it


def test_seldon_model_metadata_routes_over_model_name(stub: Any) -> None:
    via, call = stub.ModelInfer.with_call(infer_request("something-else"), metadata=(("seldon-model", "iris2"),))
    assert via.model_name == "iris2"
    assert metadata_of(call)["x-seldon-route"] == ":iris2:"


def test_model_metadata_ready_and_server_calls(stub: Any, direct: Any) -> None:
    assert stub.ModelMetadata(pb.ModelMetadataRequest(name="iris")) == \
        direct.ModelMetadata(pb.ModelMetadataRequest(name="iris"))
    assert stub.ModelReady(pb.ModelReadyRequest(name="iris2")).ready is True
    assert stub.ServerLive(pb.ServerLiveRequest()).live is True
    assert stub.ServerReady(pb.ServerReadyRequest()).ready is True
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "berth-gateway"


def test_standard_grpc_health_check_says_serving(gw: Gateway) -> None:
    with grpc.insecure_channel(gw.grpc) as channel:  # grpc.health.v1 HealthCheckRequest{service: ""}
        assert channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5) == b"\x08\x01"  # SERVING
        assert channel.unary_unary("/grpc.health.v1.Health/Check")(b"\x0a\x03any", timeout=5) == b"\x08\x01"


def test_gateway_errors_are_grpc_statuses_with_the_rest_messages(stub: Any, gw: Gateway) -> None:
    cases = [("nosuch", {}, grpc.StatusCode.NOT_FOUND, 404, "NotFound"),
             ("wine", {}, grpc.StatusCode.UNAVAILABLE, 503, "ModelNotReady"),
             ("waiting.experiment", {}, grpc.StatusCode.UNAVAILABLE, 503, "ExperimentNotReady"),
             ("iris", {"seldon-namespace": "elsewhere"}, grpc.StatusCode.NOT_FOUND, 404, "NotFound")]
    for model, headers, code, status, error_code in cases:
        rest = httpx.post(f"{gw.url}/v2/models/{model}/infer", json=IRIS_INPUT, headers=headers)
        assert rest.status_code == status
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(infer_request(model), metadata=tuple(headers.items()))
        err = info.value
        assert err.code() == code
        assert err.details() == rest.json()["message"]
        assert metadata_of(err)["berth-error-code"] == error_code == rest.json()["code"]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(pb.ModelInferRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "names no model" in info.value.details()


def test_inference_server_errors_pass_through(stub: Any, direct: Any) -> None:
    bad = infer_request(values=[5.1], shape=(2, 4))
    with pytest.raises(grpc.RpcError) as via:
        stub.ModelInfer(bad)
    with pytest.raises(grpc.RpcError) as straight:
        direct.ModelInfer(bad)
    assert via.value.code() == straight.value.code() != grpc.StatusCode.OK
    assert via.value.details() == straight.value.details()
    assert metadata_of(via.value)["x-seldon-route"] == ":iris:"


def test_connect_failure_is_retried_on_another_replica(stub: Any, dead: tuple[str, str]) -> None:
    for _ in range(4):
        answer = stub.ModelInfer(infer_request(), metadata=(("seldon-namespace", "retry"),))
        assert answer.model_name == "iris"
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(infer_request(), metadata=(("seldon-namespace", "gone"),))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"inference server {dead[1]} (gRPC) refused connection" in info.value.details()


def test_experiment_split_and_sticky_route_over_grpc(stub: Any) -> None:
    seen: Counter[str] = Counter()
    routes = {}
    for _ in range(40):
        answer, call = stub.ModelInfer.with_call(infer_request("iris"), metadata=(("seldon-model", "ab.experiment"),))
        seen[answer.model_name] += 1
        routes[answer.model_name] = metadata_of(call)["x-seldon-route"]
    assert set(seen) == {"iris", "iris2"}
    assert routes["iris2"] == ":ab.experiment:iris2:"
    for _ in range(10):
        answer, call = stub.ModelInfer.with_call(
            infer_request("ab.experiment"), metadata=(("x-seldon-route", routes["iris2"]),))
        assert answer.model_name == "iris2"
        assert metadata_of(call)["x-seldon-route"] == routes["iris2"]


def test_large_messages_cross_flow_control_both_ways(stub: Any, direct: Any) -> None:
    """~0.9 MB in, ~0.2 MB out: both are far over HTTP/2's 64 KiB initial windows, so the gateway must wait for
    WINDOW_UPDATEs on each side; the answer is byte for byte MLServer's."""
    rows = 28_000
    values = [float(i % 7) for i in range(rows * 4)]
    via = stub.ModelInfer(infer_request(values=values, shape=(rows, 4)))
    expected = direct.ModelInfer(infer_request(values=values, shape=(rows, 4)))
    assert via.outputs[0].shape[0] == rows
    assert via.SerializeToString() == expected.SerializeToString()


def test_tensors_over_grpc_default_4_mib_pass_both_ways(lt: LoopThread, mlserver: MLServerProcess) -> None:
    """Local MLServers accept gRPC messages up to 256 MiB, like the gateway (gRPC's own default is 4 MiB)."""
    rows = 150_000  # 4.8 MB in
    gw = Gateway(lt, grpc=True, routes=RoutingTable(models=[route("iris", mlserver.http_address,
                                                                  grpc=(f"127.0.0.1:{mlserver.grpc_port}",))]))
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    try:
        with grpc.insecure_channel(gw.grpc, options=options) as channel:
            answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer_request(values=[float(i % 7) for i in range(rows * 4)], shape=(rows, 4)), timeout=60)
        assert answer.outputs[0].shape[0] == rows
    finally:
        gw.stop()


def test_gzip_compressed_request_is_routed_and_answered(gw: Gateway, direct: Any) -> None:
    with grpc.insecure_channel(gw.grpc, compression=grpc.Compression.Gzip) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request("iris2"))
    assert answer.model_name == "iris2"
    assert answer.outputs == direct.ModelInfer(infer_request("iris2")).outputs


def test_many_concurrent_calls_on_one_connection_each_get_their_own_answer(gw: Gateway, lt: LoopThread,
                                                                          direct: Any) -> None:
    """200 calls in flight on one client connection (multiplexed upstream too): every answer is its own."""
    def request(i: int) -> pb.ModelInferRequest:
        rows = 1 + i % 5
        return infer_request(values=[float((i + j) % 8) for j in range(rows * 4)], shape=(rows, 4))

    async def run() -> list[bytes]:
        async with grpc.aio.insecure_channel(gw.grpc) as channel:
            aio_stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def one(i: int) -> bytes:
                answer = await aio_stub.ModelInfer(request(i), timeout=30)
                return answer.outputs[0].SerializeToString()  # type: ignore[no-any-return]

            return await asyncio.gather(*(one(i) for i in range(200)))

    results = lt.call(run(), timeout=60)
    expected = {i: direct.ModelInfer(request(i)).outputs[0].SerializeToString() for i in range(40)}
    assert [results[i] == expected[i % 40] for i in range(200)] == [True] * 200


def test_client_deadline_is_kept_and_named(lt: LoopThread) -> None:
    """The client's deadline (grpc-timeout) is shorter than the gateway's: the gateway keeps it, cancelling the
    upstream call then rather than after its own 30 s."""
    cancelled: list[float] = []

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.monotonic()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(time.monotonic() - started)
            raise
        return b""

    server, port = lt.call(stand_in(slow))
    gw = Gateway(lt, grpc=True, routes=RoutingTable(models=[route("iris", "127.0.0.1:1", grpc=(f"127.0.0.1:{port}",))]),
                 upstream_timeout=30.0)
    try:
        with grpc.insecure_channel(gw.grpc) as channel, pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(), timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 3
        while not cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cancelled and cancelled[0] < 2.0, "the upstream call was not cancelled at the client's deadline"
    finally:
        gw.stop()
        lt.call(server.stop(0))


def test_unknown_method_is_unimplemented_and_http1_is_refused(gw: Gateway, stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{gw.grpc}/", timeout=5)


def test_oversized_message_is_resource_exhausted(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(infer_request(values=[1.0] * 200_000, shape=(50_000, 4)))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metrics_count_grpc_by_status(stub: Any, gw: Gateway) -> None:
    stub.ModelInfer(infer_request())
    text = httpx.get(f"{gw.url}/metrics").text
    assert 'berth_gateway_requests_total{candidate="",code="OK",experiment="",model="iris",namespace="default",' \
           'protocol="grpc"}' in text
    assert 'code="NOT_FOUND",experiment="",model="",namespace="",protocol="grpc"}' in text


def test_slow_inference_server_is_deadline_exceeded(lt: LoopThread) -> None:
    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(3)
        return b""

    server, port = lt.call(stand_in(slow))
    upstream = f"127.0.0.1:{port}"
    gw = Gateway(lt, grpc=True, routes=RoutingTable(models=[route("iris", "127.0.0.1:1", grpc=(upstream,))]),
                 upstream_timeout=0.5)
    try:
        with grpc.insecure_channel(gw.grpc) as channel, pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(), timeout=10)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert f"inference server {upstream} did not answer model iris in namespace default within 0.5s" \
            in info.value.details()
    finally:
        gw.stop()
        lt.call(server.stop(0))


def test_replica_that_vanishes_mid_request_is_retried_on_another(lt: LoopThread, mlserver: MLServerProcess) -> None:
    """A replica whose connection dies with the request in it (killed, restarting) costs one retry."""
    received: list[int] = []

    class Dying(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            received.append(len(data))
            if b"ModelInfer" in data:  # the request's headers are in (the gateway never indexes :path): die
                self.transport.abort()  # type: ignore[attr-defined]

    async def serve() -> tuple[asyncio.AbstractServer, int]:
        server = await asyncio.get_running_loop().create_server(Dying, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]

    server, port = lt.call(serve())
    going = f"127.0.0.1:{port}"
    table = RoutingTable(models=[route("iris", "127.0.0.1:2", mlserver.http_address,
                                       grpc=(going, f"127.0.0.1:{mlserver.grpc_port}")),
                                 route("iris", "127.0.0.1:2", namespace="alone", grpc=(going,)),
                                 route("iris", "127.0.0.1:3", mlserver.http_address, namespace="once",
                                       grpc=(going, f"127.0.0.1:{mlserver.grpc_port}")
                                       ).model_copy(update={"idempotent": False})])
    gw = Gateway(lt, grpc=True, routes=table)
    try:
        with grpc.insecure_channel(gw.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(infer_request()).model_name == "iris"
            assert received, "the dying replica was never tried"
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(infer_request(), metadata=(("seldon-namespace", "alone"),))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"inference server {going} (gRPC) went away: " in info.value.details()
        assert "before answering" in info.value.details()
        with grpc.insecure_channel(gw.grpc) as channel:  # a model that must not get a request twice
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            outcomes = []
            for _ in range(2):
                try:
                    outcomes.append(stub.ModelInfer(infer_request(), metadata=(("seldon-namespace", "once"),)))
                except grpc.RpcError as exc:
                    outcomes.append(exc)
        errors = [o for o in outcomes if isinstance(o, grpc.RpcError)]
        assert len(errors) == 1 and errors[0].code() == grpc.StatusCode.UNAVAILABLE
        assert 'went away with the request for model iris in namespace once' in errors[0].details()
        assert 'berth.io/idempotent: "false"' in errors[0].details()
    finally:
        gw.stop()
        server.close()


def test_status_answered_by_a_live_server_is_passed_through_not_retried(lt: LoopThread,
                                                                        mlserver: MLServerProcess) -> None:
    """An answer is an answer: a server that says UNAVAILABLE is not asked again (the request reached it)."""
    calls: list[bytes] = []

    async def refusing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        calls.append(request)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "busy, come back later")
        return b""

    server, port = lt.call(stand_in(refusing))
    table = RoutingTable(models=[route("iris", "127.0.0.1:2", grpc=(f"127.0.0.1:{port}",))])
    gw = Gateway(lt, grpc=True, routes=table)
    try:
        with grpc.insecure_channel(gw.grpc) as channel, pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "busy, come back later"
        assert len(calls) == 1
        assert metadata_of(info.value)["x-seldon-route"] == ":iris:"
    finally:
        gw.stop()
        lt.call(server.stop(0))


def test_probe_checks_each_replica_grpc_port_too(gw: Gateway, mlserver: MLServerProcess,
                                                dead: tuple[str, str]) -> None:
    answer = httpx.get(f"{gw.url}/berth/v1/probe", timeout=15).json()
    assert answer["grpc"] == gw.grpc
    rows = {e["address"]: e for e in answer["endpoints"]}
    live = rows[mlserver.http_address]["grpc"]
    assert live["ok"] and live["address"] == f"127.0.0.1:{mlserver.grpc_port}" and live["error"] is None
    gone = rows[dead[0]]["grpc"]
    assert not gone["ok"] and gone["address"] == dead[1] and gone["error"] == "the gRPC port refused connection"
