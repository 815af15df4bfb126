"""Inference tokens end to end: a real MLServer behind a gateway whose routing table guards a namespace.

REST and gRPC without a token, with another namespace's token and with the right one; a token revoked
(the table republished without its hash) refused at once; an unguarded namespace as before; metrics and
the probe for operators only; the caller's token never reaches the inference server.  Then the real
control plane: a SeldonRuntime annotated ``berth.io/inference-auth: required`` makes the table it publishes
guard the namespace, and tokens created and revoked through the API take effect at the gateway.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

from berth.adapters.mlserver_proc import MLServerProcess, free_port
from berth.client.http import BerthClient
from berth.control.routes import INFERENCE_AUTH_ANNOTATION
from berth.gateway.routing.auth import NEEDS_TOKEN, NO_ROLE
from berth.resources.identity import hash_token, new_token
from berth.wire.routes import NamespaceAuth, RoutingTable, TableAuth
from tests.support.gateway import Gateway, LoopThread, RoutesStandIn, eventually, route, start_mlserver
from tests.support.models import IRIS_INPUT
from tests.support.platform import SELDON, model_doc
from tests.support.servers import ControlPlane

pytestmark = pytest.mark.e2e

SECURE, OTHER = "secure", "other"
TENANT, NEIGHBOUR, OPERATOR = new_token(), new_token(), new_token()


def infer_request(model: str) -> pb.ModelInferRequest:
    spec = IRIS_INPUT["inputs"][0]
    tensor = pb.ModelInferRequest.InferInputTensor(name=spec["name"], datatype="FP64", shape=spec["shape"],
                                                   contents=pb.InferTensorContents(fp64_contents=spec["data"]))
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])


def table(mlserver: MLServerProcess, echo: str, *, tenant: bool = True, revision: int = 1) -> RoutingTable:
    live, live_grpc = mlserver.http_address, f"127.0.0.1:{mlserver.grpc_port}"
    return RoutingTable(revision=revision, models=[
        route("iris", live, namespace=SECURE, grpc=(live_grpc,)),
        route("fraud-detector", live, namespace=SECURE, grpc=(live_grpc,)),
        route("echo", "127.0.0.1:1", namespace=SECURE, grpc=(echo,)),
        route("iris", live, namespace=OTHER, grpc=(live_grpc,)),
        route("iris", live, grpc=(live_grpc,)),  # default: not guarded
    ], auth=TableAuth(namespaces=[NamespaceAuth(namespace=SECURE, tokens=[hash_token(TENANT)] if tenant else []),
                                  NamespaceAuth(namespace=OTHER, tokens=[hash_token(NEIGHBOUR)])],
                      everywhere=[hash_token(OPERATOR)], operators=[hash_token(OPERATOR)]))


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    proc = start_mlserver(tmp_path_factory.mktemp("mlserver"), "iris", "fraud-detector")
    yield proc
    proc.stop()


class Echo:
    """A stand-in inference server's gRPC port: records the metadata of each ModelInfer it gets."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.seen: list[dict[str, str]] = []

        async def model_infer(request: bytes, context: Any) -> bytes:
            self.seen.append({m.key: m.value for m in context.invocation_metadata()})
            return b""

        async def start() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService",
                {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self.server, port = lt.call(start())
        self.address = f"127.0.0.1:{port}"

    def stop(self) -> None:
        self.lt.call(self.server.stop(0))


@pytest.fixture(scope="module")
def echo(lt: LoopThread) -> Iterator[Echo]:
    e = Echo(lt)
    yield e
    e.stop()


@pytest.fixture
def setup(mlserver: MLServerProcess, lt: LoopThread, echo: Echo) -> Iterator[tuple[Gateway, RoutesStandIn]]:
    standin = RoutesStandIn(lt, table(mlserver, echo.address), free_port())
    standin.start()
    gw = Gateway(lt, grpc=True, control_url=standin.url)
    try:
        eventually(lambda: httpx.get(f"{gw.url}/v2/health/ready").status_code == 200)
        yield gw, standin
    finally:
        gw.stop()
        standin.stop()


def post(gw: Gateway, model: str, namespace: str, token: str | None = None) -> httpx.Response:
    headers = {"seldon-namespace": namespace}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{gw.url}/v2/models/{model}/infer", json=IRIS_INPUT, headers=headers, timeout=30)


def grpc_call(gw: Gateway, method: str, request: Any, namespace: str, token: str | None = None) -> Any:
    metadata = [("seldon-namespace", namespace)]
    if token is not None:
        metadata.append(("authorization", f"Bearer {token}"))
    with grpc.insecure_channel(gw.grpc) as channel:
        return getattr(pb_grpc.GRPCInferenceServiceStub(channel), method)(request, metadata=metadata, timeout=30)


def grpc_code(gw: Gateway, method: str, request: Any, namespace: str, token: str | None = None) -> tuple[str, str]:
    try:
        grpc_call(gw, method, request, namespace, token)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


def test_rest_refuses_without_the_right_token_and_serves_with_it(setup: tuple[Gateway, RoutesStandIn]) -> None:
    gw, _ = setup
    for model in ("iris", "fraud-detector", "nosuch", "ab.experiment"):
        none, neighbour = post(gw, model, SECURE), post(gw, model, SECURE, NEIGHBOUR)
        assert (none.status_code, neighbour.status_code) == (401, 403), model
        assert none.json() == {"code": "Unauthenticated", "message": NEEDS_TOKEN, "details": None}
        assert neighbour.json() == {"code": "Forbidden", "message": NO_ROLE, "details": None}
        assert none.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/v2/models/iris", "/v2/models/iris/ready"):
        assert httpx.get(gw.url + path, headers={"seldon-namespace": SECURE}).status_code == 401
        assert httpx.get(gw.url + path, headers={"seldon-namespace": SECURE,
                                                 "Authorization": f"Bearer {TENANT}"}).status_code == 200
    ok = post(gw, "iris", SECURE, TENANT)
    assert ok.status_code == 200 and ok.json()["outputs"] and ok.headers["x-seldon-route"] == ":iris:"
    assert post(gw, "iris", SECURE, OPERATOR).status_code == 200  # a role in every namespace
    assert post(gw, "iris", OTHER, NEIGHBOUR).status_code == 200 and post(gw, "iris", OTHER, TENANT).status_code == 403
    missing = post(gw, "nosuch", SECURE, TENANT)
    assert missing.status_code == 404 and missing.json()["message"] == f"model nosuch not found in namespace {SECURE}"
    assert "fraud-detector" not in missing.text
    # the namespace without the annotation: as before (no token, and its 404 still lists what is there)
    assert post(gw, "iris", "default").status_code == 200
    assert "models here: iris" in post(gw, "nosuch", "default").json()["message"]


def test_grpc_refuses_without_the_right_token_and_serves_with_it(setup: tuple[Gateway, RoutesStandIn]) -> None:
    gw, _ = setup
    request = infer_request("fraud-detector")
    meta = pb.ModelMetadataRequest(name="fraud-detector")
    ready = pb.ModelReadyRequest(name="fraud-detector")
    for method, msg in (("ModelInfer", request), ("ModelMetadata", meta), ("ModelReady", ready)):
        assert grpc_code(gw, method, msg, SECURE) == ("UNAUTHENTICATED", NEEDS_TOKEN)
        assert grpc_code(gw, method, msg, SECURE, NEIGHBOUR) == ("PERMISSION_DENIED", NO_ROLE)
        assert grpc_code(gw, method, msg, SECURE, TENANT) == ("OK", "")
    answer = grpc_call(gw, "ModelInfer", request, SECURE, TENANT)
    assert answer.model_name == "fraud-detector" and answer.outputs
    code, details = grpc_code(gw, "ModelInfer", infer_request("nosuch"), SECURE, TENANT)
    assert code == "NOT_FOUND" and "fraud-detector" not in details
    assert grpc_code(gw, "ModelInfer", infer_request("iris"), "default") == ("OK", "")
    with grpc.insecure_channel(gw.grpc) as channel:  # the health of the gateway stays open
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest()).live and stub.ServerReady(pb.ServerReadyRequest()).ready

    def stream(token: str | None) -> tuple[str, int]:
        metadata = [("seldon-namespace", SECURE)] + ([("authorization", f"Bearer {token}")] if token else [])
        with grpc.insecure_channel(gw.grpc) as channel:
            try:
                answers = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
                    iter([request]), metadata=metadata, timeout=30))
            except grpc.RpcError as exc:
                return exc.code().name, 0
        return "OK", len(answers)

    assert stream(None) == ("UNAUTHENTICATED", 0)
    assert stream(NEIGHBOUR) == ("PERMISSION_DENIED", 0)
    assert stream(TENANT) == ("OK", 1)


def test_the_token_never_reaches_the_inference_server(setup: tuple[Gateway, RoutesStandIn], echo: Echo) -> None:
    gw, _ = setup
    echo.seen.clear()
    assert grpc_code(gw, "ModelInfer", pb.ModelInferRequest(model_name="echo"), SECURE, TENANT) == ("OK", "")
    assert len(echo.seen) == 1 and echo.seen[0]["seldon-namespace"] == SECURE
    assert "authorization" not in echo.seen[0] and TENANT not in json.dumps(echo.seen)


def test_a_revoked_token_is_refused_once_the_table_says_so(setup: tuple[Gateway, RoutesStandIn],
                                                           mlserver: MLServerProcess, echo: Echo) -> None:
    gw, standin = setup
    assert post(gw, "iris", SECURE, TENANT).status_code == 200
    standin.publish(table(mlserver, echo.address, tenant=False, revision=2))
    eventually(lambda: post(gw, "iris", SECURE, TENANT).status_code == 403, timeout=5)
    assert grpc_code(gw, "ModelInfer", infer_request("iris"), SECURE, TENANT)[0] == "PERMISSION_DENIED"
    assert post(gw, "iris", SECURE, OPERATOR).status_code == 200


def test_metrics_and_probe_for_operators_only(setup: tuple[Gateway, RoutesStandIn]) -> None:
    gw, _ = setup
    for path in ("/metrics", "/berth/v1/probe"):
        none = httpx.get(gw.url + path, timeout=15)
        tenant = httpx.get(gw.url + path, headers={"Authorization": f"Bearer {TENANT}"}, timeout=15)
        operator = httpx.get(gw.url + path, headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=15)
        assert (none.status_code, tenant.status_code, operator.status_code) == (401, 403, 200), path
        assert "fraud-detector" not in none.text + tenant.text
    assert "berth_gateway_requests_total" in httpx.get(f"{gw.url}/metrics",
                                                        headers={"Authorization": f"Bearer {OPERATOR}"}).text
    assert httpx.get(f"{gw.url}/v2/health/live").status_code == httpx.get(f"{gw.url}/v2/health/ready").status_code \
        == 200


# --- through the real control plane ----------------------------------------------------------------------

def runtime_doc(namespace: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": SELDON, "kind": "SeldonRuntime",
            "metadata": {"name": f"{namespace}-runtime", "namespace": namespace, "annotations": annotations},
            "spec": {"seldonConfig": "default"}}


def test_an_annotated_runtime_guards_its_namespace_through_the_control_plane(tmp_path: Path, lt: LoopThread) -> None:
    admin = os.environ["BERTH_TOKEN"]  # tests/conftest.py: the admin every test control plane knows
    with ControlPlane(tmp_path) as cp, BerthClient(cp.url, token=admin) as client:
        client.apply([runtime_doc("vault", {INFERENCE_AUTH_ANNOTATION: "required"}),
                      model_doc("m", str(tmp_path), namespace="vault"),
                      model_doc("m", str(tmp_path), namespace="plain")])
        gw = Gateway(lt, grpc=True, control_url=cp.url, token=admin)
        try:
            eventually(lambda: post(gw, "m", "vault").status_code == 401, timeout=20)
            assert post(gw, "m", "vault", new_token()).status_code == 403
            assert post(gw, "m", "vault", admin).status_code == 503  # let in: the model has no replica
            assert post(gw, "m", "plain").status_code == 503  # no annotation: open
            assert httpx.get(f"{gw.url}/metrics").status_code == 401
            assert httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {admin}"}).status_code == 200

            tenant = client.create_token("vault-tenant", grants={"vault": "inference"})["token"]
            eventually(lambda: post(gw, "m", "vault", tenant).status_code == 503, timeout=5)
            assert post(gw, "m", "plain", tenant).status_code == 503
            assert httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {tenant}"}).status_code == 403
            revoked = time.monotonic()
            client.revoke_token("vault-tenant")
            eventually(lambda: post(gw, "m", "vault", tenant).status_code == 403, timeout=5)
            assert time.monotonic() - revoked < 1.5  # revocation reaches the data plane within about a second

            client.apply([runtime_doc("vault", {})])  # the annotation removed: open again
            eventually(lambda: post(gw, "m", "vault").status_code == 503, timeout=10)
        finally:
            gw.stop()
