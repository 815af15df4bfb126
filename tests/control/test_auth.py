"""Tenants cannot see or touch each other on the control API: 401 for anonymous calls on every route,
403 for the wrong namespace (saying nothing of what exists), `-A` filtered, apply all-or-nothing."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import aiohttp
import httpx
import pytest

from berth.control.api import ControlAPI
from berth.control.hub import AgentHub
from berth.control.metrics import ControlMetrics
from berth.control.routes import RoutesPublisher
from berth.control.tokens import TokenRegistry
from berth.errors import Forbidden, NotFound
from berth.store import MemoryStore
from berth.wire.agent import AGENT_PATH
from tests.support.servers import ControlPlane
from tests.support.tenants import B_MODEL, SECRET_VALUE, StreamReader, Tenants, model, names_in, two_tenants

OPEN = {"/healthz", "/readyz"}
SAMPLE = {"ns": "team-b", "kind": "models", "name": B_MODEL}


def every_route() -> list[tuple[str, str]]:
    """(method, plausible path) for every route the control API serves, read from its router."""
    store = MemoryStore()
    hub = AgentHub(lambda ns: None)
    app = ControlAPI(store, hub, RoutesPublisher(), ControlMetrics(store, hub), tokens=TokenRegistry(None)).app()
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or re.sub(r"\{(\w+)\}", lambda m: SAMPLE[m.group(1)], info.get("formatter", ""))
        if route.method != "HEAD":
            out.append((route.method, path))
    return sorted(set(out))


@pytest.fixture
def tenants(control: ControlPlane) -> Tenants:
    return two_tenants(control)


def _body(r: httpx.Response, code: str) -> dict[str, Any]:
    assert r.headers["Content-Type"].startswith("application/json"), r.text
    body = r.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == code, body
    return body


def test_anonymous_and_bad_tokens_get_401_on_every_route(tenants: Tenants) -> None:
    routes = every_route()
    assert ("GET", "/api/v1/tokens") in routes and ("GET", "/api/v1/audit") in routes and len(routes) >= 15
    for method, path in routes + [("GET", "/api/v1/no-such-endpoint"), ("GET", "/nothing/here")]:
        for headers in ({}, {"Authorization": "Bearer berth_not-a-real-token-000000000000"},
                        {"Authorization": "Basic YWRtaW46YWRtaW4="}):
            r = httpx.request(method, tenants.url + path, headers=headers, timeout=5, json={})
            if path in OPEN:
                assert r.status_code == 200, (method, path, r.text)
            elif path == AGENT_PATH:  # the hub authenticates agents itself: a plain GET is no WebSocket
                assert r.status_code >= 400 and B_MODEL not in r.text, (method, path, r.status_code)
            else:
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
                body = _body(r, "Unauthenticated")
                assert B_MODEL not in r.text and "team-b" not in body["message"]
                assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_namespace_is_403_and_says_nothing_of_what_exists(tenants: Tenants) -> None:
    h = tenants.headers("admin-a")  # admin of team-a: every right there, none in team-b
    api = tenants.url + "/api/v1"
    calls = [("GET", f"{api}/namespaces/team-b/models/{B_MODEL}", None),
             ("GET", f"{api}/namespaces/team-b/models/no-such-model", None),
             ("GET", f"{api}/namespaces/no-such-ns/models/x", None),
             ("GET", f"{api}/namespaces/team-b/secrets/creds-b", None),
             ("GET", f"{api}/namespaces/team-b/models/{B_MODEL}/storage", None),
             ("DELETE", f"{api}/namespaces/team-b/models/{B_MODEL}", None),
             ("DELETE", f"{api}/namespaces/team-b/secrets/creds-b", None),
             ("GET", f"{api}/models?namespace=team-b", None),
             ("GET", f"{api}/secrets?namespace=team-b", None),
             ("GET", f"{api}/agents?namespace=team-b", None),
             ("GET", f"{api}/watch?namespace=team-b", None),
             ("GET", f"{api}/audit?namespace=team-b", None),
             ("POST", f"{api}/apply", {"documents": [model("new", "team-b")]}),
             ("POST", f"{api}/tokens", {"name": "sneaky", "namespace": "team-b", "role": "viewer"}),
             ("POST", f"{api}/tokens", {"name": "sneaky", "grants": {"*": "viewer"}}),
             ("POST", f"{api}/tokens", {"name": "sneaky", "agent": "team-b/mlserver/0"}),
             ("POST", f"{api}/tokens", {"name": "sneaky", "kind": "gateway"}),
             ("GET", f"{api}/routes", None), ("GET", f"{api}/routes/watch", None),
             ("GET", tenants.url + "/metrics", None)]
    answers = {}
    for method, url, body in calls:
        r = httpx.request(method, url, headers=h, json=body, timeout=5)
        assert r.status_code == 403, (method, url, r.status_code, r.text)
        answers[(method, url)] = _body(r, "Forbidden")
        assert B_MODEL not in r.text and "creds-b" not in r.text and SECRET_VALUE not in r.text, r.text
    # the same answer whether the model exists or not
    exists, missing = (answers[("GET", f"{api}/namespaces/team-b/models/{n}")] for n in (B_MODEL, "no-such-model"))
    assert exists == missing and "namespace team-b" in exists["message"] and "read" in exists["message"]
    assert answers[("GET", f"{api}/namespaces/no-such-ns/models/x")]["message"] == exists["message"].replace(
        "team-b", "no-such-ns")
    assert tenants.admin.get("Model", "team-b", B_MODEL)  # nothing was deleted
    assert tenants.admin.get("Secret", "team-b", "creds-b")


def test_viewer_and_editor_rights_in_their_own_namespace(tenants: Tenants) -> None:
    viewer, editor = tenants.client("viewer-a"), tenants.client("editor-a")
    assert viewer.get("Model", "team-a", "model-a")["metadata"]["name"] == "model-a"
    with pytest.raises(Forbidden, match="write right in namespace team-a"):
        viewer.apply([model("new", "team-a")])
    with pytest.raises(Forbidden, match="write right in namespace team-a"):
        viewer.delete("Model", "team-a", "model-a")
    with pytest.raises(Forbidden, match="admin right in namespace team-a"):
        viewer.get("Secret", "team-a", "creds-a")  # Secrets are the admin's
    editor.apply([model("new", "team-a")])
    editor.delete("Model", "team-a", "new")
    with pytest.raises(Forbidden, match="admin right in namespace team-a"):
        editor.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "team-a"},
                       "stringData": {"k": "v"}}])
    with pytest.raises(NotFound) as missing:
        viewer.get("Model", "team-a", "model-b")  # a 404 in its own namespace names nothing elsewhere
    assert "team-b" not in missing.value.message and B_MODEL not in missing.value.message
    inference = tenants.client("infer-a")  # data plane only
    with pytest.raises(Forbidden):
        inference.get("Model", "team-a", "model-a")
    assert inference.list("Model") == []  # -A: filtered, never a 403


def test_lists_and_watches_without_a_namespace_are_filtered(tenants: Tenants) -> None:
    viewer, admin_a = tenants.client("viewer-a"), tenants.client("admin-a")
    assert {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in viewer.list("Model")} == {
        ("team-a", "model-a")}
    assert viewer.list("Secret") == []  # a viewer reads no Secrets
    assert [d["metadata"]["name"] for d in admin_a.list("Secret")] == ["creds-a"]
    assert viewer.agents() == [] and tenants.client("admin-b").list("Model", "team-b")
    stream = StreamReader(tenants.url + "/api/v1/watch", {}, tenants.headers("viewer-a"))
    assert stream.wait_for(lambda evs: ("team-a", "model-a") in names_in(evs))
    tenants.admin.apply([model("later-b", "team-b"), model("later-a", "team-a")])
    assert stream.wait_for(lambda evs: ("team-a", "later-a") in names_in(evs))
    time.sleep(0.3)
    assert {ns for ns, _ in names_in(stream.events)} == {"team-a"}, stream.events
    assert not any(e["object"].get("kind") == "Secret" for e in stream.events)
    assert SECRET_VALUE not in json.dumps(stream.events)


def test_websocket_watch_is_filtered_too(tenants: Tenants) -> None:
    async def frames() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with aiohttp.ClientSession(headers=tenants.headers("viewer-a")) as s, \
                s.ws_connect(tenants.url + "/api/v1/watch?kinds=Model") as ws:
            await asyncio.to_thread(tenants.admin.apply, [model("ws-b", "team-b"), model("ws-a", "team-a")])
            while ("team-a", "ws-a") not in names_in(got):
                msg = await asyncio.wait_for(ws.receive(), 10)
                got.append(json.loads(msg.data))
        return got

    assert {ns for ns, _ in names_in(asyncio.run(frames()))} == {"team-a"}


def test_apply_touching_two_namespaces_with_rights_in_one_writes_nothing(tenants: Tenants) -> None:
    editor = tenants.client("editor-a")
    with pytest.raises(Forbidden, match="namespace team-b"):
        editor.apply([model("both-a", "team-a"), model("both-b", "team-b")])
    for ns, name in (("team-a", "both-a"), ("team-b", "both-b")):
        with pytest.raises(NotFound):
            tenants.admin.get("Model", ns, name)
    refused = [r for r in tenants.admin.audit(namespace="team-b") if r["outcome"] == "forbidden"]
    assert [(r["principal"], r["verb"], r["name"]) for r in refused] == [("editor-a", "apply", "both-b")]


def test_suggestions_never_name_another_tenants_models(tenants: Tenants) -> None:
    tenants.admin.apply([{"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Experiment",
                          "metadata": {"name": "ab", "namespace": "team-a"},
                          "spec": {"default": "model-a", "candidates": [{"name": "model-a", "weight": 50},
                                                                        {"name": "fraud-detectr-b", "weight": 50}]}}])
    viewer = tenants.client("viewer-a")
    deadline = time.monotonic() + 15
    message = ""
    while time.monotonic() < deadline and "fraud-detectr-b" not in message:
        message = (viewer.get("Experiment", "team-a", "ab").get("status") or {}).get("message", "")
        time.sleep(0.1)
    assert "fraud-detectr-b not found in namespace team-a" in message and B_MODEL not in message, message
