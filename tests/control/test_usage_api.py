"""``POST /api/v1/gateway/usage`` attacked as a hostile client would: only gateway tokens (and admins of every
namespace) report; bodies, counts and names are bounded; a namespaced install refuses other namespaces;
every refusal is audited; nothing refused reaches the usage book.  Real HTTP on 127.0.0.1, real SQLite."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from berth.control.api import ControlAPI
from berth.control.hub import AgentHub
from berth.control.routes import RoutesPublisher
from berth.control.tokens import TokenRegistry
from berth.control.usage import UsageBook
from berth.errors import Unauthenticated
from berth.resources.identity import ALL, AgentIdentity, Principal
from berth.store import MemoryStore
from berth.wire.usage import MAX_MODELS_PER_REPORT, MAX_REPORT_BYTES, USAGE_PATH


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Setup:
    def __init__(self, url: str, api: ControlAPI, book: UsageBook, tokens: TokenRegistry, clock: Clock) -> None:
        self.url, self.api, self.book, self.tokens, self.clock = url, api, book, tokens, clock
        self.token: dict[str, str] = {}

    async def post(self, who: str | None, body: bytes | dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **headers}
        if who is not None:
            hdrs["Authorization"] = f"Bearer {self.token[who]}"
        async with aiohttp.ClientSession() as s, s.post(self.url + USAGE_PATH, data=data, headers=hdrs) as r:
            return r.status, await r.json()

    def audit(self, outcome: str) -> list[dict[str, Any]]:
        return [r for r in self.tokens.audit_records(namespaces=None) if r["verb"] == "report"
                and r["outcome"] == outcome]


def run(scenario: Callable[[Setup], Awaitable[None]]) -> None:
    """``scenario`` against a control API served on 127.0.0.1 for it alone."""
    async def main() -> None:
        async with serving() as s:
            await scenario(s)

    asyncio.run(main())


def report(*models: dict[str, Any], gateway: str = "gw-1", window_s: float = 2.0) -> dict[str, Any]:
    return {"gateway": gateway, "window_s": window_s, "models": list(models)}


def usage(name: str, ns: str = "team-a", **kw: Any) -> dict[str, Any]:
    return {"namespace": ns, "name": name, "requests": 10, "idle_s": 0.5, "latency_p95_ms": 12.0,
            "replicas": [{"address": "127.0.0.1:8080", "inflight_mean": 2.5, "inflight_max": 4}], **kw}


@asynccontextmanager
async def serving() -> AsyncIterator[Setup]:
    clock = Clock()
    store = MemoryStore()
    tokens = TokenRegistry(None)
    book = UsageBook(clock)
    api = ControlAPI(store, AgentHub(lambda ns: None), RoutesPublisher(tokens=tokens), tokens=tokens, usage=book)
    server = TestServer(api.app(), host="127.0.0.1")
    await server.start_server()
    s = Setup(f"http://127.0.0.1:{server.port}", api, book, tokens, clock)
    s.token["gateway"] = tokens.create("gw", kind="gateway")
    s.token["gateway-2"] = tokens.create("gw2", kind="gateway")
    s.token["admin"] = tokens.create("root", grants={ALL: "admin"})
    s.token["admin-a"] = tokens.create("admin-a", grants={"team-a": "admin"})
    s.token["viewer"] = tokens.create("viewer", grants={ALL: "viewer"})
    s.token["agent"] = tokens.create("agent", kind="agent", agent=AgentIdentity("team-a", "mlserver", 0))
    try:
        yield s
    finally:
        await server.close()
        api.close()
        tokens.close()


def test_a_gateway_report_is_kept_and_read_back() -> None:
    async def scenario(setup: Setup) -> None:
        status, body = await setup.post("gateway", report(usage("m1"), usage("m2", requests=0, inflight=3)))
        assert status == 200 and body == {"accepted": 2}, body
        assert setup.book.last_used("team-a", "m1") == pytest.approx(999.5)
        load = setup.book.load("team-a", "m1")
        assert load is not None and load.requests_per_s == pytest.approx(5.0)
        assert load.inflight == {"127.0.0.1:8080": 2.5} and load.latency_p95_ms == 12.0
        # an admin of every namespace may report too (a gateway run by hand with the admin's token)
        status, _ = await setup.post("admin", report(usage("m1", requests=30), gateway="by-hand"))
        assert status == 200
        assert setup.book.reporting() == 2
        assert setup.book.load("team-a", "m1").requests_per_s == pytest.approx(20.0)  # type: ignore[union-attr]
        assert setup.audit("ok") == []  # telemetry: not one audit record per report (docs/autoscaling.md)
    run(scenario)


def test_one_gateway_token_cannot_overwrite_another_gateways_report() -> None:
    async def scenario(setup: Setup) -> None:
        await setup.post("gateway", report(usage("m1", requests=100)))
        await setup.post("gateway-2", report(usage("m1", requests=0, idle_s=30.0)))  # same gateway name, other token
        load = setup.book.load("team-a", "m1")
        assert load is not None and load.gateways == 2 and load.requests_per_s == pytest.approx(50.0)
    run(scenario)


@pytest.mark.parametrize("who", ["admin-a", "viewer", "agent"])
def test_other_tokens_are_refused_and_audited(who: str) -> None:
    async def scenario(setup: Setup) -> None:
        status, body = await setup.post(who, report(usage("m1")))
        assert status == 403 and body["code"] == "Forbidden" and "gateway" in body["message"]
        assert setup.book.reporting() == 0 and setup.book.last_used("team-a", "m1") is None
        refused = setup.audit("forbidden")
        assert len(refused) == 1 and refused[0]["verb"] == "report"
    run(scenario)


def test_anonymous_and_invalid_tokens_get_401() -> None:
    async def scenario(setup: Setup) -> None:
        status, body = await setup.post(None, report(usage("m1")))
        assert status == 401 and body["code"] == "Unauthenticated"
        setup.token["bogus"] = "brt_" + "x" * 40
        status, _ = await setup.post("bogus", report(usage("m1")))
        assert status == 401
        assert setup.book.reporting() == 0
        assert {r["outcome"] for r in setup.tokens.audit_records(namespaces=None)} == {"unauthenticated"}
    run(scenario)


def test_a_body_over_the_limit_is_refused_without_being_held() -> None:
    async def scenario(setup: Setup) -> None:
        big = b'{"window_s": 2, "models": [' + b" " * MAX_REPORT_BYTES + b"]}"
        status, body = await setup.post("gateway", big)
        assert status == 413 and body["code"] == "PayloadTooLarge"  # the listener's limit: the app's body size
        setup.api.usage.max_bytes = 1000  # the endpoint's own bound, when the app allows larger bodies
        status, body = await setup.post("gateway", report(*[usage(f"m{i}") for i in range(20)]))
        assert status == 413 and "limit of 1000 bytes" in body["message"] and "--usage-interval" in body["message"]
        # the same without Content-Length (chunked): stopped once the limit is passed
        reader, writer = await _raw(setup)
        head = (f"POST {USAGE_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {setup.token['gateway']}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        writer.write(head)
        chunk = b" " * 65536
        for _ in range(MAX_REPORT_BYTES // len(chunk) + 2):
            writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        answer = await reader.read(200)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer
        assert setup.book.reporting() == 0
    run(scenario)


async def _raw(setup: Setup) -> Any:
    host, port = setup.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port), family=socket.AF_INET)


@pytest.mark.parametrize(("body", "field"), [
    (b"not json", "body"),
    (b"[1, 2]", "body"),
    ({"window_s": 0, "models": []}, "window_s"),
    ({"window_s": 2, "models": [usage("m1", requests=-1)]}, "models.0.requests"),
    ({"window_s": 2, "models": [usage("m1", requests=10**15)]}, "models.0.requests"),
    ({"window_s": 2, "models": [usage("m1", latency_p95_ms=float("1e300"))]}, "models.0.latency_p95_ms"),
    ({"window_s": 2, "models": [usage("m1", replicas=[{"address": "a" * 301}])]}, "models.0.replicas.0.address"),
    ({"window_s": 2, "models": [usage("Bad_Name")]}, "models.0"),
    ({"window_s": 2, "models": [usage("m1", ns="team-a/../b")]}, "models.0"),
    ({"window_s": 2, "models": [usage(f"m{i}") for i in range(MAX_MODELS_PER_REPORT + 1)]}, "models"),
])
def test_malformed_reports_are_refused_naming_the_field(body: Any, field: str) -> None:
    async def scenario(setup: Setup) -> None:
        status, answer = await setup.post("gateway", body)
        assert status == 400 and answer["code"] == "InvalidInput", answer
        assert answer["details"]["field"] == field, answer
        assert setup.book.reporting() == 0 and setup.book.last_used("team-a", "m1") is None
    run(scenario)


def test_a_namespaced_install_refuses_reports_for_other_namespaces() -> None:
    async def scenario(setup: Setup) -> None:
        setup.api.usage.namespaces = frozenset({"team-a"})
        status, body = await setup.post("gateway", report(usage("m1"), usage("x", ns="team-b")))
        assert status == 403 and "team-b" in body["message"] and "team-a" in body["message"]
        assert setup.book.reporting() == 0
        refused = setup.audit("forbidden")
        assert [(r["namespace"], r["principal"], r["kind"]) for r in refused] == [("team-b", "gw", "UsageReport")]
        status, _ = await setup.post("gateway", report(usage("m1")))
        assert status == 200
    run(scenario)


def test_a_namespaces_gateway_reports_for_its_namespace_only() -> None:
    """In Kubernetes mode a gateway pod's projected token, reviewed by the API server, is a gateway of its
    namespace (control/kube_enrol.py); here the review answers as the API server would for team-a's pod."""
    async def review(token: str) -> tuple[Principal, float]:
        if token != "projected-token-of-team-a-gateway":
            raise Unauthenticated("the API server did not authenticate the token")
        return Principal("system:serviceaccount:team-a:berth-gateway", kind="gateway",
                         grants={"team-a": "inference"}), time.time() + 3600

    async def scenario(setup: Setup) -> None:
        setup.api.auth.review_gateway = review
        setup.token["pod"] = "projected-token-of-team-a-gateway"
        status, body = await setup.post("pod", report(usage("m1"), usage("m9", ns="team-b")))
        assert status == 403 and "team-b" in body["message"] and "berth-gateway" in body["message"], body
        assert setup.book.reporting() == 0 and setup.audit("forbidden")[0]["namespace"] == "team-b"
        status, _ = await setup.post("pod", report(usage("m1")))
        assert status == 200 and setup.book.last_used("team-a", "m1") is not None
        setup.token["forged"] = "some-other-projected-token"
        assert (await setup.post("forged", report(usage("m1"))))[0] == 401
    run(scenario)


def test_made_up_gateways_beyond_the_bound_are_refused() -> None:
    async def scenario(setup: Setup) -> None:
        setup.book.max_gateways = 3
        for i in range(3):
            assert (await setup.post("gateway", report(usage("m1"), gateway=f"g{i}")))[0] == 200
        status, body = await setup.post("gateway", report(usage("m1"), gateway="g-extra"))
        assert status == 503 and "at most 3" in body["message"]
        setup.clock.now += 60  # the three went stale: a new gateway takes a slot
        assert (await setup.post("gateway", report(usage("m1"), gateway="g-new")))[0] == 200
    run(scenario)
