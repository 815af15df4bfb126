"""Identity without a server: roles and grants, bearer parsing, durations, and the token registry (in memory)."""

from __future__ import annotations

import pytest

from berth.control.tokens import TokenRegistry
from berth.errors import Conflict, InvalidInput, NotFound
from berth.resources.identity import (
    ALL,
    AgentIdentity,
    Principal,
    bearer,
    check_grants,
    hash_token,
    looks_like_token,
    new_token,
    parse_duration,
    right_for,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_roles_grant_rights_per_namespace() -> None:
    alice = Principal("alice", grants={"team-a": "viewer", "team-b": "editor", "team-c": "admin", "shop": "inference"})
    assert alice.can("read", "team-a") and not alice.can("write", "team-a")
    assert alice.can("write", "team-b") and not alice.can("admin", "team-b")
    assert alice.can("admin", "team-c") and alice.can("write", "team-c") and alice.can("read", "team-c")
    assert alice.can("infer", "shop") and not alice.can("read", "shop")
    assert all(alice.can("infer", ns) for ns in ("team-a", "team-b", "team-c"))  # any role may call models
    assert not alice.can("read", "elsewhere") and not alice.can("read", ALL)
    assert alice.namespaces("read") == {"team-a", "team-b", "team-c"}
    assert alice.namespaces("write") == {"team-b", "team-c"}
    assert alice.namespaces("admin") == {"team-c"}
    assert not alice.is_admin_everywhere


def test_a_star_grant_covers_every_namespace() -> None:
    root = Principal("root", grants={ALL: "admin"})
    assert root.can("admin", "anything") and root.can("admin", ALL) and root.is_admin_everywhere
    assert root.namespaces("read") is None and root.namespaces("admin") is None
    reader = Principal("reader", grants={ALL: "viewer", "team-a": "admin"})
    assert reader.can("read", "zzz") and not reader.can("write", "zzz")
    assert reader.can("admin", "team-a")  # the namespace's own grant wins over "*"
    assert reader.namespaces("read") is None and reader.namespaces("admin") == {"team-a"}


def test_service_principals_hold_no_user_rights() -> None:
    agent = Principal("r0", kind="agent", grants={ALL: "admin"}, agent=AgentIdentity("a", "mlserver", 0))
    gateway = Principal("gw", kind="gateway", grants={ALL: "admin"})
    for p in (agent, gateway):
        assert p.role_in("a") is None and not p.can("read", "a") and not p.can("admin", ALL)
        assert p.namespaces("read") == frozenset()


def test_secrets_are_the_admin_right() -> None:
    assert right_for("Secret", "read") == "admin" and right_for("Secret", "write") == "admin"
    assert right_for("Model", "read") == "read" and right_for("Model", "write") == "write"
    assert right_for("Secret", "infer") == "infer"


def test_grants_and_agent_identities_are_checked() -> None:
    assert check_grants({"a": "viewer"}) == {"a": "viewer"}
    with pytest.raises(ValueError, match="role 'owner' for namespace a"):
        check_grants({"a": "owner"})
    assert str(AgentIdentity.parse("team-a/mlserver/2")) == "team-a/mlserver/2"
    for bad in ("team-a/mlserver", "a/b/c", "/b/0", "a//0"):
        with pytest.raises(ValueError, match="NAMESPACE/SERVER/REPLICA"):
            AgentIdentity.parse(bad)


def test_bearer_header_parsing() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer   abc  ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer") is None and bearer("Bearer ") is None
    assert bearer(None) is None and bearer("") is None


def test_tokens_and_hashes() -> None:
    a, b = new_token(), new_token()
    assert a != b and looks_like_token(a) and not looks_like_token("hello")
    assert hash_token(a) == hash_token(a) and len(hash_token(a)) == 64 and a not in hash_token(a)


def test_durations() -> None:
    assert parse_duration("30d") == 30 * 86400 and parse_duration("12h") == 43200
    assert parse_duration("90m") == 5400 and parse_duration("45s") == 45 and parse_duration("45") == 45
    assert parse_duration("2w") == 14 * 86400 and parse_duration(1.5) == 1.5
    for bad in ("", "soon", "-1h", "0s", "1y"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_registry_create_verify_revoke() -> None:
    reg = TokenRegistry(None)
    revoked: list[str] = []
    changes: list[int] = []
    reg.on_revoke.append(revoked.append)
    reg.on_change.append(lambda: changes.append(1))
    secret = reg.create("alice", grants={"team-a": "editor"}, created_by="root")
    p = reg.verify(secret)
    assert p is not None and p.name == "alice" and p.grants == {"team-a": "editor"} and p.kind == "user"
    assert reg.verify("berth_not-a-token-at-all-xxxxxxxx") is None and reg.verify(None) is None
    info = reg.get("alice")
    assert info.created_by == "root" and info.namespaces() == {"team-a"}
    assert secret not in repr(reg.all()) and hash_token(secret) not in repr(info.as_dict())
    with pytest.raises(Conflict):
        reg.create("alice", grants={"team-a": "viewer"})
    with pytest.raises(InvalidInput, match="needs a role"):
        reg.create("nobody")
    with pytest.raises(InvalidInput):
        reg.create("Bad_Name", grants={"a": "viewer"})
    with pytest.raises(InvalidInput, match="role 'root'"):
        reg.create("bob", grants={"a": "root"})
    assert reg.valid("alice")
    reg.revoke("alice")
    assert revoked == ["alice"] and len(changes) == 2
    assert reg.verify(secret) is None and not reg.valid("alice")
    assert reg.get("alice").revoked is not None
    with pytest.raises(NotFound):
        reg.revoke("nobody")


def test_registry_expiry_and_ensure() -> None:
    clock = Clock()
    reg = TokenRegistry(None, clock=clock)
    secret = reg.create("short", grants={"a": "viewer"}, expires_in=60)
    assert reg.verify(secret) is not None and reg.valid("short")
    clock.now += 61
    assert reg.verify(secret) is None and not reg.valid("short")
    with pytest.raises(InvalidInput, match="future"):
        reg.create("past", grants={"a": "viewer"}, expires_in=-1)
    first, second = new_token(), new_token()
    reg.ensure("admin", first, grants={ALL: "admin"})
    reg.ensure("admin", first, grants={ALL: "admin"})  # idempotent
    assert reg.verify(first) is not None
    reg.ensure("admin", second, grants={ALL: "admin"})  # replaced: the old one no longer holds
    assert reg.verify(first) is None and reg.verify(second) is not None
    reg.revoke("admin")
    reg.ensure("admin", second, grants={ALL: "admin"})  # berth up's admin comes back on restart
    assert reg.verify(second) is not None


def test_registry_kinds_and_hashes() -> None:
    reg = TokenRegistry(None)
    gw = reg.create("gw", kind="gateway")
    agent = reg.create("r0", kind="agent", agent=AgentIdentity("team-a", "mlserver", 0))
    user = reg.create("u", grants={"team-a": "inference"})
    assert reg.get("gw").namespaces() == {ALL} and reg.get("r0").namespaces() == {"team-a"}
    p = reg.verify(agent)
    assert p is not None and p.kind == "agent" and p.agent == AgentIdentity("team-a", "mlserver", 0)
    assert reg.hashes(lambda p: p.kind == "gateway") == [hash_token(gw)]
    assert reg.hashes(lambda p: p.can("infer", "team-a")) == [hash_token(user)]
    reg.revoke("u")
    assert reg.hashes(lambda p: p.can("infer", "team-a")) == []


def test_audit_records_filter_by_namespace_time_and_limit() -> None:
    clock = Clock()
    reg = TokenRegistry(None, clock=clock)
    for i, ns in enumerate(["a", "b", "", "a", "c"]):
        clock.now += 10
        reg.audit(principal=f"p{i}", source="127.0.0.1", verb="apply", kind="Model", namespace=ns, name=f"m{i}",
                  outcome="ok", reason="created")
    everything = reg.audit_records(namespaces=None)
    assert [r["name"] for r in everything] == ["m0", "m1", "m2", "m3", "m4"]  # oldest first
    assert set(everything[0]) == {"time", "principal", "source", "verb", "kind", "namespace", "name", "outcome",
                                  "reason"}
    assert [r["name"] for r in reg.audit_records(namespaces=frozenset({"a"}))] == ["m0", "m3"]
    assert [r["name"] for r in reg.audit_records(namespaces=frozenset({"a", "c"}))] == ["m0", "m3", "m4"]
    assert reg.audit_records(namespaces=frozenset()) == []
    assert [r["name"] for r in reg.audit_records(namespaces=None, since=clock.now - 15)] == ["m3", "m4"]
    assert [r["name"] for r in reg.audit_records(namespaces=None, limit=2)] == ["m3", "m4"]  # the newest two
    assert [r["name"] for r in reg.audit_records(namespaces=frozenset({"a", "b"}), limit=1)] == ["m3"]


def test_audit_survives_reopening(tmp_path) -> None:  # type: ignore[no-untyped-def]
    reg = TokenRegistry(tmp_path / "auth.db")
    secret = reg.create("alice", grants={"a": "viewer"})
    reg.audit(principal="alice", source="127.0.0.1", verb="delete", namespace="a", outcome="ok")
    reg.close()
    assert oct((tmp_path / "auth.db").stat().st_mode & 0o777) == "0o600"
    again = TokenRegistry(tmp_path / "auth.db")
    assert again.verify(secret) is not None
    assert [r["verb"] for r in again.audit_records(namespaces=None)] == ["delete"]
    assert secret not in (tmp_path / "auth.db").read_bytes().decode("latin-1")
