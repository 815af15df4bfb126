"""Resources: quantities, names, manifests (every seed parses unchanged), errors with their place."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.errors import InvalidInput, InvalidManifest, InvalidName
from berth.resources.kinds import kind_from_alias, model_spec
from berth.resources.manifest import load_paths, parse_text
from berth.resources.names import check_name
from berth.resources.quantity import format_quantity, humanize_bytes, parse_quantity


@pytest.mark.parametrize(("text", "expected"), [
    ("100Ki", 102400), ("2Gi", 2 * 2**30), ("1.5G", 1_500_000_000), ("500M", 500_000_000), ("1e3", 1000),
    ("64Gi", 64 * 2**30), ("0", 0), (1024, 1024), ("1k", 1000), ("0.5Mi", 2**19), ("1500m", 2),
])
def test_quantities(text: str | int, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("bad", ["lots", "1.5GB", "-1Gi", "", "Gi", True, [1], -5])
def test_bad_quantities_name_the_field(bad: object) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_quantity(bad, field="spec.memory")
    assert exc.value.message.startswith("spec.memory: ")


@given(st.integers(min_value=0, max_value=2**62))
def test_quantity_round_trip(n: int) -> None:
    assert parse_quantity(format_quantity(n)) == n


def test_humanize() -> None:
    assert humanize_bytes(64 * 2**30) == "64 GiB"
    assert humanize_bytes(int(1.1 * 2**30)) == "1.1 GiB"
    assert humanize_bytes(512) == "512 B"


@pytest.mark.parametrize("name", ["../x", "a/b", "Upper", "-lead", "trail-", "a" * 254, "", "a_b"])
def test_names_that_could_reach_a_path_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        check_name(name)


def test_every_example_manifest_parses_unchanged(examples: Path) -> None:
    files = sorted(examples.rglob("*.yaml"))
    assert len(files) >= 11
    for f in files:
        result = load_paths([str(f)])
        assert result.documents, f
        assert result.warnings == [], (f, result.warnings)
    docs = load_paths([str(examples / "financial-ml")]).documents
    kinds = sorted(d.kind for d in docs)
    assert kinds == ["Experiment", "Model", "Model", "Secret", "SeldonRuntime", "Server"]
    model = next(d for d in docs if d.name == "baseline-predictor")
    spec = model_spec(model.body)
    assert spec.requirements == ["mlflow", "torch", "numpy", "scikit-learn"] and spec.secretName == "ml-platform"


def test_errors_name_file_document_kind_and_path(tmp_path: Path) -> None:
    f = tmp_path / "models.yaml"
    f.write_text("""apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: fine}
spec: {storageUri: s3://b/k}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: baseline-predictor}
spec: {storageUri: s3://b/k, replicas: "three", requirements: sklearn}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Server
metadata: {name: s}
spec: {capabilities: [sklearn]}
---
kind: Widget
metadata: {name: w}
""")
    with pytest.raises(InvalidManifest) as exc:
        load_paths([str(f)])
    problems = exc.value.problems
    assert f'{f}#2 Model/baseline-predictor: spec.replicas: expected integer, got "three"' in problems
    assert f'{f}#2 Model/baseline-predictor: spec.requirements: expected list, got "sklearn"' in problems
    assert f"{f}#3 Server/s: spec.serverConfig: required field missing" in problems
    assert any(p.startswith(f"{f}#4") and "unknown kind" in p for p in problems)


def test_unknown_fields_are_kept_and_warned_once() -> None:
    text = """apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: a}
spec: {storageUri: s3://b/k, colour: blue}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: b}
spec: {storageUri: s3://b/k, colour: red}
"""
    result = parse_text(text, "m.yaml")
    assert [w for w in result.warnings if "spec.colour" in w] == [
        "m.yaml#1 Model/a: spec.colour: unknown field, kept and ignored"]
    assert result.documents[1].body["spec"]["colour"] == "red"


def test_invalid_yaml_says_where() -> None:
    with pytest.raises(InvalidManifest) as exc:
        parse_text("kind: Model\nmetadata: [unclosed\n", "bad.yaml")
    assert "bad.yaml: line" in exc.value.problems[0] and "invalid YAML" in exc.value.problems[0]


def test_duplicates_in_one_set_are_refused(tmp_path: Path) -> None:
    doc = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: a}\nspec: {storageUri: x}\n"
    (tmp_path / "1.yaml").write_text(doc)
    (tmp_path / "2.yaml").write_text(doc)
    with pytest.raises(InvalidManifest) as exc:
        load_paths([str(tmp_path)])
    assert "duplicate" in exc.value.problems[0]


def test_kind_aliases() -> None:
    assert kind_from_alias("models") == kind_from_alias("mlm") == "Model"
    assert kind_from_alias("Experiments") == "Experiment"
    with pytest.raises(InvalidInput):
        kind_from_alias("widgets")


def test_name_length_limits_are_exact() -> None:
    assert check_name("a" * 253) == "a" * 253  # a DNS-1123 subdomain: up to 253 characters
    with pytest.raises(InvalidName, match="longer than 253 characters"):
        check_name("a" * 254)
    assert check_name("a" * 63, label=True) == "a" * 63  # a DNS-1123 label (namespaces): up to 63
    with pytest.raises(InvalidName, match="longer than 63 characters"):
        check_name("a" * 64, label=True)
    dotted = ".".join(["a" * 63] * 4)[:253].rstrip(".")
    assert len(dotted) == 253 and check_name(dotted) == dotted


def test_manifest_names_at_exactly_the_limits() -> None:
    def model(name: str, namespace: str) -> str:
        return (f"apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\n"
                f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {{storageUri: 's3://b/k'}}\n")

    doc = parse_text(model("m" * 253, "n" * 63), "ok.yaml").documents[0]
    assert (len(doc.name), len(doc.namespace)) == (253, 63)
    with pytest.raises(InvalidManifest, match="longer than 253 characters"):
        parse_text(model("m" * 254, "n"), "long-name.yaml")
    with pytest.raises(InvalidManifest, match="longer than 63 characters"):
        parse_text(model("m", "n" * 64), "long-namespace.yaml")
