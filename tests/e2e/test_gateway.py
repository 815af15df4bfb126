"""The gateway in front of a real MLServer: routing, pass-through, errors, retries, the routes watch.

One MLServer process (sklearn iris model loaded through its repository API) serves every test; the
gateway runs on a background event loop, fed either a static table or a stand-in control plane that
serves the routes watch stream exactly as wire.routes describes it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from aiohttp import web

from berth.adapters.mlserver_proc import MLServerProcess, free_port
from berth.errors import ConfigError, InvalidInput
from berth.gateway.app import run_gateway
from berth.gateway.routing.table import load_routes
from berth.wire.routes import RoutingTable
from tests.support.gateway import Gateway, LoopThread, RoutesStandIn, eventually, route, start_mlserver
from tests.support.models import IRIS_INPUT

pytestmark = pytest.mark.e2e
T = TypeVar("T")
BIG_INPUT = {"inputs": [{"name": "input-0", "shape": [200, 4], "datatype": "FP64",
                         "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3] * 100}]}


def _strip_id(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "id"}


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    proc = start_mlserver(tmp_path_factory.mktemp("mlserver"), "iris")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def dead() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def gateway(mlserver: MLServerProcess, lt: LoopThread, dead: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    live = mlserver.http_address
    table = RoutingTable(revision=1, models=[
        route("iris", live),
        route("wine", state="LoadFailed", reason="replica mlserver/0: MLServer answered 400: bad model"),
        route("iris", dead, live, namespace="retry"),
        route("iris", dead, namespace="gone"),
    ])
    routes_file = tmp_path_factory.mktemp("routes") / "routes.yaml"  # as `berth gateway --routes FILE`
    routes_file.write_text(yaml.safe_dump(table.model_dump(mode="json")))
    gw = Gateway(lt, routes=load_routes(routes_file), upstream_timeout=20.0)
    yield gw.url
    gw.stop()


def test_infer_through_gateway_equals_direct_and_names_the_route(mlserver: MLServerProcess,
                                                                  gateway: str) -> None:
    direct = httpx.post(f"http://{mlserver.http_address}/v2/models/iris/infer", json=IRIS_INPUT)
    via = httpx.post(f"{gateway}/v2/models/iris/infer", json=IRIS_INPUT)
    assert via.status_code == direct.status_code == 200
    assert _strip_id(via.json()) == _strip_id(direct.json())
    assert via.headers["x-seldon-route"] == ":iris:"
    assert via.headers["content-type"] == direct.headers["content-type"]
    # no Content-Type at all: forwarded as sent (the client library adds none of its own)
    bare = httpx.post(f"{gateway}/v2/models/iris/infer", content=json.dumps(IRIS_INPUT).encode())
    assert bare.status_code == 200, bare.text
    versioned = httpx.post(f"{gateway}/v2/models/iris/versions/v1/infer", json=IRIS_INPUT)
    direct_versioned = httpx.post(f"http://{mlserver.http_address}/v2/models/iris/versions/v1/infer",
                                  json=IRIS_INPUT)
    assert versioned.status_code == direct_versioned.status_code
    assert versioned.content == direct_versioned.content


def test_compressed_answers_and_errors_pass_through_as_bytes(mlserver: MLServerProcess, gateway: str) -> None:
    body = json.dumps(BIG_INPUT).encode()
    headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip"}
    with httpx.Client() as client:
        via = client.send(client.build_request("POST", f"{gateway}/v2/models/iris/infer", content=body,
                                               headers=headers), stream=True)
        raw = b"".join(via.iter_raw())
    assert via.status_code == 200
    assert via.headers["content-encoding"] == "gzip"
    assert len(json.loads(gzip.decompress(raw))["outputs"][0]["data"]) == 200
    # MLServer's own error for a malformed request comes back with its status and body
    bad = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": "nope"}]}
    direct = httpx.post(f"http://{mlserver.http_address}/v2/models/iris/infer", json=bad)
    via_bad = httpx.post(f"{gateway}/v2/models/iris/infer", json=bad)
    assert via_bad.status_code == direct.status_code >= 400
    assert via_bad.content == direct.content


def test_metadata_and_model_ready_pass_through(mlserver: MLServerProcess, gateway: str) -> None:
    direct = httpx.get(f"http://{mlserver.http_address}/v2/models/iris")
    via = httpx.get(f"{gateway}/v2/models/iris")
    assert via.status_code == 200 and via.json() == direct.json()
    assert httpx.get(f"{gateway}/v2/models/iris/ready").status_code == 200
    assert httpx.get(f"{gateway}/v2/health/live").status_code == 200
    assert httpx.get(f"{gateway}/v2/health/ready").status_code == 200


def test_seldon_model_header_routes_over_the_path(gateway: str) -> None:
    via = httpx.post(f"{gateway}/v2/models/anything/infer", json=IRIS_INPUT, headers={"seldon-model": "iris"})
    assert via.status_code == 200, via.text
    assert via.json()["model_name"] == "iris"
    assert via.headers["x-seldon-route"] == ":iris:"


def test_unknown_model_is_404_naming_the_models_here(gateway: str) -> None:
    r = httpx.post(f"{gateway}/v2/models/nosuch/infer", json=IRIS_INPUT)
    assert r.status_code == 404
    body = r.json()
    assert body["code"] == "NotFound"
    assert body["message"] == "model nosuch not found in namespace default; models here: iris, wine"
    assert body["details"]["models"] == ["iris", "wine"]
    other = httpx.get(f"{gateway}/v2/models/iris", headers={"seldon-namespace": "elsewhere"})
    assert other.status_code == 404
    assert other.json()["message"].endswith("namespace elsewhere; models here: none")


def test_not_ready_model_is_503_with_the_reason(gateway: str) -> None:
    r = httpx.post(f"{gateway}/v2/models/wine/infer", json=IRIS_INPUT)
    assert r.status_code == 503
    body = r.json()
    assert body["code"] == "ModelNotReady"
    assert body["message"] == ("model wine in namespace default is not ready: LoadFailed: "
                               "replica mlserver/0: MLServer answered 400: bad model")
    assert body["details"]["state"] == "LoadFailed"


def test_connect_failure_is_retried_on_another_replica(gateway: str) -> None:
    retry = {"seldon-namespace": "retry"}
    for _ in range(4):  # the dead replica is first in the table, so the first request meets it
        r = httpx.post(f"{gateway}/v2/models/iris/infer", json=IRIS_INPUT, headers=retry)
        assert r.status_code == 200, r.text
        assert r.json()["model_name"] == "iris"


def test_only_replica_dead_is_502_naming_the_address(gateway: str, dead: str) -> None:
    r = httpx.post(f"{gateway}/v2/models/iris/infer", json=IRIS_INPUT, headers={"seldon-namespace": "gone"})
    assert r.status_code == 502
    body = r.json()
    assert body["code"] == "Unavailable"
    assert f"inference server {dead} refused connection" in body["message"]
    assert body["details"]["tried"] == [dead]


def test_slow_inference_server_is_504(lt: LoopThread) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.json_response({})

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/v2/models/{name}/infer", slow)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    port = free_port()
    runner = lt.call(serve())
    gw = Gateway(lt, routes=RoutingTable(models=[route("iris", f"127.0.0.1:{port}")]), upstream_timeout=0.5)
    try:
        started = time.monotonic()
        r = httpx.post(f"{gw.url}/v2/models/iris/infer", json=IRIS_INPUT, timeout=10)
        assert time.monotonic() - started < 5  # the 0.5 s upstream timeout, not the server's 10 s
        assert r.status_code == 504
        assert r.json()["code"] == "Timeout"
        assert f"inference server 127.0.0.1:{port} did not answer model iris" in r.json()["message"]
    finally:
        gw.stop()
        lt.call(runner.cleanup())


def test_routes_follow_the_watch_stream_and_survive_the_control_plane(mlserver: MLServerProcess,
                                                                      lt: LoopThread) -> None:
    live = mlserver.http_address
    control = RoutesStandIn(lt, RoutingTable(revision=1, models=[route("iris", live)]), free_port())
    gw = Gateway(lt, control_url=control.url, watch_backoff_max=0.3)
    try:
        # no control plane yet: alive but not ready, and infer says why
        assert httpx.get(f"{gw.url}/v2/health/live").status_code == 200
        not_ready = httpx.get(f"{gw.url}/v2/health/ready")
        assert not_ready.status_code == 503
        assert f"control plane at {control.url} refused connection" in not_ready.json()["message"]
        control.start()
        eventually(lambda: httpx.get(f"{gw.url}/v2/health/ready").status_code == 200)
        assert httpx.post(f"{gw.url}/v2/models/iris/infer", json=IRIS_INPUT).status_code == 200
        # a new table on the stream: iris moves to namespace "prod"
        control.publish(RoutingTable(revision=2, models=[route("iris", live, namespace="prod")]))
        eventually(lambda: httpx.post(f"{gw.url}/v2/models/iris/infer", json=IRIS_INPUT).status_code == 404)
        prod = {"seldon-namespace": "prod"}
        assert httpx.post(f"{gw.url}/v2/models/iris/infer", json=IRIS_INPUT, headers=prod).status_code == 200
        # the control plane goes away: the gateway keeps serving from the last table
        control.stop()
        time.sleep(0.5)
        assert httpx.get(f"{gw.url}/v2/health/ready").status_code == 200
        assert httpx.post(f"{gw.url}/v2/models/iris/infer", json=IRIS_INPUT, headers=prod).status_code == 200
        # it comes back with another table: the gateway reconnects and follows it
        control.table = RoutingTable(revision=3, models=[route("iris", live, namespace="prod"),
                                                         route("iris", live)])
        control.start()
        eventually(lambda: httpx.post(f"{gw.url}/v2/models/iris/infer", json=IRIS_INPUT).status_code == 200)
    finally:
        gw.stop()
        try:
            control.stop()
        except Exception:
            pass


def test_bad_routes_file_and_missing_source_say_what_to_fix(tmp_path: Path) -> None:
    bad = tmp_path / "routes.json"
    bad.write_text('{"models": [{"name": "iris"}]}')
    with pytest.raises(InvalidInput, match=r"routes.json is not a routing table: models\.0\.namespace"):
        load_routes(bad)
    with pytest.raises(InvalidInput, match="cannot read routes file"):
        load_routes(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match="--control URL"):
        asyncio.run(run_gateway("127.0.0.1", 0, None, asyncio.Event()))


def test_malformed_json_and_shape_mismatch_are_400_before_reaching_the_model(gateway: str) -> None:
    broken = httpx.post(f"{gateway}/v2/models/iris/infer", content=b'{"inputs": [{"name": ',
                        headers={"Content-Type": "application/json"})
    assert broken.status_code == 400
    body = broken.json()
    assert body["code"] == "InvalidInput"
    assert body["message"].startswith("request for model iris: the body is not valid JSON: ")
    assert broken.headers["content-type"].startswith("application/json")
    short = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": [1.0] * 7}]}
    r = httpx.post(f"{gateway}/v2/models/iris/infer", json=short)
    assert r.status_code == 400
    assert r.json()["code"] == "InvalidInput"
    assert 'inputs[0] "x": shape [2, 4] needs 8 values, data has 7' in r.json()["message"]
    assert r.json()["details"]["expected"] == 8 and r.json()["details"]["got"] == 7
    # a compressed body is not inspected: forwarded as sent, the server answers it
    packed = gzip.compress(json.dumps(IRIS_INPUT).encode())
    ok = httpx.post(f"{gateway}/v2/models/iris/infer", content=packed,
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert ok.status_code == 200, ok.text


def test_oversized_body_is_413_and_limit_is_configurable(mlserver: MLServerProcess, lt: LoopThread) -> None:
    gw = Gateway(lt, routes=RoutingTable(models=[route("iris", mlserver.http_address)]), max_request_bytes=1024)
    try:
        assert httpx.post(f"{gw.url}/v2/models/iris/infer", json=IRIS_INPUT).status_code == 200
        big = httpx.post(f"{gw.url}/v2/models/iris/infer", json=BIG_INPUT)
        assert big.status_code == 413
        assert big.json()["code"] == "PayloadTooLarge"
        assert "larger than the gateway accepts (1024 bytes)" in big.json()["message"]
    finally:
        gw.stop()


def test_metrics_count_requests_errors_and_latency_per_model(gateway: str) -> None:
    for _ in range(3):
        assert httpx.post(f"{gateway}/v2/models/iris/infer", json=IRIS_INPUT).status_code == 200
    httpx.post(f"{gateway}/v2/models/wine/infer", json=IRIS_INPUT)
    httpx.post(f"{gateway}/v2/models/made-up-name/infer", json=IRIS_INPUT)
    r = httpx.get(f"{gateway}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    ok = 'candidate="",code="200",experiment="",model="iris",namespace="default",protocol="rest"'
    line = next(x for x in text.splitlines() if x.startswith("berth_gateway_requests_total{") and ok in x)
    assert float(line.rsplit(" ", 1)[1]) >= 3
    assert 'berth_gateway_request_errors_total{candidate="",code="503",experiment="",model="wine"' in text
    assert 'berth_gateway_request_errors_total{candidate="",code="404",experiment="",model="",namespace=""' in text
    assert "made-up-name" not in text
    assert 'berth_gateway_request_duration_seconds_count{candidate="",experiment="",model="iris"' in text


def test_a_replica_that_dies_with_the_request_costs_a_retry_and_a_broken_answer_does_not(
        mlserver: MLServerProcess, lt: LoopThread) -> None:
    """A replica that reads the request and dies (kill -9), before or in the middle of its answer, costs a
    retry on another replica; one that is up but answers garbage is a 502, not retried."""
    async def vanish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()  # reset, no answer: as a killed process

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n{")
        await writer.drain()
        writer.transport.abort()  # killed while answering

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    servers = [lt.call(asyncio.start_server(h, "127.0.0.1", 0)) for h in (vanish, half, garbage, vanish)]
    gone, partial, junk, gone_too = (f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers)
    live = mlserver.http_address
    table = RoutingTable(models=[route("iris", gone, live), route("iris", partial, live, namespace="half"),
                                 route("iris", partial, namespace="half-only"),
                                 route("iris", junk, live, namespace="junk"),
                                 route("iris", gone_too, live, namespace="once").model_copy(
                                     update={"idempotent": False})])
    gw = Gateway(lt, routes=table)

    def infer(ns: str) -> httpx.Response:
        return httpx.post(f"{gw.url}/v2/models/iris/infer", json=IRIS_INPUT, headers={"seldon-namespace": ns})

    try:
        for ns in ("default", "half"):
            r = infer(ns)
            assert r.status_code == 200, (ns, r.text)
        only = infer("half-only")
        assert only.status_code == 502
        assert f"inference server {partial} closed the connection in the middle of its answer" in only.json()["message"]
        once = [infer("once") for _ in range(2)]  # the balancer tries the vanishing replica within two requests
        refused = [r for r in once if r.status_code != 200]
        assert len(refused) == 1 and refused[0].status_code == 502, [r.text for r in once]
        assert f"inference server {gone_too} went away with the request for model iris" in refused[0].json()["message"]
        assert 'berth.io/idempotent: "false"' in refused[0].json()["message"]
        broken = infer("junk")
        assert broken.status_code == 502
        assert f"inference server {junk} failed while answering model iris" in broken.json()["message"]
        assert "not retried" in broken.json()["message"]
    finally:
        gw.stop()
        for server in servers:
            lt.loop.call_soon_threadsafe(server.close)


def test_fuzz_gateway_never_answers_5xx_of_its_own(lt: LoopThread) -> None:
    """Bounded fuzz: random paths, headers and bodies; the upstream always answers 200, so any 5xx would
    be the gateway's own.  Every 4xx is JSON with a stable code."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"model_name": "echo", "outputs": []})

    async def start_upstream() -> tuple[web.AppRunner, int]:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/{tail:.*}", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, port

    runner, port = lt.call(start_upstream())
    table = RoutingTable(revision=1, models=[route("echo", f"127.0.0.1:{port}"),
                                             route("down", state="ScheduleFailed", reason="no servers")],
                         experiments=[])
    gw = Gateway(lt, routes=table, max_request_bytes=64 * 1024)
    printable = st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="/?#%")
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    tensors = st.fixed_dictionaries({
        "name": st.text(max_size=5) | st.integers(), "shape": st.lists(st.integers(-2, 5), max_size=3) | scalars,
        "datatype": st.sampled_from(["FP64", "INT64", "BYTES", "BOOL", "nope"]) | scalars,
        "data": st.lists(scalars, max_size=10) | scalars})
    bodies = st.one_of(st.binary(max_size=100),
                       st.lists(tensors, max_size=3).map(lambda t: json.dumps({"inputs": t}).encode()),
                       st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(
                           st.text(max_size=5), c, max_size=3), max_leaves=8).map(lambda v: json.dumps(v).encode()))
    codes = {"InvalidInput", "PayloadTooLarge", "NotFound", "ModelNotReady", "ExperimentNotReady",
             "MethodNotAllowed", "Unavailable"}
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as http:
            @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
            @given(model=st.sampled_from(["echo", "down", "nobody", "x.experiment"]) | st.text(printable, max_size=12),
                   body=bodies, header=st.sampled_from([None, "echo", "down", "", "a.experiment"]),
                   ctype=st.sampled_from(["application/json", "text/plain", "application/octet-stream"]))
            def fuzz(model: str, body: bytes, header: str | None, ctype: str) -> None:
                headers = {"Content-Type": ctype}
                if header is not None:
                    headers["seldon-model"] = header
                for r in (http.post(f"/v2/models/{model}/infer", content=body, headers=headers),
                          http.get(f"/v2/models/{model}", headers=headers),
                          http.get(f"/v2/models/{model}/ready", headers=headers)):
                    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:300])
                    if r.status_code >= 400:
                        assert r.json()["code"] in codes, r.text[:300]

            fuzz()
    finally:
        gw.stop()
        lt.call(runner.cleanup())
