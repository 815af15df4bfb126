"""`berth crds`: structural, accepted by Kubernetes' own CRD schema, and accepting every Seldon manifest."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from berth.kube.crds import ANNOTATION_BUDGET, COLUMNS, SCALED, all_crds, crd, last_applied_size
from berth.kube.openapi import INT_OR_STRING, PRESERVE, json_schema
from berth.resources.kinds import SPEC_SCHEMAS
from berth.resources.manifest import validate_document
from tests.support.seeds import EXAMPLES, ROOT, shared_seeds

K8S_VERSION = "1.30.0"  # the oldest Kubernetes these CRDs are checked against (kubernetes-validate's schemas)


def _schema(kind: str) -> dict[str, Any]:
    return dict(crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def _validator(kind: str) -> jsonschema.Draft4Validator:
    schema = json_schema(_schema(kind))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in _validator(doc["kind"]).iter_errors(doc)]


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    roots = [EXAMPLES] + ([shared_seeds()] if shared_seeds() else [])
    found = []
    for root in roots:
        assert root is not None
        for path in sorted(root.rglob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") in SPEC_SCHEMAS:
                    found.append((f"{path.relative_to(root.parent)}:{doc['metadata']['name']}", doc))
    return found


MANIFESTS = _manifests()


def test_manifests_were_found() -> None:
    assert len(MANIFESTS) >= 10, [name for name, _ in MANIFESTS]
    assert {doc["kind"] for _, doc in MANIFESTS} >= {"Model", "Server", "Experiment", "SeldonRuntime"}


@pytest.mark.parametrize("kind", list(SPEC_SCHEMAS))
def test_crd_is_a_valid_kubernetes_object(kind: str) -> None:
    # Kubernetes' own published schema of CustomResourceDefinition (strict: unknown fields are errors).
    kubernetes_validate.validate(crd(kind), K8S_VERSION, strict=True)


def _walk(node: dict[str, Any], path: str) -> list[str]:
    """Violations of Kubernetes' structural-schema rules under ``node``."""
    bad = []
    for banned in ("$ref", "anyOf", "oneOf", "allOf", "not", "definitions", "$defs", "default"):
        if banned in node:
            bad.append(f"{path}: {banned}")
    if "type" not in node and not node.get(INT_OR_STRING) and not node.get(PRESERVE):
        bad.append(f"{path}: no type")
    if node.get("type") == "null" or isinstance(node.get("type"), list):
        bad.append(f"{path}: type {node['type']!r}")
    if "properties" in node and "additionalProperties" in node:
        bad.append(f"{path}: properties beside additionalProperties")
    if node.get(PRESERVE) and node.get("type") not in (None, "object"):
        bad.append(f"{path}: preserve-unknown-fields on a {node['type']}")
    for key, sub in (node.get("properties") or {}).items():
        bad += _walk(sub, f"{path}.{key}")
    if isinstance(node.get("additionalProperties"), dict):
        bad += _walk(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        bad += _walk(node["items"], f"{path}[]")
    return bad


@pytest.mark.parametrize("kind", list(SPEC_SCHEMAS))
def test_schema_is_structural(kind: str) -> None:
    schema = _schema(kind)
    assert _walk(schema, "") == []
    assert schema["properties"]["metadata"] == {"type": "object"}  # the only metadata form allowed


@pytest.mark.parametrize("kind", list(SPEC_SCHEMAS))
def test_subresources_and_columns(kind: str) -> None:
    version = crd(kind)["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    assert ("scale" in version["subresources"]) == (kind in SCALED)
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[-1] == "Age" or "Age" in names
    assert names == [c.name for c in COLUMNS[kind]]


def test_model_columns_are_seldons() -> None:
    cols = {c["name"]: c["jsonPath"] for c in crd("Model")["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert cols["Ready"] == '.status.conditions[?(@.type=="ModelReady")].status'
    assert cols["Desired Replicas"] == ".status.replicas"
    assert cols["Available Replicas"] == ".status.availableReplicas"


@pytest.mark.parametrize("name,doc", MANIFESTS, ids=[n for n, _ in MANIFESTS])
def test_every_seed_and_example_validates(name: str, doc: dict[str, Any]) -> None:
    assert _errors(doc) == [], name


SELDON_FIELDS: list[dict[str, Any]] = [
    # Every field Seldon Core v2's documentation shows for each kind (typed as Seldon types them).
    {"kind": "Model", "spec": {
        "storageUri": "gs://seldon-models/iris", "artifactVersion": 1, "schemaUri": "gs://x/schema.json",
        "secretName": "s3", "requirements": ["sklearn"], "memory": "100Ki", "server": "mlserver",
        "preloaded": True, "dedicated": False, "modelType": "classifier",
        "logger": {"percent": 100, "uri": "http://logger"},
        "explainer": {"type": "anchor_tabular", "modelRef": "iris"},
        "parameters": [{"name": "version", "value": "1"}], "llm": {"modelRef": "x"},
        "dataflow": {"cleanTopicsOnDelete": True}, "replicas": 2, "minReplicas": 1, "maxReplicas": 3}},
    {"kind": "Server", "spec": {
        "serverConfig": "mlserver", "capabilities": ["sklearn"], "extraCapabilities": ["custom"],
        "replicas": 1, "minReplicas": 1, "maxReplicas": 4, "disableAutoUpdate": True,
        "statefulSetPersistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
        "podSpec": {"nodeSelector": {"gpu": "true"}, "tolerations": [{"key": "k", "operator": "Exists"}],
                    "containers": [{"name": "mlserver", "resources": {"requests": {"memory": "2Gi"}},
                                    "env": [{"name": "A", "value": "1"}]}]},
        "scaling": {"minReplicas": 1}}},
    {"kind": "ServerConfig", "spec": {
        "podSpec": {"serviceAccountName": "seldon-server", "containers": [{"name": "agent", "image": "a"}]},
        "volumeClaimTemplates": [{"name": "model-repository", "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}},
    {"kind": "Experiment", "spec": {
        "default": "iris", "resourceType": "model",
        "candidates": [{"name": "iris", "weight": 50}, {"name": "iris2", "weight": 50}],
        "mirror": {"name": "iris3", "percent": 25}}},
    {"kind": "Pipeline", "spec": {
        "input": {"externalInputs": ["a.outputs"], "externalTriggers": ["b.outputs"], "joinWindowMs": 5,
                  "joinType": "inner", "triggersJoinType": "any", "tensorMap": {"a.outputs.t": "in"}},
        "steps": [{"name": "tfsimple1"},
                  {"name": "tfsimple2", "inputs": ["tfsimple1.outputs"], "tensorMap": {"x": "y"},
                   "triggers": ["t.outputs"], "joinType": "outer", "inputsJoinType": "outer",
                   "triggersJoinType": "any", "joinWindowMs": 100, "batch": {"size": 2, "windowMs": 10}}],
        "output": {"steps": ["tfsimple2"], "joinWindowMs": 10, "stepsJoin": "inner",
                   "tensorMap": {"tfsimple2.outputs.OUTPUT0": "out"}},
        "dataflow": {"cleanTopicsOnDelete": True}}},
    {"kind": "SeldonRuntime", "spec": {
        "seldonConfig": "default", "disableAutoUpdate": False,
        "config": {"agentConfig": {"rclone": {"configSecrets": ["s"]}}, "kafkaConfig": {"bootstrap.servers": "k"},
                   "serviceConfig": {"grpcServicePrefix": ""}, "tracingConfig": {"disable": True}},
        "overrides": [{"name": "seldon-envoy", "replicas": 2, "serviceType": "ClusterIP", "disable": False,
                       "podSpec": {"nodeSelector": {"a": "b"}}}]}},
]


@pytest.mark.parametrize("doc", SELDON_FIELDS, ids=[d["kind"] for d in SELDON_FIELDS])
def test_every_field_seldon_documents_is_accepted(doc: dict[str, Any]) -> None:
    full = {"apiVersion": "mlops.seldon.io/v1alpha1", "metadata": {"name": "x", "namespace": "ns"}, **doc}
    assert _errors(full) == []
    body, problems = validate_document(full, "test")
    assert body is not None, problems  # and Berth itself takes it


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("Model", {"storageUri": "s3://b/m", "replicas": "three"}, "replicas"),
    ("Model", {"requirements": ["sklearn"]}, "storageUri"),
    ("Model", {"storageUri": "s3://b/m", "replicas": 5000}, "replicas"),
    ("Model", {"storageUri": "s3://b/m", "memory": [1]}, "memory"),
    ("Model", {"storageUri": 7}, "storageUri"),
    ("Server", {"serverConfig": "mlserver", "capabilities": "sklearn"}, "capabilities"),
    ("Experiment", {"candidates": [{"name": "a", "weight": -1}]}, "weight"),
    ("Experiment", {"candidates": []}, "candidates"),
    ("Experiment", {"candidates": [{"name": "a", "weight": 1}], "resourceType": "job"}, "resourceType"),
    ("Experiment", {"candidates": [{"name": "a", "weight": 1}], "mirror": {"name": "b", "percent": 101}},
     "percent"),
    ("Pipeline", {"steps": [{"inputs": ["a"]}]}, "name"),
    ("SeldonRuntime", {"overrides": []}, "seldonConfig"),
]


@pytest.mark.parametrize("kind,spec,field", BAD, ids=[f"{k}-{f}" for k, _, f in BAD])
def test_wrong_types_are_refused_as_berth_refuses_them(kind: str, spec: dict[str, Any], field: str) -> None:
    doc = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    errors = _errors(doc)
    assert errors and any(field in e for e in errors), errors
    body, problems = validate_document(copy.deepcopy(doc), "test")
    assert body is None and any(field in p for p in problems), problems


def test_nullable_and_quantities() -> None:
    spec: dict[str, Any] = {"storageUri": "s3://b/m", "server": None, "memory": 1048576}
    doc = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": {"name": "x"}, "spec": spec}
    assert _errors(doc) == []
    spec["memory"] = "1.5Gi"
    assert _errors(doc) == []


def test_small_enough_for_client_side_apply() -> None:
    sizes = {c["spec"]["names"]["kind"]: last_applied_size(c) for c in all_crds()}
    assert all(size < ANNOTATION_BUDGET // 8 for size in sizes.values()), sizes


def test_cli_prints_all_six(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from berth.main import build

    result = CliRunner().invoke(build(), ["crds"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.output))
    assert [d["spec"]["names"]["kind"] for d in docs] == list(SPEC_SCHEMAS)
    assert docs == all_crds()
    as_json = CliRunner().invoke(build(), ["crds", "-o", "json", "model", "mls"])
    assert [d["metadata"]["name"] for d in json.loads(as_json.output)["items"]] == [
        "models.mlops.seldon.io", "servers.mlops.seldon.io"]
    refused = CliRunner().invoke(build(), ["crds", "secret"])
    assert refused.exit_code != 0 and "core Kubernetes kind" in str(refused.exception)


def test_deploy_copy_is_current() -> None:
    text = (ROOT / "deploy" / "crds" / "crds.yaml").read_text()
    assert list(yaml.safe_load_all(text)) == all_crds(), "regenerate: berth crds > deploy/crds/crds.yaml"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders_the_crds() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "crds")], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    rendered = sorted(yaml.safe_load_all(out), key=lambda d: d["metadata"]["name"])
    assert rendered == sorted(all_crds(), key=lambda d: d["metadata"]["name"])


def test_real_api_server_accepts_the_crds() -> None:
    kubeconfig = os.environ.get("BERTH_TEST_KUBECONFIG")
    if not kubeconfig:
        pytest.skip("BERTH_TEST_KUBECONFIG is not set: no real API server to dry-run the CRDs against")
    text = "---\n".join(yaml.safe_dump(c) for c in all_crds())
    done = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "apply", "--dry-run=server", "-f", "-"],
                          input=text, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
