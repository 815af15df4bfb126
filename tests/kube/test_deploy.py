"""deploy/: the kustomize base renders, every object is valid Kubernetes, the RBAC covers exactly what the
store and the provisioner's builders touch, and generated files are current."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from berth.control.settings import ControlSettings
from berth.kube.crds import all_crds
from berth.kube.policies import control_plane_policies, tenant_policies
from berth.kube.workloads import Install, runtime_objects, server_objects
from berth.kubeapi import KIND_APIS
from berth.resources.process_settings import flag_of
from tests.support.seeds import EXAMPLES, ROOT

DEPLOY = ROOT / "deploy"
API_GROUPS = {"v1": "", "apps/v1": "apps", "networking.k8s.io/v1": "networking.k8s.io",
              "mlops.seldon.io/v1alpha1": "mlops.seldon.io"}
WRITE = {"get", "list", "watch", "create", "update", "delete"}


def _docs(*names: str) -> list[dict[str, Any]]:
    return [d for n in names for d in yaml.safe_load_all((DEPLOY / "base" / n).read_text()) if d]


def _grants(role: dict[str, Any] | None = None) -> dict[tuple[str, str], set[str]]:
    """(API group, resource) -> verbs a (Cluster)Role grants; default: the base's ClusterRole."""
    role = role or next(d for d in _docs("rbac.yaml") if d["kind"] == "ClusterRole")
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_every_file_is_valid_kubernetes() -> None:
    for doc in _docs("namespace.yaml", "rbac.yaml", "service.yaml", "networkpolicy.yaml", "deployment.yaml"):
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_the_control_plane_deployment_fits_its_service_account_service_and_policy() -> None:
    [deployment] = _docs("deployment.yaml")
    [service] = _docs("service.yaml")
    [policy] = _docs("networkpolicy.yaml")
    accounts = {d["metadata"]["name"] for d in _docs("rbac.yaml") if d["kind"] == "ServiceAccount"}
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()  # the Service reaches it
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()  # and only agents/gateways do
    assert pod["spec"]["serviceAccountName"] in accounts
    [container] = pod["spec"]["containers"]
    command = container["command"]
    assert command[:4] == ["berth", "control", "--store", "kubernetes"]
    flags = {f for name, field in ControlSettings.model_fields.items() if (f := flag_of(field))}
    given = [a for a in command[2:] if a.startswith("--")]
    assert set(given) <= {part for f in flags for part in f.replace("/", ",").split(",")}, given
    env = {e["name"]: e for e in container["env"]}
    settings = ControlSettings.from_env({"BERTH_CONTROL_NAMESPACE": "berth-system",
                                         "BERTH_IMAGE": env["BERTH_IMAGE"]["value"]},
                                        **dict(zip(["store", "host", "port", "data_dir", "admin_token_file"],
                                                   command[3::2], strict=True)))
    kube = settings.options().kube
    assert kube is not None and kube.image == container["image"] and kube.namespace is None  # cluster-wide
    port = next(p["port"] for p in service["spec"]["ports"])
    assert {p["containerPort"] for p in container["ports"]} == {port, settings.port}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def _chart_render(namespace: str, tls: bool = False, watch: list[str] | None = None) -> list[dict[str, Any]]:
    """The chart's templates rendered: by `helm template` when helm is installed, else by substituting the
    only expressions they use ({{ .Release.Namespace }}, {{ .Values.KEY.KEY }}, {{- if [not] .Values.KEY.KEY }} …
    {{- end }} blocks, unnested, {{ range .Values.KEY }} … {{ . }} … {{ end }}, and the one watchNamespaces
    check) and parsing the YAML.  ``tls``: with ``--set tls.enabled=true``; ``watch``: a namespaced install,
    ``--set rbac.namespaced=true --set watchNamespaces={…}``."""
    chart = DEPLOY / "helm" / "berth"
    if shutil.which("helm"):
        sets = (["--set", "tls.enabled=true"] if tls else []) + (
            ["--set", "rbac.namespaced=true", "--set", f"watchNamespaces={{{','.join(watch)}}}"] if watch else [])
        out = subprocess.run(["helm", "template", "berth", str(chart), "-n", namespace, *sets], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    values = yaml.safe_load((chart / "values.yaml").read_text())
    values["tls"]["enabled"] = tls
    values["rbac"]["namespaced"] = watch is not None
    values["watchNamespaces"] = list(watch or [])

    def value(path: str) -> Any:
        found: Any = values
        for key in path.split("."):
            found = found[key]
        return found

    docs: list[dict[str, Any]] = []
    for template in sorted((chart / "templates").glob("*.yaml")):
        text = template.read_text().replace("{{ .Release.Namespace }}", namespace)
        text = text.replace("{{ $.Release.Namespace }}", namespace)
        check = ('{{- if ne (len .Values.watchNamespaces) (ternary 1 0 .Values.rbac.namespaced) }}{{ fail "')
        if text.startswith(check):  # the chart refuses a namespaced install without exactly one namespace
            line, _, text = text.partition("\n")
            assert len(values["watchNamespaces"]) == (1 if values["rbac"]["namespaced"] else 0), line
        text = re.sub(r"\{\{-? range \.Values\.([A-Za-z.]+) \}\}(.*?)\{\{-? end \}\}",
                      lambda m: "".join(m.group(2).replace("{{ . }}", str(v)) for v in value(m.group(1))), text,
                      flags=re.S)
        text = re.sub(r"\{\{- if (not )?\.Values\.([A-Za-z.]+) \}\}\n(.*?)\{\{- end \}\}\n",
                      lambda m: m.group(3) if bool(value(m.group(2))) != bool(m.group(1)) else "", text, flags=re.S)
        text = re.sub(r"\{\{ \.Values\.([A-Za-z.]+) \}\}", lambda m: str(value(m.group(1))), text)
        assert "{{" not in text, f"{template.name}: an expression this test cannot substitute"
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (kustomize ships with it)")
def test_helm_chart_has_the_same_content_as_the_kustomize_base() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "base")], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    base = {_key(d): d for d in yaml.safe_load_all(out) if d["kind"] not in ("Namespace", "CustomResourceDefinition")}
    chart = {_key(d): d for d in _chart_render("berth-system")}
    assert chart == base
    crds = list(yaml.safe_load_all((DEPLOY / "helm" / "berth" / "crds" / "crds.yaml").read_text()))
    assert crds == all_crds(), "regenerate: berth crds > deploy/helm/berth/crds/crds.yaml"
    elsewhere = _chart_render("ml-platform")  # another release namespace: everything follows it
    for doc in elsewhere:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "ml-platform"
    binding = next(d for d in elsewhere if d["kind"] == "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == "ml-platform"


def test_networkpolicy_file_is_current() -> None:
    assert _docs("networkpolicy.yaml") == control_plane_policies(Install())


def test_rbac_covers_the_store_and_the_builders_and_no_more() -> None:
    grants = _grants()
    for api in KIND_APIS.values():
        group = API_GROUPS[api.api_version]
        assert grants[(group, api.plural)] >= WRITE, api.plural
        if group:
            assert grants[(group, f"{api.plural}/status")] == {"get", "update"}
    seldon_runtime = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "SeldonRuntime",
                      "metadata": {"name": "r", "namespace": "t", "uid": str(uuid.uuid4())}}
    server = dict(yaml.safe_load((EXAMPLES / "financial-ml" / "10-server.yaml").read_text()))
    server["metadata"]["uid"] = str(uuid.uuid4())
    made = (server_objects(server, None, Install()) + runtime_objects(seldon_runtime, Install())
            + tenant_policies(seldon_runtime, Install()))
    plurals = {"StatefulSet": "statefulsets", "Service": "services", "ServiceAccount": "serviceaccounts",
               "Deployment": "deployments", "NetworkPolicy": "networkpolicies"}
    assert {d["kind"] for d in made} == set(plurals)
    for doc in made:
        assert grants[(API_GROUPS[doc["apiVersion"]], plurals[doc["kind"]])] >= WRITE, doc["kind"]
    assert grants[("authentication.k8s.io", "tokenreviews")] == {"create"}
    # nothing the control plane does not need: no wildcard, no pods/exec, no cluster roles to grant
    assert not any("*" in g or "*" in r for g, r in grants) and ("", "pods/exec") not in grants
    assert not any(g == "rbac.authorization.k8s.io" for g, _ in grants)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (kustomize ships with it)")
def test_kustomize_renders_valid_objects() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "base")], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    docs = list(yaml.safe_load_all(out))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("CustomResourceDefinition") == 6 and "ClusterRole" in kinds and "NetworkPolicy" in kinds
    assert "Deployment" in kinds
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "berth"


def _kustomize_tls(tmp_path: Path) -> list[dict[str, Any]]:
    """deploy/base with the deploy/tls Component, as an overlay of a user's would take them."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "base", overlay)],
        "components": [os.path.relpath(DEPLOY / "tls", overlay)]}))
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (kustomize ships with it)")
def test_tls_install_serves_https_and_tells_the_pods_it_makes_to_trust_the_ca(tmp_path: Path) -> None:
    """deploy/tls (kustomize) and the chart's tls.enabled render the same control plane: its TLS Secret mounted
    read-only, HTTPS probes, and settings that make the provisioner mount the tenant CA Secret into agent and
    gateway pods and point them at wss:// and https://."""
    rendered = _kustomize_tls(tmp_path)
    base = {_key(d): d for d in rendered if d["kind"] not in ("Namespace", "CustomResourceDefinition")}
    assert {_key(d): d for d in _chart_render("berth-system", tls=True)} == base
    deployment = base[("Deployment", "berth-control")]
    for doc in rendered:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    [secret] = [v["secret"] for v in pod["volumes"] if "secret" in v]
    assert secret == {"secretName": "berth-control-tls", "defaultMode": 0o400}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["tls"]["readOnly"] is True
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    settings = ControlSettings.from_env({**env, "BERTH_CONTROL_NAMESPACE": "berth-system"}, store="kubernetes")
    assert settings.tls_cert is not None and str(settings.tls_cert).startswith(mounts["tls"]["mountPath"])
    kube = settings.options().kube
    assert kube is not None and kube.ca_secret == "berth-control-ca"
    plain = ControlSettings.from_env({"BERTH_CONTROL_NAMESPACE": "berth-system"}, store="kubernetes")
    assert plain.options().kube is not None and plain.options().kube.ca_secret is None  # type: ignore[union-attr]


def _rendered(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _objects(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs
            if d["kind"] not in ("Namespace", "CustomResourceDefinition")}


def _needed_in_a_namespace() -> dict[tuple[str, str], set[str]]:
    """What the Kubernetes store and the provisioner call in a namespace they serve, from the code's own tables:
    every kind of KIND_APIS (and its status subresource), every kind the builders make, pods read (kube_enrol
    checks the agent's pod)."""
    needed: dict[tuple[str, str], set[str]] = {}
    for api in KIND_APIS.values():
        group = API_GROUPS[api.api_version]
        needed[(group, api.plural)] = set(WRITE)
        if group:
            needed[(group, f"{api.plural}/status")] = {"get", "update"}
    seldon_runtime = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "SeldonRuntime",
                      "metadata": {"name": "r", "namespace": "financial-ml", "uid": str(uuid.uuid4())}}
    server = dict(yaml.safe_load((EXAMPLES / "financial-ml" / "10-server.yaml").read_text()))
    server["metadata"]["uid"] = str(uuid.uuid4())
    plurals = {"StatefulSet": "statefulsets", "Service": "services", "ServiceAccount": "serviceaccounts",
               "Deployment": "deployments", "NetworkPolicy": "networkpolicies"}
    for doc in (server_objects(server, None, Install()) + runtime_objects(seldon_runtime, Install())
                + tenant_policies(seldon_runtime, Install())):
        needed[(API_GROUPS[doc["apiVersion"]], plurals[doc["kind"]])] = set(WRITE)
    needed[("", "pods")] = {"get", "list", "watch"}
    return needed


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (kustomize ships with it)")
def test_namespaced_install_grants_exactly_what_the_store_and_provisioner_need_in_the_watched_namespace() -> None:
    """deploy/namespaced and the chart's rbac.namespaced render the same objects: a Role and RoleBinding in the
    watched namespace giving exactly what the code calls there, a ClusterRole reduced to TokenReviews, and the
    control plane started with --watch-namespace."""
    rendered = _rendered(DEPLOY / "namespaced")
    for doc in rendered:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "berth"
    objects = _objects(rendered)
    assert objects == _objects(_chart_render("berth-system", watch=["financial-ml"]))
    kinds = sorted(k for k, _, _ in objects)
    assert kinds.count("Role") == 1 and kinds.count("RoleBinding") == 1 and kinds.count("ClusterRole") == 1
    role, binding = objects[("Role", "financial-ml", "berth-control")], objects[("RoleBinding", "financial-ml",
                                                                                  "berth-control")]
    assert _grants(role) == _needed_in_a_namespace()  # exactly: nothing missing, nothing more
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "berth-control"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "berth-control", "namespace": "berth-system"}]
    cluster_role = objects[("ClusterRole", "", "berth-control")]
    assert _grants(cluster_role) == {("authentication.k8s.io", "tokenreviews"): {"create"}}
    cluster_binding = objects[("ClusterRoleBinding", "", "berth-control")]
    assert cluster_binding["roleRef"]["name"] == "berth-control"
    [container] = objects[("Deployment", "berth-system", "berth-control")]["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[-2:] == ["--watch-namespace", "financial-ml"]
    settings = ControlSettings.from_env({"BERTH_CONTROL_NAMESPACE": "berth-system"},
                                        **{"store": "kubernetes", "watch_namespace": command[-1]})
    kube = settings.options().kube
    assert kube is not None and kube.namespace == "financial-ml"
    # the cluster-wide render is untouched by the option: no Role, the full ClusterRole
    whole = _objects(_chart_render("berth-system"))
    assert not any(k == "Role" for k, _, _ in whole)
    assert _grants(whole[("ClusterRole", "", "berth-control")]) == _grants()


def test_the_chart_refuses_a_namespaced_install_without_exactly_one_namespace() -> None:
    if shutil.which("helm"):
        pytest.skip("checked by helm itself in the test above; this checks the fallback renderer's reading")
    for watch in ([], ["a", "b"]):
        with pytest.raises(AssertionError):
            _chart_render("berth-system", watch=watch)
