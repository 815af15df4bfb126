"""Fuzz the control API (bounded): malformed, wrong-typed, oversized and unknown input answers 4xx JSON
with a stable code, never 5xx, and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.servers import ControlPlane, auth_headers

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
kinds = st.sampled_from(["Model", "Server", "Experiment", "Pipeline", "SeldonRuntime", "ServerConfig", "Secret",
                         "Widget", "", 7])
printable = st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\x7f")
names = st.one_of(st.text(printable, max_size=30), st.sampled_from(["ok-name", "../etc", "a/b", "UPPER", "x" * 300]))
documents = st.fixed_dictionaries({
    "apiVersion": st.sampled_from(["mlops.seldon.io/v1alpha1", "v1", "nope"]),
    "kind": kinds,
    "metadata": st.one_of(json_values, st.fixed_dictionaries({"name": names, "namespace": names})),
    "spec": json_values,
})
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(documents, max_size=3).map(lambda d: json.dumps({"documents": d}).encode()),
)
CODES = {"InvalidInput", "InvalidManifest", "InvalidName", "UnknownKind", "PayloadTooLarge", "NotFound",
         "MethodNotAllowed", "Conflict"}


def _check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        body = r.json()
        assert body["code"] in CODES and body["message"], body


def test_fuzz_control_api(tmp_path: Path) -> None:
    with ControlPlane(tmp_path, max_body=64 * 1024) as cp, httpx.Client(base_url=cp.url, timeout=10,
                                                                            headers=auth_headers()) as http:
        before = http.get("/healthz").json()["revision"]
        accepted: list[dict] = []

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=bodies, ctype=st.sampled_from(["application/json", "application/yaml", "text/plain"]))
        def apply_garbage(body: bytes, ctype: str) -> None:
            r = http.post("/api/v1/apply", content=body, headers={"Content-Type": ctype})
            _check(r)
            if r.status_code == 200:
                accepted.extend(r.json()["results"])

        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
        @given(kind=st.text(printable, max_size=15), ns=names, name=names, since=st.text(printable, max_size=5))
        def read_garbage(kind: str, ns: str, name: str, since: str) -> None:
            for path in (f"/api/v1/{kind}", f"/api/v1/namespaces/{ns}/{kind}/{name}"):
                _check(http.get(path, params={"namespace": ns, "selector": name}))
            _check(http.delete(f"/api/v1/namespaces/{ns}/models/{name}"))
            if not since.isdigit():  # a valid revision would open a stream; an invalid one is refused
                r = http.get("/api/v1/watch", params={"since": since})
                _check(r)
                assert r.status_code == 400

        apply_garbage()
        read_garbage()
        big = json.dumps({"documents": [{"kind": "Model", "pad": "x" * 100_000}]}).encode()
        r = http.post("/api/v1/apply", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "PayloadTooLarge"
        # the store holds exactly what was accepted: rejected input wrote nothing
        stored = {(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"])
                  for plural in ("models", "servers", "experiments", "pipelines", "seldonruntimes",
                                 "serverconfigs", "secrets")
                  for d in http.get(f"/api/v1/{plural}").json()["items"]}
        assert stored == {(a["kind"], a["namespace"], a["name"]) for a in accepted}
        if not accepted:
            assert http.get("/healthz").json()["revision"] == before
