"""Tokens and the audit log on a real control plane: the token CLI, revocation and expiry (also of open
watches), and audit records of writes and refusals, read with `berth audit`."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import httpx
import pytest

from berth.errors import Unauthenticated
from tests.support.servers import ControlPlane
from tests.support.tenants import SECRET_VALUE, StreamReader, Tenants, model, secret, two_tenants


@pytest.fixture
def tenants(control: ControlPlane) -> Tenants:
    return two_tenants(control)


def _as(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("BERTH_TOKEN", token)


def test_token_cli_create_list_revoke(tenants: Tenants, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s = ("--server", tenants.url)
    r = cli(*s, "token", "create", "bob", "-n", "team-a", "--role", "viewer", "--expires", "30d")
    assert r.code == 0, r.err
    token = r.out.splitlines()[-1]
    assert r.out == token + "\n" and token.startswith("berth_")  # the token alone on stdout
    assert "bob" in r.err and "shown only this once" in r.err and token not in r.err
    assert tenants.admin.__class__(tenants.url, token=token).list("Model", "team-a")
    r = cli(*s, "token", "list")
    assert r.code == 0 and r.out.split("\n")[0].split() == ["NAME", "KIND", "GRANTS", "AGENT", "EXPIRES", "REVOKED",
                                                           "AGE"]
    bob = next(line for line in r.out.splitlines() if line.startswith("bob "))
    assert "team-a=viewer" in bob and "in 29d" in bob and token not in r.out
    listed = json.loads(cli(*s, "token", "list", "-o", "json").out)
    assert listed["kind"] == "List" and "bob" in {t["name"] for t in listed["items"]}
    assert not any("hash" in t or "token" in t for t in listed["items"])
    r = cli(*s, "token", "revoke", "bob")
    assert r.code == 0 and r.out == "token/bob revoked\n"
    with pytest.raises(Unauthenticated, match="refused the token"):
        tenants.admin.__class__(tenants.url, token=token).list("Model", "team-a")
    for bad in (("--role", "owner"), ("--agent", "nope"), ("--gateway", "--role", "viewer"), ()):
        r = cli(*s, "token", "create", "x", *bad)
        assert r.code == 1 and r.err.startswith("error: ") and r.out == "", (bad, r.err)
    r = cli(*s, "token", "create", "gw2", "--gateway")
    assert r.code == 0 and "gateway token" in r.err
    r = cli(*s, "token", "create", "agent-a0", "--agent", "team-a/mlserver/0")
    assert r.code == 0 and "team-a/mlserver/0" in r.err


def test_a_namespace_admin_manages_only_its_namespaces_tokens(tenants: Tenants, cli: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    s = ("--server", tenants.url)
    _as(monkeypatch, tenants.tokens["admin-a"])
    r = cli(*s, "token", "create", "carol", "-n", "team-a", "--role", "editor")
    assert r.code == 0, r.err
    assert cli(*s, "token", "create", "agent0", "--agent", "team-a/mlserver/0").code == 0
    r = cli(*s, "token", "create", "dave", "-n", "team-b", "--role", "viewer")
    assert r.code == 1 and "no admin right in namespace team-b" in r.err
    for refused in (("--gateway",), ("--agent", "team-b/mlserver/0"), ("-n", "*", "--role", "viewer")):
        assert cli(*s, "token", "create", "dave", *refused).code == 1, refused
    names = {t["name"] for t in json.loads(cli(*s, "token", "list", "-o", "json").out)["items"]}
    assert names == {"viewer-a", "editor-a", "admin-a", "infer-a", "carol", "agent0"}  # no admin-b, no admin
    r = cli(*s, "token", "revoke", "admin-b")
    assert r.code == 1 and "no token named admin-b among the tokens you administer" in r.err
    assert cli(*s, "token", "revoke", "nobody-at-all").err == r.err.replace("admin-b", "nobody-at-all")
    assert tenants.client("admin-b").list("Model", "team-b")  # still valid
    _as(monkeypatch, tenants.tokens["viewer-a"])
    r = cli(*s, "token", "list")
    assert r.code == 1 and "forbidden" in r.err


def test_revoked_token_is_refused_at_once_and_ends_open_watches(tenants: Tenants) -> None:
    watcher = tenants.admin.create_token("watcher", grants={"team-a": "viewer"})["token"]
    gateway = tenants.admin.create_token("gw", kind="gateway")["token"]
    h = {"Authorization": f"Bearer {watcher}"}
    ndjson = StreamReader(tenants.url + "/api/v1/watch", {"namespace": "team-a"}, h)
    routes = StreamReader(tenants.url + "/api/v1/routes/watch", {}, {"Authorization": f"Bearer {gateway}"})
    assert ndjson.status == 200 and routes.status == 200
    assert ndjson.wait_for(lambda evs: len(evs) >= 1)

    async def websocket() -> tuple[list[dict[str, Any]], float]:
        frames: list[dict[str, Any]] = []
        async with aiohttp.ClientSession(headers=h) as s, s.ws_connect(tenants.url + "/api/v1/watch?kinds=Model") as ws:
            frames.append(json.loads((await asyncio.wait_for(ws.receive(), 5)).data))
            revoked_at = time.monotonic()
            await asyncio.to_thread(tenants.admin.revoke_token, "watcher")
            await asyncio.to_thread(tenants.admin.revoke_token, "gw")
            while True:
                msg = await asyncio.wait_for(ws.receive(), 5)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return frames, time.monotonic() - revoked_at
                frames.append(json.loads(msg.data))

    frames, ws_took = asyncio.run(websocket())
    revoked = time.monotonic()
    assert frames[-1] == {"type": "ERROR", "object": {"code": "Unauthenticated", "message": "token revoked",
                                                      "details": {"token": "watcher"}}}
    assert ws_took < 2.0
    for stream in (ndjson, routes):
        assert stream.ended.wait(2.0), f"the watch went on after the token was revoked: {stream.events[-2:]}"
        assert stream.events[-1]["type"] == "ERROR" and stream.events[-1]["object"]["message"] == "token revoked"
        assert stream.ended_at - revoked < 2.0
    r = httpx.get(tenants.url + "/api/v1/models", headers=h, timeout=5)
    assert r.status_code == 401 and r.json()["code"] == "Unauthenticated"


def test_expired_token_is_refused_and_its_watch_ends(tenants: Tenants) -> None:
    made = tenants.admin.create_token("brief", grants={"team-a": "viewer"}, expires_in=2)
    h = {"Authorization": f"Bearer {made['token']}"}
    assert httpx.get(tenants.url + "/api/v1/models", headers=h, timeout=5).status_code == 200
    stream = StreamReader(tenants.url + "/api/v1/watch", {"namespace": "team-a"}, h)
    assert stream.ended.wait(made["expires"] - time.time() + 1.5), "the watch outlived its token"
    assert stream.events[-1]["object"] == {"code": "Unauthenticated", "message": "token expired",
                                           "details": {"token": "brief"}}
    assert httpx.get(tenants.url + "/api/v1/models", headers=h, timeout=5).status_code == 401


def test_audit_records_writes_and_refusals_never_secret_values(tenants: Tenants, cli: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    editor, admin_b = tenants.client("editor-a"), tenants.client("admin-b")
    editor.apply([model("audited", "team-a")])
    editor.delete("Model", "team-a", "audited")
    admin_b.apply([secret("creds-b2", "team-b")])
    admin_b.delete("Secret", "team-b", "creds-b2")
    httpx.get(tenants.url + "/api/v1/namespaces/team-b/models/x", timeout=5)  # anonymous: 401
    httpx.get(tenants.url + "/api/v1/namespaces/team-b/models/x", headers=tenants.headers("viewer-a"), timeout=5)
    records = tenants.admin.audit()
    text = json.dumps(records)
    assert SECRET_VALUE not in text and tenants.tokens["editor-a"] not in text
    seen = {(r["principal"], r["verb"], r["kind"], r["namespace"], r["name"], r["outcome"]) for r in records}
    assert {("editor-a", "apply", "Model", "team-a", "audited", "ok"),
            ("editor-a", "delete", "Model", "team-a", "audited", "ok"),
            ("admin-b", "apply", "Secret", "team-b", "creds-b2", "ok"),
            ("admin-b", "delete", "Secret", "team-b", "creds-b2", "ok"),
            ("anonymous", "get", "Model", "team-b", "x", "unauthenticated"),
            ("viewer-a", "get", "Model", "team-b", "x", "forbidden"),
            ("admin", "create", "Token", "team-a", "viewer-a", "ok")} <= seen
    assert all(r["source"] == "127.0.0.1" for r in records)
    s = ("--server", tenants.url)
    r = cli(*s, "audit", "--since", "1h")
    assert r.code == 0 and r.out.split("\n")[0].split() == ["TIME", "PRINCIPAL", "SOURCE", "VERB", "KIND",
                                                           "NAMESPACE", "NAME", "OUTCOME", "REASON"]
    assert "creds-b2" in r.out and SECRET_VALUE not in r.out
    _as(monkeypatch, tenants.tokens["admin-a"])  # a namespace admin: only team-a's records
    r = cli(*s, "audit", "-o", "json")
    assert r.code == 0, r.err
    mine = json.loads(r.out)["items"]
    assert mine and {rec["namespace"] for rec in mine} == {"team-a"}
    assert json.loads(cli(*s, "audit", "-n", "team-a", "-o", "json").out)["items"] == mine
    r = cli(*s, "audit", "-n", "team-b")
    assert r.code == 1 and "no admin right in namespace team-b" in r.err
    assert cli(*s, "audit", "--since", "soon").code == 1
