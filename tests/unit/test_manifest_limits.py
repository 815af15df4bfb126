"""Manifest limits: aliases (billion laughs), document size and count, replicas bounds; the control API's
apply refuses the same over HTTP."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest
import yaml

from berth.errors import InvalidManifest
from berth.resources.kinds import MAX_DOCUMENT_BYTES, MAX_DOCUMENTS, MAX_INPUT_BYTES, MAX_REPLICAS
from berth.resources.manifest import load_paths, parse_text, read_yaml
from tests.support.servers import ControlPlane, auth_headers

BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))


def model(name: str = "x", **spec: object) -> str:
    return yaml.safe_dump({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": {"name": name},
                           "spec": {"storageUri": "/models/x", **spec}})


def server(name: str = "s", **spec: object) -> str:
    return yaml.safe_dump({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server", "metadata": {"name": name},
                           "spec": {"serverConfig": "mlserver", **spec}})


def problems(text: str, source: str = "m.yaml") -> list[str]:
    with pytest.raises(InvalidManifest) as exc:
        parse_text(text, source)
    return exc.value.problems


def test_billion_laughs_is_refused_fast_and_small(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(BOMB)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(InvalidManifest) as exc:
            load_paths([str(tmp_path / "bomb.yaml")])
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert exc.value.problems == [f"{tmp_path / 'bomb.yaml'}: line 2: YAML aliases (*a) are not accepted in "
                                  "manifests; write the value out"]
    assert took < 0.1, took
    assert peak < 1 << 20, peak  # nothing expanded


def test_every_alias_is_refused_an_anchor_alone_is_not() -> None:
    text = model().replace("storageUri: /models/x", "storageUri: &uri /models/x\n  schemaUri: *uri")
    assert problems(text) == ["m.yaml: line 7: YAML aliases (*uri) are not accepted in manifests; write the value out"]
    anchored = model().replace("storageUri: /models/x", "storageUri: &uri /models/x")
    assert parse_text(anchored, "m.yaml").documents[0].body["spec"]["storageUri"] == "/models/x"


def test_a_document_over_the_size_limit_is_refused_naming_it() -> None:
    big = model(name="big", storageUri="/m/" + "x" * MAX_DOCUMENT_BYTES)
    found = problems(model() + "---\n" + big)
    assert len(found) == 1 and found[0].startswith("m.yaml: line 7: document 2 is ")
    assert found[0].endswith("characters, above the limit of 1 MiB per document")


def test_more_documents_than_the_limit_are_refused() -> None:
    assert problems("---\na: 1\n" * (MAX_DOCUMENTS + 1)) == [
        f"m.yaml: line {2 * MAX_DOCUMENTS + 1}: more than 1000 documents; the limit is 1000 per input (split the set)"]
    items = [yaml.safe_load(model(name=f"m{i}")) for i in range(MAX_DOCUMENTS + 1)]
    found = problems(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    assert found == ["m.yaml#1: more than 1000 documents in this load (List items count one by one); the limit is "
                     "1000 (split the set)"]
    assert len(read_yaml("---\na: 1\n" * MAX_DOCUMENTS, "m.yaml")) == MAX_DOCUMENTS  # exactly the limit passes


def test_an_input_over_the_size_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    assert problems("a: " + "x" * MAX_INPUT_BYTES) == [
        f"m.yaml: {MAX_INPUT_BYTES + 3} characters, above the limit of 10 MiB per input (split the set)"]
    with pytest.raises(InvalidManifest) as exc:
        load_paths(["/dev/zero"])  # endless: read up to the limit, then refused
    assert exc.value.problems == ["/dev/zero: more than 10 MiB, above the limit of 10 MiB per input (split the set)"]


@pytest.mark.parametrize("field", ["replicas", "minReplicas", "maxReplicas"])
def test_replicas_above_the_limit_are_refused_naming_the_field(field: str) -> None:
    assert problems(model(**{field: 1_000_000_000})) == [
        f"m.yaml#1 Model/x: spec.{field}: 1000000000 is above the limit of {MAX_REPLICAS}"]
    assert problems(server(**{field: MAX_REPLICAS + 1})) == [
        f"m.yaml#1 Server/s: spec.{field}: 1001 is above the limit of {MAX_REPLICAS}"]
    assert problems(model(**{field: -1})) == [f"m.yaml#1 Model/x: spec.{field}: -1 is below the minimum of 0"]
    parse_text(model(**{field: MAX_REPLICAS}) + "---\n" + server(**{field: MAX_REPLICAS}), "m.yaml")


def test_read_yaml_keeps_syntax_errors_apart_from_limits() -> None:
    with pytest.raises(yaml.YAMLError):
        read_yaml("a: [1\n", "body")
    assert read_yaml("---\na: 1\n---\n", "body") == [{"a": 1}]


def test_the_api_refuses_the_same_over_http(control: ControlPlane) -> None:
    url = control.url + "/api/v1/apply"
    yaml_headers = {"Content-Type": "application/yaml", **auth_headers()}
    started = time.perf_counter()
    r = httpx.post(url, content=BOMB, headers=yaml_headers, timeout=10)
    took = time.perf_counter() - started
    assert r.status_code == 422, r.text
    assert "request body: line 2: YAML aliases (*a) are not accepted in manifests" in r.text
    assert took < 1.0, took  # the refusal itself is ~ms; this includes the HTTP round trip
    r = httpx.post(url, content=model(replicas=1_000_000_000), headers=yaml_headers, timeout=10)
    assert r.status_code == 422 and "Model/x: spec.replicas: 1000000000 is above the limit of 1000" in r.text
    r = httpx.post(url, json={"documents": [yaml.safe_load(server(maxReplicas=5000))]}, headers=auth_headers(),
                   timeout=10)
    assert r.status_code == 422 and "Server/s: spec.maxReplicas: 5000 is above the limit of 1000" in r.text
    r = httpx.post(url, json={"documents": [{}] * (MAX_DOCUMENTS + 1)}, headers=auth_headers(), timeout=10)
    assert r.status_code == 422 and "request body: 1001 documents, above the limit of 1000 per apply" in r.text
    r = httpx.post(url, content="a: [1\n", headers=yaml_headers, timeout=10)
    assert r.status_code == 400 and "not valid YAML" in r.text  # syntax errors: as before
    r = httpx.post(url, content=model(replicas=2), headers=yaml_headers, params={"dryRun": "true"}, timeout=10)
    assert r.status_code == 200, r.text
