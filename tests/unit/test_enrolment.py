"""Agents are enrolled, not trusted: the hub's admission of a hello, against a real aiohttp server and a real
token registry (in memory), and the rules that follow from it (one live connection per replica, Secrets only
to enrolled agents of their namespace, no placement on a server no resource declares)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from berth.adapters import mlserver_proc
from berth.agent.config import AgentConfig
from berth.control import provisioner
from berth.control.hub import AgentHub, ReplicaRecord
from berth.control.provisioner import LocalProvisioner, token_name
from berth.control.tokens import TokenRegistry
from berth.errors import ConfigError
from berth.resources.identity import AgentIdentity, new_token
from berth.scheduler.build import MLSERVER_CAPABILITIES, snapshot_for
from berth.scheduler.snapshot import ReplicaInfo
from berth.store.memory import MemoryStore
from berth.wire import agent as wire
from tests.unit.test_reconcile import NS, model, plane, server, settle

T = TypeVar("T")
A = AgentIdentity("tenant-a", "mlserver", 0)


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())  # type: ignore[arg-type]


def hello(ident: AgentIdentity = A, **extra: Any) -> dict[str, Any]:
    return wire.Hello(namespace=ident.namespace, server=ident.server, replica=ident.replica,
                      readiness=wire.Readiness(ready=True), **extra).model_dump()


@asynccontextmanager
async def hub_server(tokens: TokenRegistry) -> AsyncIterator[tuple[AgentHub, str]]:
    changes: list[str] = []
    hub = AgentHub(changes.append, tokens=tokens)
    app = web.Application()
    app.router.add_get(wire.AGENT_PATH, hub.handle)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    try:
        yield hub, str(srv.make_url(wire.AGENT_PATH))
    finally:
        await srv.close()


@asynccontextmanager
async def agent(url: str, token: str | None, frame: dict[str, Any] | str) -> AsyncIterator[
        tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]]:
    """A raw agent: connect (with ``token`` as bearer, if any), send ``frame``, yield the first answer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.ws_connect(url, headers=headers) as ws:
        await ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        yield ws, json.loads(msg.data)


async def refused(url: str, token: str | None, frame: dict[str, Any] | str) -> dict[str, Any]:
    """The error frame a refused agent gets; nothing follows it but the close."""
    async with agent(url, token, frame) as (ws, answer):
        assert answer["type"] == "error", answer
        rest = await ws.receive(timeout=5)
        assert rest.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), rest
        return answer


def agent_token(tokens: TokenRegistry, ident: AgentIdentity = A, name: str | None = None) -> str:
    return tokens.create(name or f"agent.{ident.namespace}.{ident.server}.{ident.replica}", kind="agent",
                         agent=ident)


def last_audit(tokens: TokenRegistry, namespace: str | None = None) -> dict[str, Any]:
    records = tokens.audit_records(namespaces=None if namespace is None else frozenset({namespace}))
    assert records, "nothing audited"
    return records[-1]


# -- who may say hello ------------------------------------------------------------------------------------
def test_a_hello_without_a_token_is_refused_and_audited() -> None:
    async def body() -> None:
        tokens = TokenRegistry(None)
        async with hub_server(tokens) as (hub, url):
            answer = await refused(url, None, hello())
            assert answer["code"] == "Unauthenticated"
            assert "no agent token" in answer["message"] and "Authorization: Bearer" in answer["message"]
            assert "berth token create NAME --agent tenant-a/mlserver/0" in answer["message"]
            assert hub.replicas == {}
        rec = last_audit(tokens, "tenant-a")
        assert (rec["verb"], rec["outcome"], rec["principal"], rec["kind"], rec["name"], rec["reason"]) == (
            "agent-hello", "refused", "anonymous", "Agent", "mlserver/0", "no token")
        assert rec["source"] == "127.0.0.1"

    run(body)


def test_a_forged_or_revoked_token_is_refused() -> None:
    async def body() -> None:
        tokens = TokenRegistry(None)
        revoked = agent_token(tokens)
        tokens.revoke("agent.tenant-a.mlserver.0")
        async with hub_server(tokens) as (hub, url):
            for token in (new_token(), revoked, "not-even-a-token"):
                answer = await refused(url, token, hello())
                assert answer["code"] == "Unauthenticated" and "not valid" in answer["message"], answer
                rec = last_audit(tokens, "tenant-a")
                assert rec["outcome"] == "refused" and "not valid" in rec["reason"], rec
                assert rec["principal"] == "invalid-token"
            assert hub.replicas == {}

    run(body)


def test_a_user_token_cannot_enrol_an_agent() -> None:
    async def body() -> None:
        tokens = TokenRegistry(None)
        admin = tokens.create("alice", grants={"*": "admin"})
        async with hub_server(tokens) as (hub, url):
            answer = await refused(url, admin, hello())
            assert answer["code"] == "Forbidden" and "a user token cannot enrol an agent" in answer["message"]
            assert hub.replicas == {}
        rec = last_audit(tokens, "tenant-a")
        assert (rec["principal"], rec["outcome"]) == ("alice", "refused")

    run(body)


def test_another_replicas_token_is_refused_without_naming_its_tenant() -> None:
    async def body() -> None:
        tokens = TokenRegistry(None)
        other_tenant = agent_token(tokens, AgentIdentity("tenant-b", "mlserver", 0))
        sibling = agent_token(tokens, AgentIdentity("tenant-a", "mlserver", 1))
        async with hub_server(tokens) as (hub, url):
            answer = await refused(url, other_tenant, hello())
            assert answer["code"] == "Forbidden" and "not minted for replica tenant-a/mlserver/0" in answer["message"]
            assert "tenant-b" not in json.dumps(answer)
            # what tenant-a's admin reads names nothing of tenant-b; tenant-b's admin learns its token was misused
            a = last_audit(tokens, "tenant-a")
            assert a["principal"] == "(a token of another namespace)" and "tenant-b" not in json.dumps(a)
            b = last_audit(tokens, "tenant-b")
            assert (b["principal"], b["name"], b["outcome"]) == ("agent.tenant-b.mlserver.0", "mlserver/0", "refused")
            assert "tenant-a" not in json.dumps(b)
            # the same namespace, another replica: also refused
            answer = await refused(url, sibling, hello())
            assert answer["code"] == "Forbidden"
            assert last_audit(tokens, "tenant-a")["principal"] == "agent.tenant-a.mlserver.1"
            assert hub.replicas == {}

    run(body)


def test_a_bad_first_frame_is_refused() -> None:
    async def body() -> None:
        tokens = TokenRegistry(None)
        token = agent_token(tokens)
        async with hub_server(tokens) as (hub, url):
            bad_namespace = {**hello(), "namespace": "Tenant_A"}
            answer = await refused(url, token, bad_namespace)
            assert answer["code"] == "InvalidInput" and "namespace" in answer["message"]
            answer = await refused(url, token, {"type": "heartbeat"})
            assert answer["code"] == "InvalidInput" and "hello" in answer["message"]
            assert hub.replicas == {}
        assert last_audit(tokens)["verb"] == "agent-hello"

    run(body)


def test_an_oversized_hello_without_a_token_is_cut_off() -> None:
    async def body() -> None:
        tokens = TokenRegistry(None)
        async with hub_server(tokens) as (hub, url), aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
            await ws.send_str(json.dumps(hello(capabilities=["x" * 100] * 1000)))  # ~100 KiB
            msg = await ws.receive(timeout=5)
            while msg.type == aiohttp.WSMsgType.TEXT:  # an error frame, if it got one out before the close
                assert json.loads(msg.data)["type"] == "error"
                msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            assert hub.replicas == {}

    run(body)


def test_connections_waiting_for_their_hello_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from berth.control import hub as hub_module

    monkeypatch.setattr(hub_module, "MAX_UNENROLLED", 2)

    async def body() -> None:
        tokens = TokenRegistry(None)
        token = agent_token(tokens)
        async with hub_server(tokens) as (hub, url), aiohttp.ClientSession() as s:
            idle = [await s.ws_connect(url) for _ in range(2)]  # upgraded, saying nothing
            await asyncio.sleep(0.1)
            try:
                await s.ws_connect(url, headers={"Authorization": f"Bearer {token}"})
                raise AssertionError("a third waiting connection was upgraded")
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 503
            for ws in idle:
                await ws.close()
            await asyncio.sleep(0.1)
            async with agent(url, token, hello()) as (_ws, answer):  # room again
                assert answer["type"] == "welcome"

    run(body)


def test_the_right_token_enrols_and_is_audited() -> None:
    async def body() -> None:
        tokens = TokenRegistry(None)
        token = agent_token(tokens)
        async with hub_server(tokens) as (hub, url), agent(url, token, hello()) as (_ws, answer):
            assert answer["type"] == "welcome"
            rec = hub.replicas[("tenant-a", "mlserver", 0)]
            assert rec.connected and rec.enrolled and rec.peer == "127.0.0.1"
            assert rec.summary()["peer"] == "127.0.0.1"
            audit = last_audit(tokens, "tenant-a")
            assert (audit["verb"], audit["outcome"], audit["principal"], audit["name"]) == (
                "agent-connect", "ok", "agent.tenant-a.mlserver.0", "mlserver/0")

    run(body)


# -- one live connection per replica ----------------------------------------------------------------------
def test_a_second_agent_claiming_a_live_replica_is_refused_then_a_reconnect_is_accepted() -> None:
    async def body() -> None:
        tokens = TokenRegistry(None)
        token = agent_token(tokens)
        async with hub_server(tokens) as (hub, url):
            async with agent(url, token, hello()) as (first, answer):
                assert answer["type"] == "welcome"
                held = hub.replicas[("tenant-a", "mlserver", 0)]
                thief = await refused(url, token, hello())  # the same, valid token (copied)
                assert thief["code"] == "Conflict" and "already connected" in thief["message"]
                assert "127.0.0.1" not in thief["message"]  # where the holder is, only the audit log says
                rec = last_audit(tokens, "tenant-a")
                assert rec["outcome"] == "refused"
                assert "replica tenant-a/mlserver/0 is already connected from 127.0.0.1" in rec["reason"]
                # the first connection is untouched and still serves
                assert hub.replicas[("tenant-a", "mlserver", 0)] is held and held.connected and held.ws is not None
                await first.send_str(wire.dump(wire.Heartbeat()))
                await first.send_str(wire.dump(wire.ModelEvent(name="iris", generation=1, state="LOADED")))
                for _ in range(50):
                    if "iris" in held.models:
                        break
                    await asyncio.sleep(0.02)
                assert held.models["iris"].state == "LOADED"
            for _ in range(100):  # the first connection is gone once the hub has seen it close
                if not hub.replicas[("tenant-a", "mlserver", 0)].connected:
                    break
                await asyncio.sleep(0.02)
            async with agent(url, token, hello()) as (_again, answer):
                assert answer["type"] == "welcome"
                assert hub.replicas[("tenant-a", "mlserver", 0)].connected

    run(body)


def test_a_connection_gone_silent_gives_way() -> None:
    async def body() -> None:
        tokens = TokenRegistry(None)
        token = agent_token(tokens)
        async with hub_server(tokens) as (hub, url), agent(url, token, hello()) as (first, answer):
            assert answer["type"] == "welcome"
            hub.replicas[("tenant-a", "mlserver", 0)].last_heartbeat = time.time() - 60  # no heartbeat for 60 s
            async with agent(url, token, hello()) as (_second, answer):
                assert answer["type"] == "welcome"
                msg = await first.receive(timeout=5)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
                assert hub.replicas[("tenant-a", "mlserver", 0)].connected

    run(body)


def test_revoking_the_token_cuts_the_connection_at_its_next_heartbeat() -> None:
    async def body() -> None:
        tokens = TokenRegistry(None)
        token = agent_token(tokens)
        async with hub_server(tokens) as (hub, url), agent(url, token, hello()) as (ws, answer):
            assert answer["type"] == "welcome"
            tokens.revoke("agent.tenant-a.mlserver.0")
            await ws.send_str(wire.dump(wire.Heartbeat()))
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["code"] == "Unauthenticated"
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            for _ in range(100):
                if not hub.replicas[("tenant-a", "mlserver", 0)].connected:
                    break
                await asyncio.sleep(0.02)
            assert not hub.replicas[("tenant-a", "mlserver", 0)].connected

    run(body)


# -- Secrets only to enrolled agents of their namespace ---------------------------------------------------
class StubSocket:
    closed = False

    def __init__(self) -> None:
        self.frames: list[str] = []

    async def send_str(self, data: str) -> None:
        self.frames.append(data)

    async def close(self, **_: Any) -> None:
        self.closed = True


def load(namespace: str | None, secret: dict[str, str] | None = None) -> wire.Load:
    return wire.Load(namespace=namespace, name="fraud", generation=1, source=wire.ModelSource(
        storage_uri="s3://bucket/fraud", secret_name="s3-creds" if secret else None, secret=secret))


def record(hub: AgentHub, ident: AgentIdentity, principal_of: AgentIdentity | None) -> tuple[ReplicaRecord,
                                                                                            StubSocket]:
    ws = StubSocket()
    principal = hub.tokens.verify(agent_token(hub.tokens, principal_of)) if principal_of else None
    h = wire.Hello(namespace=ident.namespace, server=ident.server, replica=ident.replica)
    return hub._register(h, ws, principal, "10.0.0.9"), ws  # type: ignore[arg-type]


def test_a_secret_goes_only_to_an_agent_enrolled_in_the_models_namespace() -> None:
    async def body() -> None:
        hub = AgentHub(lambda ns: None, tokens=TokenRegistry(None))
        creds = {"s3": "secret_access_key: wJalrXUtnFEMI"}
        ok, ok_ws = record(hub, A, A)
        assert await hub.send(ok, load("tenant-a", creds)) and "wJalrXUtnFEMI" in ok_ws.frames[0]
        # a Load naming another namespace (a bug upstream) is refused, the connection stays
        assert not await hub.send(ok, load("tenant-b", creds)) and len(ok_ws.frames) == 1 and not ok_ws.closed
        assert not await hub.send(ok, load(None, creds)) and len(ok_ws.frames) == 1
        audit = last_audit(hub.tokens, "tenant-a")
        assert (audit["verb"], audit["outcome"]) == ("agent-load", "refused") and "wJalrXUtnFEMI" not in str(audit)
        # a record that is not enrolled as itself (no principal, or another replica's) never gets one
        for ident, principal_of in ((AgentIdentity("tenant-a", "mlserver", 1), None),
                                    (AgentIdentity("tenant-a", "mlserver", 2), AgentIdentity("tenant-a", "x", 2))):
            rec, ws = record(hub, ident, principal_of)
            assert not await hub.send(rec, load("tenant-a", creds))
            assert all("wJalrXUtnFEMI" not in f for f in ws.frames) and ws.closed
        # a revoked token: withheld, and the connection is closed
        hub.tokens.revoke("agent.tenant-a.mlserver.0")
        assert not await hub.send(ok, load("tenant-a", creds)) and len(ok_ws.frames) == 2 and ok_ws.closed
        assert json.loads(ok_ws.frames[1])["code"] == "Unauthenticated"
        # a Load without a secret is not held back by this guard
        plain, plain_ws = record(hub, AgentIdentity("tenant-a", "mlserver", 3), None)
        assert await hub.send(plain, load("tenant-a")) and len(plain_ws.frames) == 1

    run(body)


def test_the_reconciler_names_the_models_namespace_in_each_load() -> None:
    async def body() -> None:
        p = plane()
        p.store.apply(server(1))
        p.store.apply(model())
        h = wire.Hello(namespace=NS, server="mlserver", replica=0, capabilities=list(MLSERVER_CAPABILITIES),
                       memory=4 << 30, readiness=wire.Readiness(ready=True))
        p.hub._register(h, None)  # type: ignore[arg-type]
        await p.pass_()
        [sent] = p.hub.sent
        assert isinstance(sent.msg, wire.Load) and sent.msg.namespace == NS

    run(body)


# -- a server no resource declares is never a placement candidate ----------------------------------------
def test_snapshot_keeps_only_replicas_of_declared_servers() -> None:
    docs = [server(1), model()]
    reps = [ReplicaInfo(server=s, namespace=NS, index=0, capabilities=MLSERVER_CAPABILITIES, memory=1 << 30,
                        connected=True, ready=True) for s in ("mlserver", "ghost")]
    snap = snapshot_for(NS, docs, reps)
    assert [r.server for r in snap.replicas] == ["mlserver"]
    assert snapshot_for(NS, [model()], reps).replicas == ()


def test_an_agent_of_an_undeclared_server_gets_no_model() -> None:
    async def body() -> None:
        p = plane()
        p.store.apply(model())
        ghost = wire.Hello(namespace=NS, server="ghost", replica=0, capabilities=list(MLSERVER_CAPABILITIES),
                           memory=4 << 30, readiness=wire.Readiness(ready=True))
        p.hub._register(ghost, None)  # type: ignore[arg-type]
        await settle(p)
        assert p.hub.loads() == []
        st = p.store.get("Model", NS, "iris")["status"]
        assert st["state"] == "ScheduleFailed" and "ghost" not in st["message"], st
        # once a Server declares it, the same agent is a candidate; when the Server goes, the model leaves it
        doc = server(1)
        doc["metadata"]["name"] = "ghost"
        p.store.apply(doc)
        await settle(p)
        assert p.hub.loads() == [(0, 1)]
        assert p.store.get("Model", NS, "iris")["status"]["state"] == "ModelAvailable"
        p.store.delete("Server", NS, "ghost")
        await p.pass_()
        assert p.hub.replicas[(NS, "ghost", 0)].models["iris"].state == "DRAINING"
        assert p.store.get("Model", NS, "iris")["status"]["state"] != "ModelAvailable"

    run(body)


# -- where the agent finds its token ----------------------------------------------------------------------
def test_the_agent_reads_its_token_from_a_file_or_the_environment_and_never_shows_it(tmp_path: Path) -> None:
    secret = new_token()
    cfg = AgentConfig.from_env({"BERTH_AGENT_TOKEN": secret})
    assert cfg.bearer_token() == secret and secret not in repr(cfg)
    path = tmp_path / "token"
    path.write_text(secret + "\n")
    cfg = AgentConfig.from_env({"BERTH_AGENT_TOKEN_FILE": str(path), "BERTH_AGENT_TOKEN": "ignored"})
    assert cfg.bearer_token() == secret
    path.write_text("rotated\n")
    assert cfg.bearer_token() == "rotated"  # read again on each connection
    assert AgentConfig.from_env({}, token_file=path).bearer_token() == "rotated"
    assert AgentConfig.from_env({}).bearer_token() is None
    path.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        AgentConfig.from_env({}, token_file=path)
    with pytest.raises(ConfigError, match="agent token file"):
        AgentConfig.from_env({}, token_file=tmp_path / "missing")


# -- local replicas: a token each, in the environment; adoption keeps it; revocation renews it ------------
class Spawned:
    """Stands in for subprocess.Popen in the provisioner: records the call, runs a harmless sleeper."""

    calls: list[tuple[list[str], dict[str, str]]] = []

    def __new__(cls, args: list[str], *, env: dict[str, str], **kw: Any) -> Any:  # type: ignore[misc]
        cls.calls.append((list(args), dict(env)))
        return _sleeper()


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _provisioner(tmp_path: Path, tokens: TokenRegistry, monkeypatch: pytest.MonkeyPatch) -> LocalProvisioner:
    monkeypatch.setattr(provisioner, "subprocess", SimpleNamespace(Popen=Spawned, STDOUT=subprocess.STDOUT,
                                                                   DEVNULL=subprocess.DEVNULL))
    monkeypatch.setattr(mlserver_proc.MLServerProcess, "start", lambda self: (self.write_settings(), _sleeper())[1])
    store = MemoryStore()
    doc = server(1)
    doc["metadata"]["namespace"] = "tenant-a"
    store.apply(doc)
    return LocalProvisioner(store, "127.0.0.1", 9, tmp_path, replica_memory=1 << 30, tokens=tokens)


def test_local_replicas_get_a_token_of_their_own_in_the_environment(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_TOKEN", "berth_the-control-planes-own-admin-token")
    Spawned.calls = []
    tokens = TokenRegistry(tmp_path / "auth.db")
    prov = _provisioner(tmp_path, tokens, monkeypatch)
    try:
        prov.converge()
        [(args, env)] = Spawned.calls
        token = env["BERTH_AGENT_TOKEN"]
        assert token not in " ".join(args) and "BERTH_TOKEN" not in env
        principal = tokens.verify(token)
        assert principal is not None and principal.kind == "agent"
        assert principal.agent == AgentIdentity("tenant-a", "mlserver", 0)
        assert token_name(("tenant-a", "mlserver", 0)) == principal.name == "agent.tenant-a.mlserver.0"
        # a control plane restarting (same auth.db) adopts the running replica: its token still holds
        again = _provisioner(tmp_path, TokenRegistry(tmp_path / "auth.db"), monkeypatch)
        assert ("tenant-a", "mlserver", 0) in again.replicas and again.tokens.verify(token) is not None
        # an admin revokes it: the agent (only) is started again with a new token
        mls_pid = again.replicas[("tenant-a", "mlserver", 0)].mlserver.pid
        again.tokens.revoke("agent.tenant-a.mlserver.0")
        again.converge()
        rep = again.replicas[("tenant-a", "mlserver", 0)]
        new = Spawned.calls[-1][1]["BERTH_AGENT_TOKEN"]
        assert len(Spawned.calls) == 2 and new != token and rep.mlserver.pid == mls_pid
        assert again.tokens.verify(new) is not None and again.tokens.verify(token) is None
        # scaled to zero: the replica stops and its token is revoked
        doc = server(0)
        doc["metadata"]["namespace"] = "tenant-a"
        again.store.apply(doc)
        again.converge()
        assert again.replicas == {} and again.tokens.verify(new) is None
    finally:
        prov.stop_all()


def test_a_replica_whose_token_is_gone_is_not_adopted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Spawned.calls = []
    prov = _provisioner(tmp_path, TokenRegistry(None), monkeypatch)  # tokens in memory only
    prov.converge()
    rep = prov.replicas[("tenant-a", "mlserver", 0)]
    old = (rep.agent, rep.mlserver)
    # the next control plane has a fresh in-memory registry: the running agent could never enrol again
    again = _provisioner(tmp_path, TokenRegistry(None), monkeypatch)
    try:
        assert again.replicas == {} and not any(h.alive() for h in old)
        again.converge()
        assert ("tenant-a", "mlserver", 0) in again.replicas and len(Spawned.calls) == 2
    finally:
        again.stop_all()
        prov.stop_all()


def test_a_crashed_provisioner_pass_leaves_the_replicas_running(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure inside the provisioner's loop ends it for the guarded restart, not the replicas with it;
    stopping it (shutdown) stops them."""
    import asyncio

    Spawned.calls = []
    prov = _provisioner(tmp_path, TokenRegistry(None), monkeypatch)
    try:
        prov.converge()
        rep = prov.replicas[("tenant-a", "mlserver", 0)]
        real = prov.converge
        monkeypatch.setattr(prov, "converge", lambda: (_ for _ in ()).throw(RuntimeError("injected")))
        with pytest.raises(RuntimeError, match="injected"):
            asyncio.run(prov.run(asyncio.Event()))
        assert rep.agent.alive() and rep.mlserver.alive(), "a crash stopped the replicas"
        monkeypatch.setattr(prov, "converge", real)

        async def shutdown() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(prov.run(stop))
            await asyncio.sleep(0.2)
            stop.set()
            prov.changed()
            await asyncio.wait_for(task, 30)

        asyncio.run(shutdown())
        assert not rep.agent.alive() and not rep.mlserver.alive()
    finally:
        prov.stop_all()
