"""Per-namespace quotas against a real control plane: only an admin of every namespace sets them (tenants read theirs),
an apply over a quota is refused whole (naming namespace, field and limit) and changes nothing, and tenants
cannot get around them (raise their own quota, split an apply, reach the quota through the resource API)."""

from __future__ import annotations

import json

import httpx
import pytest
import yaml

from berth.client.http import BerthClient
from berth.client.quotas import get_quota, set_quota
from berth.control.quotas import quota_problems, usage
from berth.errors import Forbidden, InvalidInput, InvalidManifest
from tests.support.servers import ControlPlane, auth_headers
from tests.support.tenants import SELDON, model, two_tenants


def server(name: str, ns: str, replicas: int = 1, **spec: object) -> dict:
    return {"apiVersion": SELDON, "kind": "Server", "metadata": {"name": name, "namespace": ns},
            "spec": {"serverConfig": "mlserver", "replicas": replicas, **spec}}


def test_usage_and_problems_are_pure() -> None:
    docs = [model("a", "t"), server("s", "t", 2, maxReplicas=5), server("u", "t")]
    assert usage(docs) == {"models": 1, "servers": 2, "replicas": 6}
    hard = {"models": 1, "servers": None, "replicas": 6}
    assert quota_problems("t", hard, docs, [model("a", "t", memory="1Mi")]) == []  # an update adds nothing
    [problem] = quota_problems("t", hard, docs, [model("b", "t")])
    assert problem.startswith("namespace t: quota models: the limit is 1, this apply would make 2 (now 1; "
                              "applying Model/b)")
    # already over a lowered limit: what does not raise the count passes, what raises it does not
    assert quota_problems("t", {"models": 0}, docs, [model("a", "t", memory="2Mi")]) == []
    assert quota_problems("t", {"replicas": 6}, docs, [server("u", "t", 2)])  # 6 -> 7


def test_admin_sets_quota_and_over_quota_apply_changes_nothing(control: ControlPlane, cli) -> None:
    admin = BerthClient(control.url)
    admin.apply([model("m1", "team-a"), server("s1", "team-a", 2)])
    r = cli("--server", control.url, "quota", "set", "-n", "team-a", "--models", "2", "--servers", "1",
            "--replicas", "3", "-o", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == {"namespace": "team-a", "hard": {"models": 2, "servers": 1, "replicas": 3},
                                 "used": {"models": 1, "servers": 1, "replicas": 2}}
    r = cli("--server", control.url, "quota", "get", "-n", "team-a", "-o", "yaml")
    assert yaml.safe_load(r.out)["hard"]["replicas"] == 3
    r = cli("--server", control.url, "quota", "get", "-n", "team-a")
    assert r.out.split("\n")[1].split() == ["models", "1", "2"]
    before = admin.list("Model", "team-a")
    # two new models in one apply (one would fit): the whole apply is refused, dry-run included
    for dry in (False, True):
        with pytest.raises(InvalidManifest) as err:
            admin.apply([model("m2", "team-a"), model("m3", "team-a")], dry_run=dry)
        assert err.value.problems[0].startswith("namespace team-a: quota models: the limit is 2, this apply "
                                                "would make 3 (now 1; applying Model/m2, Model/m3)")
        assert "berth quota set -n team-a --models N" in err.value.problems[0]
    assert admin.list("Model", "team-a") == before
    # a scale-up past the replicas limit, also through maxReplicas
    with pytest.raises(InvalidManifest, match="quota replicas: the limit is 3, this apply would make 4"):
        admin.apply([server("s1", "team-a", 2, maxReplicas=4)])
    with pytest.raises(InvalidManifest, match="quota servers: the limit is 1"):
        admin.apply([server("s2", "team-a", 1)])
    admin.apply([model("m2", "team-a"), server("s1", "team-a", 3)])  # up to the limits: fine
    assert admin.get("Server", "team-a", "s1")["spec"]["replicas"] == 3
    # other namespaces are not limited by team-a's quota
    admin.apply([model(f"x{i}", "team-b") for i in range(5)])
    # the CLI shows the refusal as one clear line and exits non-zero
    r = cli("--server", control.url, "apply", "-f", "-", stdin=yaml.safe_dump(model("m9", "team-a")))
    assert r.code != 0 and "quota models: the limit is 2" in r.err
    # lifting a limit
    r = cli("--server", control.url, "quota", "set", "-n", "team-a", "--models", "none")
    assert r.code == 0 and "models=none" in r.out and "servers=1" in r.out
    admin.apply([model("m9", "team-a")])
    records = [a for a in admin.audit("team-a") if a["kind"] == "ResourceQuota"]
    assert [a["reason"] for a in records] == ["models=2, servers=1, replicas=3", "models=none, servers=1, replicas=3"]
    assert all(a["verb"] == "set" and a["outcome"] == "ok" and a["principal"] == "admin" for a in records)
    refused = [a for a in admin.audit("team-a") if a["verb"] == "apply" and a["outcome"] == "failed"]
    assert any("namespace team-a: quota models;" in a["reason"] for a in refused)


def test_tenants_cannot_raise_or_dodge_their_quota(control: ControlPlane) -> None:
    t = two_tenants(control)
    set_quota(t.admin, "team-a", {"models": 1, "servers": None, "replicas": None})
    url = f"{control.url}/api/v1/namespaces/team-a/quota"
    body = {"models": 1000, "servers": None, "replicas": None}
    for who in ("admin-a", "editor-a", "viewer-a", "admin-b", "infer-a"):
        with pytest.raises(Forbidden):
            set_quota(t.client(who), "team-a", body)
    for who in ("admin-a", "editor-a", "viewer-a"):  # a tenant reads its own quota
        assert get_quota(t.client(who), "team-a")["hard"]["models"] == 1
    for who in ("admin-b", "infer-a"):  # nobody else does, and learns nothing of it
        with pytest.raises(Forbidden) as err:
            get_quota(t.client(who), "team-a")
        assert "models" not in str(err.value)
    assert httpx.put(url, json=body).status_code == 401
    assert httpx.put(url, json=body, headers=auth_headers("not-a-token")).status_code == 401
    assert get_quota(t.admin, "team-a")["hard"]["models"] == 1
    # the quota is no resource: not readable, writable or deletable through the resource API
    editor = t.client("admin-a")
    for call in (lambda: editor.get("ResourceQuota", "team-a", "berth"),
                 lambda: editor.delete("ResourceQuota", "team-a", "berth")):
        with pytest.raises(InvalidInput, match="unknown resource type 'resourcequotas'"):
            call()
    with pytest.raises(InvalidManifest):
        editor.apply([{"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "berth",
                                                                              "namespace": "team-a"},
                       "spec": {"hard": {"models": 1000}}}])
    # one model at a time does not get past it either, nor does a rename
    with pytest.raises(InvalidManifest, match="namespace team-a: quota models: the limit is 1"):
        editor.apply([model("model-a2", "team-a")])
    assert [m["metadata"]["name"] for m in editor.list("Model", "team-a")] == ["model-a"]
    # each refused call is audited (the route needs admin of every namespace, so the record is of no namespace)
    refused = [a for a in t.admin.audit() if a["outcome"] == "forbidden" and a["namespace"] == ""]
    assert {a["principal"] for a in refused} >= {"admin-a", "editor-a", "viewer-a", "admin-b", "infer-a"}
    refused_reads = [a for a in t.admin.audit("team-a") if a["outcome"] == "forbidden" and a["verb"] == "get"]
    assert {a["principal"] for a in refused_reads} >= {"admin-b", "infer-a"}


@pytest.mark.parametrize("bad", [{"models": -1}, {"models": True}, {"models": "5"}, {"models": 10**12},
                                 {"pods": 3}, [1], "x"])
def test_bad_quota_bodies_are_refused(control: ControlPlane, bad: object) -> None:
    admin = BerthClient(control.url)
    with pytest.raises(InvalidInput) as err:
        set_quota(admin, "team-a", bad)  # type: ignore[arg-type]
    assert "quota" in err.value.message
    assert all(v is None for v in get_quota(admin, "team-a")["hard"].values())
