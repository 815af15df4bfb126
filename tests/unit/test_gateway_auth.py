"""Inference tokens at the gateway: the table's hashes -> the decision (allowed, 401, 403) before any model
lookup, answers that name no model, the bounded hash cache, operator-only metrics and probe, the gRPC
statuses, the watch's token, and the control plane's side (publish_namespace and token changes)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from berth.control.routes import INFERENCE_AUTH_ANNOTATION, RoutesPublisher, requires_auth
from berth.control.tokens import TokenRegistry
from berth.errors import BerthError, Forbidden, NotFound, Unauthenticated, Unavailable
from berth.gateway.app import make_app
from berth.gateway.routing.auth import NEEDS_TOKEN, NO_ROLE, TokenHashes
from berth.gateway.routing.router import Router
from berth.gateway.routing.watch import TableWatcher
from berth.gateway.transports.grpcmessages import PERMISSION_DENIED, UNAUTHENTICATED, error_fields
from berth.resources.identity import hash_token
from berth.wire.routes import ROUTES_WATCH_PATH, NamespaceAuth, RoutingTable, TableAuth
from tests.support.gateway import route
from tests.unit.test_gateway_grpcserver import call, gateway

SECURE, OTHER = "secure", "other"
TENANT, NEIGHBOUR, ADMIN, INFER_ALL = "berth_tenant-token", "berth_neighbour", "berth_admin-token", "berth_all"
MODELS = [route("iris", "127.0.0.1:1", namespace=SECURE), route("secret-fraud-model", "127.0.0.1:1", namespace=SECURE),
          route("iris", "127.0.0.1:1", namespace=OTHER), route("open-model", "127.0.0.1:1", namespace="default")]


def table(*, tenant: bool = True, revision: int = 1) -> RoutingTable:
    return RoutingTable(revision=revision, models=MODELS, auth=TableAuth(
        namespaces=[NamespaceAuth(namespace=SECURE, tokens=[hash_token(TENANT)] if tenant else []),
                    NamespaceAuth(namespace=OTHER, tokens=[hash_token(NEIGHBOUR)])],
        everywhere=[hash_token(ADMIN), hash_token(INFER_ALL)], operators=[hash_token(ADMIN)]))


def refusal(router: Router, namespace: str, header: str | bytes | None) -> BerthError | None:
    try:
        router.admit(namespace, header)
    except BerthError as err:
        return err
    return None


# --- the decision ----------------------------------------------------------------------------------------

def test_table_to_decision() -> None:
    router = Router(table())
    assert refusal(router, SECURE, f"Bearer {TENANT}") is None
    assert refusal(router, SECURE, f"bearer  {TENANT} ") is None  # the scheme is case-insensitive
    assert refusal(router, SECURE, f"Bearer {ADMIN}".encode()) is None  # gRPC metadata comes as bytes
    assert refusal(router, OTHER, f"Bearer {INFER_ALL}") is None  # a role in every namespace
    for header in (None, "", "Bearer", "Bearer ", f"Basic {TENANT}", TENANT):
        err = refusal(router, SECURE, header)
        assert isinstance(err, Unauthenticated) and err.http_status == 401, header
        assert err.message == NEEDS_TOKEN and err.to_dict() == {"code": "Unauthenticated", "message": NEEDS_TOKEN,
                                                                  "details": None}
    for header in (f"Bearer {NEIGHBOUR}", "Bearer berth_made-up"):  # another namespace's token, an unknown one
        err = refusal(router, SECURE, header)
        assert isinstance(err, Forbidden) and err.http_status == 403 and err.message == NO_ROLE
    # namespaces the table does not guard behave as before: no token needed, any token ignored
    assert refusal(router, "default", None) is None and refusal(router, "default", "Basic junk") is None
    assert refusal(router, "nowhere", None) is None
    assert router.guarded(SECURE) and not router.guarded("default")


def test_a_table_without_auth_guards_nothing_and_a_revoked_hash_is_refused_at_once() -> None:
    router = Router(RoutingTable(revision=1, models=MODELS))
    assert refusal(router, SECURE, None) is None
    router.set(table())
    assert refusal(router, SECURE, f"Bearer {TENANT}") is None
    router.set(table(tenant=False, revision=2))  # the control plane republished without the revoked token
    assert isinstance(refusal(router, SECURE, f"Bearer {TENANT}"), Forbidden)


def test_unknown_names_in_a_guarded_namespace_name_nothing_else() -> None:
    router = Router(table())
    with pytest.raises(NotFound) as missing:
        router.decide(SECURE, "nosuch")
    assert missing.value.message == f"model nosuch not found in namespace {SECURE}"
    assert missing.value.details == {"model": "nosuch", "namespace": SECURE}
    with pytest.raises(NotFound) as exp:
        router.decide(SECURE, "ab.experiment")
    assert "secret-fraud-model" not in json.dumps(exp.value.to_dict()) and "experiments here" not in exp.value.message
    with pytest.raises(NotFound) as open_ns:  # an open namespace still helps with its listing
        router.decide("default", "nosuch")
    assert "open-model" in open_ns.value.message


# --- the hash cache --------------------------------------------------------------------------------------

def test_hash_cache_is_bounded_and_keeps_the_recently_used() -> None:
    hashes = TokenHashes(size=4)
    assert hashes.of(f"Bearer {TENANT}") == hash_token(TENANT)
    assert hashes.of(None) == hashes.of("") == "" and len(hashes) == 1
    assert hashes.of("Basic xyz") == ""  # garbled: remembered as no token
    for i in range(10):
        hashes.of(f"Bearer berth_flood-{i}")
        hashes.of(f"Bearer {TENANT}")  # used all along: never the one dropped
        assert len(hashes) <= 4
    assert f"Bearer {TENANT}" in hashes._cache and "Basic xyz" not in hashes._cache
    assert hashes.of(b"Bearer " + TENANT.encode()) == hash_token(TENANT)  # bytes keys (gRPC) hash the same
    huge = "Bearer " + "x" * 10_000
    assert hashes.of(huge) == hash_token("x" * 10_000) and huge not in hashes._cache  # hashed, never kept


def test_a_repeated_token_costs_a_lookup_not_a_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    import berth.gateway.routing.auth as auth

    router = Router(table())
    counted: list[str] = []

    def counting(token: str) -> str:
        counted.append(token)
        return hash_token(token)

    monkeypatch.setattr(auth, "hash_token", counting)
    for _ in range(100):
        router.admit(SECURE, f"Bearer {TENANT}")
    assert counted == [TENANT]


# --- REST answers ----------------------------------------------------------------------------------------

def rest(router: Router, requests: Callable[[TestClient[Any, Any]], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        client: TestClient[Any, Any] = TestClient(TestServer(make_app(router)))
        await client.start_server()
        try:
            return await requests(client)
        finally:
            await client.close()

    return asyncio.run(run())


async def answer(client: TestClient[Any, Any], method: str, path: str, namespace: str,
                 token: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"seldon-namespace": namespace, "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with client.request(method, path, headers=headers, data=b'{"inputs": []}') as r:
        return r.status, json.loads(await r.read() or b"{}"), dict(r.headers)


def test_rest_refusals_name_no_model() -> None:
    async def requests(client: TestClient[Any, Any]) -> list[tuple[int, dict[str, Any], dict[str, str]]]:
        out = []
        for path, method in (("/v2/models/iris/infer", "POST"), ("/v2/models/secret-fraud-model", "GET"),
                             ("/v2/models/nosuch/ready", "GET"), ("/v2/models/ab.experiment/infer", "POST"),
                             ("/v2/models/iris/versions/1/infer", "POST")):
            out.append(await answer(client, method, path, SECURE))
            out.append(await answer(client, method, path, SECURE, NEIGHBOUR))
        return out

    answers = rest(Router(table()), requests)
    assert [a[0] for a in answers] == [401, 403] * 5
    for status, body, headers in answers:
        text = json.dumps(body)
        assert "iris" not in text and "secret-fraud-model" not in text and "nosuch" not in text
        assert body["code"] == ("Unauthenticated" if status == 401 else "Forbidden")
        assert body["message"] == (NEEDS_TOKEN if status == 401 else NO_ROLE)
        assert (headers.get("WWW-Authenticate") == 'Bearer realm="berth"') == (status == 401)


def test_rest_with_the_right_token_is_routed_and_a_404_names_only_the_model_asked() -> None:
    async def requests(client: TestClient[Any, Any]) -> list[tuple[int, dict[str, Any], dict[str, str]]]:
        return [await answer(client, "POST", "/v2/models/nosuch/infer", SECURE, TENANT),
                await answer(client, "POST", "/v2/models/iris/infer", SECURE, TENANT),  # routed: 127.0.0.1:1 refuses
                await answer(client, "POST", "/v2/models/open-model/infer", "default")]

    missing, routed, open_ns = rest(Router(table()), requests)
    assert missing[0] == 404 and missing[1]["message"] == f"model nosuch not found in namespace {SECURE}"
    assert "secret-fraud-model" not in json.dumps(missing[1])
    assert routed[0] == 502 and "refused" in routed[1]["message"]  # auth passed; the replica is not there
    assert open_ns[0] == 502  # an open namespace needs no token


def test_health_is_open_but_metrics_and_probe_answer_operators_only() -> None:
    async def requests(client: TestClient[Any, Any]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/metrics", "/berth/v1/probe"):
            for token in (None, TENANT, ADMIN):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with client.get(path, headers=headers) as r:
                    out.setdefault(path, []).append(r.status)
                    if r.status >= 400:
                        assert "iris" not in await r.text()
        return out

    statuses = rest(Router(table()), requests)
    assert statuses == {"/v2/health/live": [200] * 3, "/v2/health/ready": [200] * 3, "/v2": [200] * 3,
                        "/metrics": [401, 403, 200], "/berth/v1/probe": [401, 403, 200]}
    # a table without auth (a static --routes file, no identity): open as before
    statuses = rest(Router(RoutingTable(revision=1, models=MODELS)), requests)
    assert statuses["/metrics"] == statuses["/berth/v1/probe"] == [200] * 3
    # no table yet: the gateway does not know its operators
    statuses = rest(Router(), requests)
    assert statuses["/metrics"] == [503] * 3


# --- gRPC ------------------------------------------------------------------------------------------------

def test_grpc_statuses_and_no_model_in_the_refusal() -> None:
    assert error_fields(Unauthenticated("x"))[0] == UNAUTHENTICATED == 16
    assert error_fields(Forbidden("x"))[0] == PERMISSION_DENIED == 7
    from berth.wire import protowire

    gw = gateway(Router(table()))
    request = protowire.string_field(1, "secret-fraud-model")
    ns = (b"seldon-namespace", SECURE.encode())
    neighbour = (b"authorization", f"Bearer {NEIGHBOUR}".encode())
    for extra, status, code in (((), UNAUTHENTICATED, "Unauthenticated"),
                                (((b"authorization", b"Basic x"),), UNAUTHENTICATED, "Unauthenticated"),
                                ((neighbour,), PERMISSION_DENIED, "Forbidden")):
        for method in ("ModelInfer", "ModelMetadata", "ModelReady"):
            got = call(gw, method, request, ns, *extra)
            assert got["grpc-status"] == str(status) and got["berth-error-code"] == code, (method, got)
            assert "secret-fraud-model" not in json.dumps(got)
    allowed = call(gw, "ModelInfer", protowire.string_field(1, "nosuch"), ns,
                   (b"authorization", f"Bearer {TENANT}".encode()))
    assert allowed["berth-error-code"] == "NotFound" and "secret-fraud-model" not in allowed["grpc-message"]
    for open_method in ("ServerLive", "ServerReady", "ServerMetadata", "/grpc.health.v1.Health/Check"):
        assert call(gw, open_method, b"", ns)["grpc-status"] == "0"


# --- the watch sends the gateway's token -----------------------------------------------------------------

def test_the_watch_sends_the_token_and_says_when_it_is_refused() -> None:
    seen: list[str | None] = []

    async def run() -> tuple[str, bool]:
        async def watch(request: web.Request) -> web.StreamResponse:
            seen.append(request.headers.get("Authorization"))
            if request.headers.get("Authorization") != "Bearer berth_gateway-token":
                return web.json_response({"code": "Unauthenticated", "message": "no"}, status=401)
            resp = web.StreamResponse()
            await resp.prepare(request)
            await resp.write(table().model_dump_json().encode() + b"\n")
            await asyncio.sleep(5)
            return resp

        app = web.Application()
        app.router.add_get(ROUTES_WATCH_PATH, watch)
        server = TestServer(app)
        await server.start_server()
        url = str(server.make_url(""))
        try:
            refused = TableWatcher(url, backoff_initial=0.05)
            stop = asyncio.Event()
            task = asyncio.create_task(refused.run(stop))
            await asyncio.sleep(0.3)
            problem = refused.holder.problem
            stop.set()
            await task
            ok = TableWatcher(url, token="berth_gateway-token")
            stop = asyncio.Event()
            task = asyncio.create_task(ok.run(stop))
            for _ in range(100):
                if ok.holder.ready:
                    break
                await asyncio.sleep(0.02)
            stop.set()
            await task
            return problem, ok.holder.ready and ok.holder.guarded(SECURE)
        finally:
            await server.close()

    problem, followed = asyncio.run(run())
    assert "refused the gateway's routes watch (HTTP 401, no token given)" in problem and "BERTH_TOKEN" in problem
    assert followed and seen[0] is None and seen[-1] == "Bearer berth_gateway-token"


# --- the control plane's side ----------------------------------------------------------------------------

def runtime(value: str | None) -> dict[str, Any]:
    annotations = {INFERENCE_AUTH_ANNOTATION: value} if value is not None else {}
    return {"kind": "SeldonRuntime", "metadata": {"name": "rt", "namespace": SECURE, "annotations": annotations},
            "spec": {"seldonConfig": "default"}}


def model(name: str) -> dict[str, Any]:
    return {"kind": "Model", "metadata": {"name": name, "namespace": SECURE}, "spec": {"storageUri": "file:///m"},
            "status": {"state": "ModelProgressing"}}


def test_requires_auth_reads_the_annotation() -> None:
    assert requires_auth(runtime("required")) and requires_auth(runtime(" Required "))
    assert not requires_auth(runtime(None)) and not requires_auth(runtime("optional")) and not requires_auth(None)


def test_publisher_carries_hashes_and_republishes_when_tokens_change() -> None:
    tokens = TokenRegistry(None)
    admin = tokens.create("admin", grants={"*": "admin"})
    viewer_all = tokens.create("watcher", grants={"*": "viewer"})
    tenant = tokens.create("tenant", grants={SECURE: "inference"})
    editor = tokens.create("editor", grants={SECURE: "editor", OTHER: "viewer"})
    neighbour = tokens.create("neighbour", grants={OTHER: "admin"})
    tokens.create("gw", kind="gateway")

    async def run() -> None:
        publisher = RoutesPublisher(tokens=tokens)
        publisher.publish_namespace(SECURE, [model("iris")], {}, [], runtime(None))
        auth = publisher.table().auth
        assert auth is not None and auth.namespaces == []  # not annotated: open
        assert auth.operators == [hash_token(admin)]
        assert sorted(auth.everywhere) == sorted([hash_token(admin), hash_token(viewer_all)])
        before = publisher.revision
        publisher.publish_namespace(SECURE, [model("iris")], {}, [], runtime("required"))
        assert publisher.revision == before + 1  # the same models, but now guarded: a new table
        [guarded] = publisher.table().auth.namespaces  # type: ignore[union-attr]
        assert guarded.namespace == SECURE
        assert sorted(guarded.tokens) == sorted([hash_token(tenant), hash_token(editor)])
        assert hash_token(neighbour) not in guarded.tokens
        # a token created or revoked: a new table at once, with or without its hash
        before = publisher.revision
        late = tokens.create("late", grants={SECURE: "inference"})
        assert publisher.revision == before + 1
        assert hash_token(late) in publisher.table().auth.namespaces[0].tokens  # type: ignore[union-attr]
        tokens.revoke("tenant")
        assert hash_token(tenant) not in publisher.table().auth.namespaces[0].tokens  # type: ignore[union-attr]
        # an agent token changes nothing the gateways see: no new table
        before = publisher.revision
        from berth.resources.identity import AgentIdentity

        tokens.create("agent-0", kind="agent", agent=AgentIdentity(SECURE, "mlserver", 0))
        assert publisher.revision == before
        # an expiring token leaves the table when it expires, without any other change
        short = tokens.create("short", grants={SECURE: "inference"}, expires_in=0.3)
        assert hash_token(short) in publisher.table().auth.namespaces[0].tokens  # type: ignore[union-attr]
        await asyncio.sleep(0.6)
        assert hash_token(short) not in publisher.table().auth.namespaces[0].tokens  # type: ignore[union-attr]
        # a token changed from another thread (an executor): handed to the loop
        await asyncio.get_running_loop().run_in_executor(None, tokens.revoke, "late")
        await asyncio.sleep(0.05)
        assert hash_token(late) not in publisher.table().auth.namespaces[0].tokens  # type: ignore[union-attr]
        # the annotation removed: open again
        publisher.publish_namespace(SECURE, [model("iris")], {}, [], runtime(None))
        assert publisher.table().auth.namespaces == []  # type: ignore[union-attr]
        publisher.close()
        assert publisher._tokens_changed not in tokens.on_change

    asyncio.run(run())


def test_publisher_table_drives_the_gateway() -> None:
    tokens = TokenRegistry(None)
    tenant = tokens.create("tenant", grants={SECURE: "inference"})

    async def run() -> Router:
        publisher = RoutesPublisher(tokens=tokens)
        publisher.publish_namespace(SECURE, [model("iris")], {}, [], runtime("required"))
        return Router(RoutingTable.model_validate_json(publisher.encoded()))

    router = asyncio.run(run())
    assert refusal(router, SECURE, f"Bearer {tenant}") is None
    assert isinstance(refusal(router, SECURE, None), Unauthenticated)
    assert isinstance(refusal(router, SECURE, "Bearer berth_other"), Forbidden)
    encoded = json.dumps(RoutingTable.model_dump(router.table))  # type: ignore[arg-type]
    assert tenant not in encoded  # only hashes leave the control plane


def test_no_table_yet_is_unavailable_for_operators() -> None:
    with pytest.raises(Unavailable):
        Router().admit_operator("Bearer x")
    started = time.perf_counter()
    router = Router(table())
    for _ in range(10000):
        router.admit(SECURE, f"Bearer {TENANT}")
    assert time.perf_counter() - started < 1.0  # cheap: ~µs per request on a slow machine
