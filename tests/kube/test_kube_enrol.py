"""Agent enrolment with the pod's projected ServiceAccount token, checked with TokenReview (emulated API
server): accepted for exactly one replica, refused with the reason otherwise."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from berth.control import hub as hub_module
from berth.control.kube_enrol import TokenReviewer, _expires
from berth.control.kube_mode import enrol_with
from berth.control.tokens import TokenRegistry
from berth.errors import Unauthenticated
from berth.kube.flows import REPLICA, pod_labels
from berth.kubeapi import Api, connect
from berth.resources.identity import AgentIdentity, Principal
from tests.kube.apiserver import ApiServer
from tests.unit.test_enrolment import agent, hello, hub_server

NS = "financial-ml"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    with ApiServer(tmp_path) as server:
        yield server


def pod(api: ApiServer, name: str, server: str | None = "mlserver", owner: str | None = "mlserver") -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": NS, "uid": str(uuid.uuid4()),
        "labels": pod_labels(REPLICA, server) if server else {}}, "spec": {"containers": []}}
    if owner:
        doc["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": owner,
                                               "uid": str(uuid.uuid4()), "controller": True}]
    api.objects[("pods", NS, name)] = doc
    return doc


def review(api: ApiServer, *tokens: str) -> list[Any]:
    async def main() -> list[Any]:
        client = Api(await connect(str(api.kubeconfig), None), 10)
        reviewer = TokenReviewer(client)
        out: list[Any] = []
        try:
            for token in tokens:
                try:
                    out.append(await reviewer.principal(token))
                except Unauthenticated as exc:
                    out.append(exc.message)
            return out
        finally:
            await client.close()
    return asyncio.run(main())


def test_a_replica_pods_token_names_exactly_that_replica(api: ApiServer) -> None:
    token = api.issue_token(NS, "berth-server", ["berth"], pod(api, "mlserver-2"))
    [principal, again] = review(api, token, token)
    assert principal.kind == "agent" and principal.agent == AgentIdentity(NS, "mlserver", 2)
    assert again == principal
    reviews = [r for r in api.requests if r[1].endswith("/tokenreviews")]
    assert len(reviews) == 1  # the second came from the cache (keyed by the token's hash)


REFUSED = [
    ("audience", lambda api: api.issue_token(NS, "berth-server", ["https://kubernetes.default.svc"],
                                             pod(api, "mlserver-0")), "not authenticate the token"),
    ("account", lambda api: api.issue_token(NS, "default", ["berth"], pod(api, "mlserver-0")),
     "not to a namespace's ServiceAccount berth-server"),
    ("unbound", lambda api: api.issue_token(NS, "berth-server", ["berth"]), "not bound to a pod"),
    ("bare pod", lambda api: api.issue_token(NS, "berth-server", ["berth"], pod(api, "mlserver-0", owner=None)),
     "is not a pod of Server mlserver's StatefulSet"),
    ("other owner", lambda api: api.issue_token(NS, "berth-server", ["berth"],
                                                pod(api, "mlserver-0", owner="other")), "StatefulSet"),
    ("name", lambda api: api.issue_token(NS, "berth-server", ["berth"], pod(api, "debug")),
     "not named SERVER-REPLICA"),
    ("unknown", lambda api: "not-a-token", "invalid bearer token"),
]


@pytest.mark.parametrize("case,make,reason", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_with_the_reason(api: ApiServer, case: str, make: Any, reason: str) -> None:
    [answer] = review(api, make(api))
    assert isinstance(answer, str) and answer.startswith("agent enrolment refused") and reason in answer


def test_a_replaced_or_deleted_pod_refuses_its_old_token(api: ApiServer) -> None:
    old = pod(api, "mlserver-0")
    token = api.issue_token(NS, "berth-server", ["berth"], old)
    pod(api, "mlserver-0")  # the StatefulSet replaced the pod: same name, new uid
    [answer] = review(api, token)
    assert "was replaced since the token was issued" in answer
    del api.objects[("pods", NS, "mlserver-0")]
    [answer] = review(api, token)
    assert "does not exist" in answer


# -- the hub, enrolling through the reviewer (as `berth control --store kubernetes` wires it) ---------------
def test_reviews_in_flight_are_bounded_and_an_enrolment_ends_with_its_token(
        api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of unknown tokens while the API server is slow holds at most MAX_UNENROLLED reviews; the pod's
    token then enrols exactly its replica, and the connection stays valid only as long as the token."""
    monkeypatch.setattr(hub_module, "MAX_UNENROLLED", 2)
    token = api.issue_token(NS, "berth-server", ["berth"], pod(api, "mlserver-0"))

    async def body() -> None:
        client = Api(await connect(str(api.kubeconfig), None), 10)
        reviewer = TokenReviewer(client, session_s=1.0)
        slow = asyncio.Event()  # the API server answers once this is set

        async def review(presented: str) -> Principal:
            await slow.wait()
            return await reviewer.principal(presented)

        try:
            async with hub_server(TokenRegistry(None)) as (hub, url), aiohttp.ClientSession() as s:
                enrol_with(hub, reviewer)
                hub.review_token = review
                garbage = [asyncio.create_task(s.ws_connect(url, headers={"Authorization": f"Bearer junk-{i}"}))
                           for i in range(2)]
                for _ in range(50):
                    if hub._unenrolled == 2:
                        break
                    await asyncio.sleep(0.05)
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused_now:
                    await s.ws_connect(url, headers={"Authorization": f"Bearer {token}"})
                assert refused_now.value.status == 503  # no third review while two are in flight
                slow.set()
                for task in garbage:
                    ws = await task
                    await ws.send_str(json.dumps(hello(AgentIdentity(NS, "mlserver", 0))))
                    answer = json.loads((await ws.receive(timeout=5)).data)
                    assert answer["code"] == "Unauthenticated", answer
                    await ws.close()
                async with agent(url, token, hello(AgentIdentity(NS, "mlserver", 0))) as (_ws, answer):
                    assert answer["type"] == "welcome", answer
                    rec = hub.replicas[(NS, "mlserver", 0)]
                    assert rec.enrolled and hub._still_valid(rec)
                    await asyncio.sleep(1.2)  # the token's session is over: Secrets stop, heartbeats close it
                    assert not hub._still_valid(rec)
        finally:
            await client.close()

    asyncio.run(body())


def test_an_enrolment_lasts_until_the_tokens_own_expiry() -> None:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": 1_900_000_000, "aud": ["berth"]}).encode()).decode()
    assert _expires(f"e30.{claims.rstrip('=')}.sig") == 1_900_000_000.0
    assert _expires("not-a-jwt") is None and _expires("a.%%%.c") is None
