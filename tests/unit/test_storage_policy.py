"""The storage policy's pure logic: parsing, inheritance, the rules and the fixed rules, with hostile inputs."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.adapters.storage_target import describe, secret_endpoints
from berth.resources.policy import (
    PERMISSIVE,
    PolicyError,
    Target,
    endpoint_refusal,
    host_problem,
    normalized,
    parse_policy,
    refusal,
)
from berth.wire.agent import ModelSource

POLICY = parse_policy({
    "default": {"schemes": ["s3", "gs"], "s3Endpoints": ["aws", "http://minio.internal:9000"],
                "buckets": ["models-*"]},
    "namespaces": {"team-a": {"schemes": ["s3", "file"], "fileRoots": ["/srv/models/team-a/"],
                              "ambientCredentials": True},
                   "team-b": {"s3Endpoints": ["*"]}},
}, "policy.yaml")


def target(uri: str, secret: dict[str, str] | None = None) -> Target:
    return describe(ModelSource(storage_uri=uri, secret_name="s" if secret is not None else None, secret=secret))


MINIO = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "v", "AWS_ENDPOINT_URL": "http://minio.internal:9000"}


def test_parse_errors_name_the_field() -> None:
    cases = [({"default": {"schemes": ["ftp"]}}, "default.schemes: unknown scheme(s) ftp"),
             ({"default": {"fileRoots": ["models"]}}, "default.fileRoots: 'models' is not an absolute path"),
             ({"namespaces": {"a": {"ambientCredentials": "yes"}}}, "namespaces.a.ambientCredentials: expected"),
             ({"namespaces": {"a": {"buckets": "x"}}}, "namespaces.a.buckets: expected a list of strings"),
             ({"default": {"bukets": []}}, "default: unknown key(s) bukets"),
             ({"defaults": {}}, "unknown key(s) defaults"),
             ({"default": {"s3Endpoints": ["http://:9"]}}, "default.s3Endpoints: 'http://:9' is not an endpoint"),
             ([1], "expected a mapping")]
    for doc, text in cases:
        with pytest.raises(PolicyError, match=None) as err:
            parse_policy(doc, "p.yaml")
        assert text in str(err.value), (doc, str(err.value))


def test_rules_and_inheritance() -> None:
    ok = target("s3://models-iris/v1", MINIO)
    assert refusal(POLICY, "team-c", ok) is None
    assert refusal(POLICY, "team-a", ok) is None  # schemes from team-a, endpoints and buckets from default
    assert refusal(POLICY, "team-a", target("/srv/models/team-a/iris")) is None
    # each refusal names the rule and where it is written
    assert refusal(POLICY, "team-c", target("/srv/models/team-a/iris")) == (
        "scheme file is not allowed in namespace team-c by default.schemes [s3, gs] of policy.yaml")
    why = refusal(POLICY, "team-a", target("file:///srv/models/team-a/../team-b/x"))
    assert why == ("local path /srv/models/team-a/../team-b/x is outside namespaces.team-a.fileRoots "
                   "[/srv/models/team-a] of policy.yaml (namespace team-a)")
    assert "not absolute" in (refusal(POLICY, "team-a", target("models/iris")) or "")
    assert "not absolute" in (refusal(POLICY, "team-a", target("~/iris")) or "")
    assert refusal(POLICY, "team-c", target("s3://other/v1", MINIO)) == (
        "bucket other is not allowed in namespace team-c by default.buckets [models-*] of policy.yaml")
    evil = {**MINIO, "AWS_ENDPOINT_URL": "http://10.0.0.7:9000"}
    assert "S3 endpoint http://10.0.0.7:9000 is not allowed in namespace team-c by default.s3Endpoints" in (
        refusal(POLICY, "team-c", target("s3://models-x/v1", evil)) or "")
    assert refusal(POLICY, "team-b", target("s3://models-x/v1", evil)) is None  # team-b: any endpoint
    # ambient credentials: off unless granted (team-a); AWS's own endpoint is "aws"
    assert "without secretName may not use the agent host's own S3 credentials in namespace team-c " \
           "(default.ambientCredentials (omitted: false) of policy.yaml)" in (
               refusal(POLICY, "team-c", target("s3://models-x/v1")) or "")
    assert refusal(POLICY, "team-a", target("s3://models-x/v1")) is None
    # the same endpoint written differently is the same endpoint
    same = {**MINIO, "AWS_ENDPOINT_URL": "HTTP://Minio.Internal:9000/"}
    assert refusal(POLICY, "team-c", target("s3://models-x/v1", same)) is None


def test_a_file_without_roots_allows_no_local_path_and_permissive_allows_them() -> None:
    strict = parse_policy({"default": {}}, "p.yaml")
    assert "default.fileRoots (omitted: no local paths)" in (refusal(strict, "x", target("/srv/m")) or "")
    assert refusal(PERMISSIVE, "x", target("/srv/m")) is None
    assert refusal(PERMISSIVE, "x", target("relative/m")) is None
    assert refusal(PERMISSIVE, "x", target("s3://b/p")) is None  # built-in: ambient credentials allowed


HOSTILE_FILES = ["/dev/zero", "file:///dev/zero", "file:///proc/self/environ", "/sys/kernel", "//dev/zero",
                 "/srv/../dev/zero", "file:///tmp/../proc/1/mem", "file://localhost/dev/random", "/dev"]
HOSTILE_HTTP = ["http://169.254.169.254/latest/meta-data/iam/", "http://[fe80::1]/x", "http://metadata.google.internal/",
                "http://METADATA.GOOGLE.INTERNAL./x", "http://[::ffff:169.254.169.254]/", "http://169.254.1.1:80/",
                "https://100.100.100.200/", "http://0.0.0.0:8080/", "http://[fd00:ec2::254]/"]


@pytest.mark.parametrize("uri", HOSTILE_FILES + HOSTILE_HTTP)
def test_fixed_rules_hold_even_without_a_file(uri: str) -> None:
    for policy, ns in ((PERMISSIVE, "default"), (POLICY, "team-b"), (POLICY, "team-a")):
        why = refusal(policy, ns, target(uri))
        assert why is not None and "fixed rules" in why, (uri, why)


def test_endpoints_in_secrets_are_judged() -> None:
    remote = ('{"type": "s3", "name": "s3", "parameters": {"access_key_id": "a", "secret_access_key": "b", '
              '"endpoint": "http://169.254.169.254"}}')
    found = secret_endpoints({"s3": remote, "AZURE_STORAGE_CONNECTION_STRING":
                              "AccountName=a;AccountKey=b;BlobEndpoint=http://[fe80::2]:10000/a"})
    assert ("s3", "http://169.254.169.254") in found and ("az", "http://[fe80::2]:10000/a") in found
    for scheme, url in found:
        assert "fixed rules" in (endpoint_refusal(PERMISSIVE, "x", scheme, url) or "")
    # a model whose Secret names a metadata endpoint through an rclone remote is refused too
    assert "169.254.169.254" in (refusal(PERMISSIVE, "x", target("s3://b/p", {"s3": remote})) or "")
    assert endpoint_refusal(POLICY, "team-c", "s3", "http://minio.internal:9000") is None
    assert "not allowed" in (endpoint_refusal(POLICY, "team-c", "s3", "http://127.0.0.1:9000") or "")


segment = st.sampled_from(["..", ".", "", "srv", "models", "team-a", "team-b", "dev", "proc", "x"])


@given(st.lists(segment, max_size=8))
def test_a_path_allowed_under_a_root_stays_under_it(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    why = refusal(POLICY, "team-a", target(path))
    norm = posixpath.normpath("/" + posixpath.normpath(path).lstrip("/"))
    if why is None:
        assert norm == "/srv/models/team-a" or norm.startswith("/srv/models/team-a/")
    assert normalized(path).startswith("/") and ".." not in normalized(path).split("/")


octet = st.integers(0, 255)


@given(octet, octet)
def test_every_link_local_address_is_refused(a: int, b: int) -> None:
    assert host_problem(f"169.254.{a}.{b}") is not None
    assert refusal(PERMISSIVE, "x", target(f"http://169.254.{a}.{b}:8080/m.joblib")) is not None


@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))
def test_bucket_patterns(bucket: str) -> None:
    why = refusal(POLICY, "team-c", target(f"s3://{bucket}/p", MINIO))
    assert (why is None) == bucket.startswith("models-")
