"""`berth plan` on the misconfigured examples: one line per unplaced model naming the real cause."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CASES = {
    "capability-typo.yaml": ["financial-ml/baseline-predictor", "lacks capabilities torch, scikit-learn",
                             "pytorch for torch", "sklearn for scikit-learn"],
    "cross-namespace-server.yaml": ["financial-ml/risk-scorer", "'seldon-system/mlserver'",
                                    "in namespace seldon-system", "its own namespace"],
    "memory-too-large.yaml": ["financial-ml/portfolio-optimiser", "1.1 GiB free", "model needs 64 GiB"],
    "model-before-server.yaml": ["financial-ml/fraud-detector", "no server named fraud-server in namespace "
                                 "financial-ml; servers here: none"],
    "more-replicas-than-server.yaml": ["no matching server had enough suitable replicas",
                                       "model needs 3 replicas", "has 1 suitable replica (of 1)"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_plan_names_the_cause(cli, examples: Path, name: str) -> None:
    r = cli("plan", "-f", str(examples / "misconfigured" / name))
    assert r.code == 1
    lines = [line for line in r.out.splitlines() if line.startswith("✗")]
    assert len(lines) == 1, r.out
    assert "Failed to schedule model as no matching server" in lines[0]
    for fragment in CASES[name]:
        assert fragment in lines[0], f"{fragment!r} missing from: {lines[0]}"
    assert "error: 1 model(s) cannot be placed" in r.err


def test_plan_of_the_financial_examples_places_both(cli, examples: Path) -> None:
    r = cli("plan", "-f", str(examples / "financial-ml"), "-o", "json")
    assert r.code == 0, r.err
    models = {m["model"]: m for m in json.loads(r.out)["models"]}
    assert {n: (m["state"], m["server"], m["replicas"]) for n, m in models.items()} == {
        "baseline-predictor": ("Scheduled", "mlserver", [0]), "enhanced-predictor": ("Scheduled", "mlserver", [0])}


def test_plan_memory_flag_changes_the_verdict(cli, examples: Path) -> None:
    r = cli("plan", "-f", str(examples / "misconfigured" / "memory-too-large.yaml"), "--replica-memory", "64Gi")
    assert r.code == 0 and "✓ financial-ml/portfolio-optimiser: Scheduled on mlserver" in r.out


def test_plan_takes_replica_memory_from_the_server_config_podspec(cli, examples: Path, tmp_path: Path) -> None:
    """The seed's model needs 64Gi; a ServerConfig whose mlserver container requests 80Gi makes room."""
    config = tmp_path / "config.yaml"
    config.write_text("apiVersion: mlops.seldon.io/v1alpha1\nkind: ServerConfig\n"
                      "metadata: {name: mlserver, namespace: financial-ml}\n"
                      "spec:\n  podSpec:\n    containers:\n    - name: mlserver\n      image: seldonio/mlserver:1.7.1\n"
                      "      resources: {requests: {memory: 80Gi}}\n")
    r = cli("plan", "-f", str(examples / "misconfigured" / "memory-too-large.yaml"), "-f", str(config))
    assert r.code == 0 and "✓ financial-ml/portfolio-optimiser: Scheduled on mlserver" in r.out, r.out + r.err
    assert ("server financial-ml/mlserver: 2 replica(s) of 80 GiB (from ServerConfig financial-ml/mlserver spec."
            "podSpec.containers[mlserver].resources.requests.memory) + 10% overcommit (from --overcommit)") in r.err
    config.write_text(config.read_text().replace("80Gi", "lots"))
    r = cli("plan", "-f", str(examples / "misconfigured" / "memory-too-large.yaml"), "-f", str(config))
    assert r.code == 1 and "ServerConfig/mlserver: spec.podSpec.containers[mlserver].resources.requests.memory" in r.err


def test_plan_rejects_bad_manifest_with_place(cli, tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text("apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: x}\n"
                   "spec: {storageUri: s3://b/k, memory: lots}\n")
    r = cli("plan", "-f", str(bad))
    assert r.code == 1 and f"{bad}#1 Model/x: spec.memory" in r.err and "Traceback" not in r.err
