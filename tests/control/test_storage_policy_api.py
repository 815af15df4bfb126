"""The storage policy at apply time, against a real control plane: a hostile tenant's Models and Secrets are
refused whole, naming the rule, and nothing is written; the fixed rules hold without a policy file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from berth.client.http import BerthClient
from berth.control.storage_policy import load_policy
from berth.errors import ConfigError, InvalidManifest
from tests.support.servers import ControlPlane
from tests.support.tenants import model

POLICY = {"default": {"schemes": ["s3"], "s3Endpoints": ["http://127.0.0.1:9"], "buckets": ["shared-*"]},
          "namespaces": {"team-a": {"schemes": ["s3", "file"], "fileRoots": ["/srv/team-a"]}}}


def secret(name: str, ns: str, **values: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "stringData": values}


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[ControlPlane]:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    plane = ControlPlane(tmp_path / "data")
    plane.opts.storage_policy = path
    with plane:
        yield plane


def _refused(client: BerthClient, docs: list[dict]) -> list[str]:
    with pytest.raises(InvalidManifest) as err:
        client.apply(docs)
    return err.value.problems


def test_hostile_models_and_secrets_are_refused_naming_the_rule(strict: ControlPlane) -> None:
    admin = BerthClient(strict.url)
    keys = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    admin.apply([secret("ok", "team-a", **keys, AWS_ENDPOINT_URL="http://127.0.0.1:9")])
    cases = {
        "file:///etc/shadow": "local path /etc/shadow is outside namespaces.team-a.fileRoots [/srv/team-a]",
        "/srv/team-a/../team-b/m": "is outside namespaces.team-a.fileRoots [/srv/team-a]",
        "file:///dev/zero": "device and kernel files are never read",
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a cloud metadata address",
        "https://example.com/m.joblib":
            "scheme https is not allowed in namespace team-a by namespaces.team-a.schemes [s3, file]",
        "s3://private-bucket/m": "bucket private-bucket is not allowed in namespace team-a by default.buckets",
    }
    for uri, why in cases.items():
        [problem] = _refused(admin, [model("evil", "team-a", storageUri=uri, secretName="ok")])
        assert problem.startswith(f"Model/team-a/evil: spec.storageUri {uri}: refused by the storage policy: ")
        assert why in problem and ("policy.yaml" in problem or "fixed rules" in problem)
    # a model without secretName may not use the agent's own credentials (default: no ambient credentials)
    [problem] = _refused(admin, [model("evil", "team-a", storageUri="s3://shared-x/m")])
    assert "default.ambientCredentials (omitted: false)" in problem
    # a Secret naming an endpoint outside the policy, or a metadata one, is refused when applied, with its Model
    remote = yaml.safe_dump({"type": "s3", "name": "s3", "parameters": {
        "access_key_id": "a", "secret_access_key": "b", "endpoint": "http://169.254.169.254"}})
    problems = _refused(admin, [secret("evil", "team-a", s3=remote),
                                model("evil", "team-a", storageUri="s3://shared-x/m", secretName="evil")])
    assert problems[0].startswith("Secret/team-a/evil: refused by the storage policy: endpoint 169.254.169.254")
    assert problems[1].startswith("Model/team-a/evil: spec.storageUri s3://shared-x/m: refused")
    [problem] = _refused(admin, [secret("evil", "team-b", **keys, AWS_ENDPOINT_URL="http://10.1.2.3:9000")])
    assert "S3 endpoint http://10.1.2.3:9000 is not allowed in namespace team-b by default.s3Endpoints" in problem
    # nothing of it was written; what the policy allows is
    assert admin.list("Model", "team-a") == [] and [s["metadata"]["name"] for s in admin.list("Secret")] == ["ok"]
    admin.apply([model("fine", "team-a", storageUri="s3://shared-x/m", secretName="ok"),
                 model("local", "team-a", storageUri="/srv/team-a/iris")])
    assert len(admin.list("Model", "team-a")) == 2
    refused = [a for a in admin.audit("team-a") if a["outcome"] == "failed" and a["verb"] == "apply"]
    assert refused and all("storage policy" in a["reason"] for a in refused)


def test_fixed_rules_without_a_policy_file(control: ControlPlane) -> None:
    admin = BerthClient(control.url)
    for uri in ("file:///dev/zero", "/proc/self/environ", "http://[fe80::1]:80/m", "http://metadata.google.internal/x"):
        [problem] = _refused(admin, [model("evil", "default", storageUri=uri)])
        assert "fixed rules" in problem and "the built-in storage policy" not in problem
    admin.apply([model("ok", "default", storageUri="/tmp/iris"), model("s3", "default", storageUri="s3://b/m")])


def test_a_bad_policy_file_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    for text, why in (("default: {schemes: [ftp]}", "default.schemes: unknown scheme(s) ftp"),
                      ("default: [", "not valid YAML"), ("namespaces: {a: {fileRoot: []}}", "unknown key(s) fileRoot")):
        path.write_text(text)
        with pytest.raises(ConfigError, match="--storage-policy") as err:
            load_policy(path)
        assert why in err.value.message
    with pytest.raises(ConfigError, match="cannot read it"):
        load_policy(tmp_path / "missing.yaml")


def test_berth_up_and_control_refuse_a_bad_policy_before_starting(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "policy.yaml"
    bad.write_text("namespaces:\n  team-a: {ambientCredentials: maybe}\n")
    umask = os.umask(0o022)
    os.umask(umask)
    for args in (("up", "--data-dir", str(tmp_path / "up")),
                 ("control", "--data-dir", str(tmp_path / "cp"), "--store", ":memory:", "--port", "1")):
        try:
            r = cli(*args, "--storage-policy", str(bad))
        finally:
            os.umask(umask)  # `berth control` narrows the process's umask before it starts
        assert r.code == 1, r.out + r.err
        assert r.err.strip() == (f"error: --storage-policy {bad}: namespaces.team-a.ambientCredentials: expected "
                                 "true or false, got 'maybe'")
    assert not (tmp_path / "up" / "logs").exists()  # nothing was started
