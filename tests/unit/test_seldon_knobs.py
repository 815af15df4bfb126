"""Seldon's replica knobs where Seldon reads them, warnings for what Berth keeps but does not act on, and
servers Berth cannot run (Triton): podspec rules, manifest warnings, scheduler reasons, status, provisioner."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth.control.provisioner import Shape, decide
from berth.control.status import UNSUPPORTED, server_status
from berth.control.tenants import server_config_status
from berth.errors import InvalidInput, InvalidManifest
from berth.resources.manifest import parse_text, unacted_warnings, validate_document
from berth.resources.podspec import (
    ReplicaShape,
    inference_server,
    pod_spec_problems,
    replica_shape,
    unread_fields,
)
from berth.scheduler import plan
from berth.scheduler.build import MLSERVER_CAPABILITIES, dry_run_replicas, server_info, snapshot_for
from berth.scheduler.snapshot import (
    MISSING_CAPABILITIES,
    REQUIRES_UNSUPPORTED_SERVER,
    UNSUPPORTED_SERVER,
    ModelWant,
    ReplicaInfo,
    ServerInfo,
    Snapshot,
)

NS = "financial-ml"
GiB = 1 << 30
DEFAULTS: dict[str, Any] = {"memory": (GiB, "--replica-memory"), "overcommit_percent": (10, "--overcommit")}
TRITON_TEXT = ("serverConfig triton runs NVIDIA Triton, which Berth does not run; Berth serves MLServer "
               "(runtimes: sklearn, xgboost, mlflow, lightgbm, python/custom); use serverConfig: mlserver")


def agent(*env: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "agent", "env": list(env), **fields}


def var(name: str, value: Any = None, **value_from: Any) -> dict[str, Any]:
    return {"name": name, "value": value} if not value_from else {"name": name, "valueFrom": value_from}


def ref(container: str | None = "mlserver", resource: str = "requests.memory", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"resource": resource, **extra}
    if container is not None:
        body["containerName"] = container
    return {"resourceFieldRef": body}


def mlserver(requests: str | None = None, limits: str | None = None, **fields: Any) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests is not None:
        resources["requests"] = {"memory": requests}
    if limits is not None:
        resources["limits"] = {"memory": limits}
    return {"name": "mlserver", "resources": resources, **fields}


def server(*containers: dict[str, Any], annotations: dict[str, str] | None = None, name: str = "mlserver",
           **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if annotations:
        meta["annotations"] = annotations
    body = {"serverConfig": "mlserver", **spec}
    if containers:
        body["podSpec"] = {"containers": list(containers)}
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server", "metadata": meta, "spec": body}


def config(*containers: dict[str, Any], name: str = "mlserver", **pod: Any) -> dict[str, Any]:
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "ServerConfig",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"podSpec": {"containers": list(containers), **pod}}}


def shape(srv: dict[str, Any], cfg: dict[str, Any] | None = None) -> ReplicaShape:
    return replica_shape(srv, cfg, **DEFAULTS)


S_AGENT = f"Server {NS}/mlserver spec.podSpec.containers[agent].env"
C_AGENT = f"ServerConfig {NS}/mlserver spec.podSpec.containers[agent].env"
C_MLSERVER = f"ServerConfig {NS}/mlserver spec.podSpec.containers[mlserver].resources"


# -- memory and overcommit, in Seldon's precedence ---------------------------------------------------
def test_memory_precedence_annotation_then_agent_env_then_container_then_default() -> None:
    cfg = config(agent(var("MEMORY_REQUEST", "3Gi")), mlserver("2Gi"))
    srv = server(agent(var("MEMORY_REQUEST", "4294967296")), annotations={"berth.io/replica-memory": "8Gi"})
    assert shape(srv, cfg).memory_from == "annotation berth.io/replica-memory" and shape(srv, cfg).memory == 8 * GiB
    del srv["metadata"]["annotations"]
    assert (shape(srv, cfg).memory, shape(srv, cfg).memory_from) == (4 * GiB, f"{S_AGENT}[MEMORY_REQUEST]")
    del srv["spec"]["podSpec"]
    assert (shape(srv, cfg).memory, shape(srv, cfg).memory_from) == (3 * GiB, f"{C_AGENT}[MEMORY_REQUEST]")
    cfg["spec"]["podSpec"]["containers"] = [mlserver("2Gi")]
    assert (shape(srv, cfg).memory, shape(srv, cfg).memory_from) == (2 * GiB, f"{C_MLSERVER}.requests.memory")
    srv["spec"]["podSpec"] = {"containers": [mlserver(limits="5Gi")]}  # the Server's container first
    assert shape(srv, cfg).memory == 5 * GiB
    assert (shape(server(), None).memory, shape(server(), None).memory_from) == (GiB, "--replica-memory")


def test_memory_request_from_the_downward_api_resolves_to_the_container() -> None:
    """Seldon's own ServerConfig: MEMORY_REQUEST from resourceFieldRef to mlserver's requests.memory."""
    cfg = config(agent(var("MEMORY_REQUEST", **ref())), mlserver("1G", "3Gi"))
    got = shape(server(), cfg)
    assert got.memory == 10**9
    assert got.memory_from == f"{C_MLSERVER}.requests.memory via agent env MEMORY_REQUEST"
    # a Server overriding only its mlserver container's request changes what the reference resolves to
    assert shape(server(mlserver("6Gi")), cfg).memory == 6 * GiB
    # a request defaults to the limit, as Kubernetes defaults it; limits.memory reads the limit
    assert shape(server(), config(agent(var("MEMORY_REQUEST", **ref())), mlserver(limits="2Gi"))).memory == 2 * GiB
    assert shape(server(), config(agent(var("MEMORY_REQUEST", **ref(resource="limits.memory"))),
                                  mlserver("1Gi", "3Gi"))).memory == 3 * GiB
    # no containerName: the agent container itself, as the downward API reads it
    own = config({**agent(var("MEMORY_REQUEST", **ref(None))), "resources": {"requests": {"memory": "700Mi"}}})
    assert shape(server(), own).memory == 700 << 20


@pytest.mark.parametrize(("entry", "where", "accepted"), [
    (var("MEMORY_REQUEST", "lots"), "env[MEMORY_REQUEST].value", "expected bytes or a Kubernetes quantity"),
    (var("MEMORY_REQUEST", **ref(resource="requests.cpu")), "env[MEMORY_REQUEST].valueFrom.resourceFieldRef"
     ".resource", "expected requests.memory or limits.memory"),
    (var("MEMORY_REQUEST", **ref(divisor="1Mi")), "env[MEMORY_REQUEST].valueFrom.resourceFieldRef.divisor",
     "expected 1 or none"),
    (var("MEMORY_REQUEST", **ref("gpu-sidecar")), "env[MEMORY_REQUEST].valueFrom.resourceFieldRef.containerName",
     "no container named gpu-sidecar in the pod spec (containers: agent, mlserver)"),
    (var("SELDON_OVERCOMMIT_PERCENTAGE", "ten"), "env[SELDON_OVERCOMMIT_PERCENTAGE].value",
     'expected a whole number of percent from 0 to 1000 (e.g. "10"), got "ten"'),
    (var("SELDON_OVERCOMMIT_PERCENTAGE", "-5"), "env[SELDON_OVERCOMMIT_PERCENTAGE].value", "from 0 to 1000"),
])
def test_a_bad_value_names_its_field_and_the_accepted_form(entry: dict[str, Any], where: str,
                                                          accepted: str) -> None:
    cfg = config(agent(entry), mlserver("1Gi"))
    with pytest.raises(InvalidInput) as exc:
        shape(server(), cfg)
    assert exc.value.message.startswith(f"ServerConfig {NS}/mlserver spec.podSpec.containers[agent].{where}: ")
    assert accepted in exc.value.message


def test_overcommit_from_the_agent_env_server_then_config_then_default() -> None:
    cfg = config(agent(var("SELDON_OVERCOMMIT_PERCENTAGE", "30")))
    assert (shape(server(), cfg).overcommit, shape(server(), cfg).overcommit_from) == (
        30, f"{C_AGENT}[SELDON_OVERCOMMIT_PERCENTAGE]")
    srv = server(agent(var("SELDON_OVERCOMMIT_PERCENTAGE", "0")))
    assert (shape(srv, cfg).overcommit, shape(srv, cfg).overcommit_from) == (
        0, f"{S_AGENT}[SELDON_OVERCOMMIT_PERCENTAGE]")
    assert (shape(server(), None).overcommit, shape(server(), None).overcommit_from) == (10, "--overcommit")


def test_a_value_from_berth_cannot_resolve_falls_through_and_is_warned() -> None:
    cm = var("MEMORY_REQUEST", configMapKeyRef={"name": "sizes", "key": "memory"})
    cfg = config(agent(cm), mlserver("2Gi"))
    assert shape(server(), cfg).memory == 2 * GiB
    agent_lines = [p for p, _ in unread_fields(cfg["spec"]["podSpec"]) if "agent" in p]
    assert agent_lines == ["containers[agent]: env[MEMORY_REQUEST.valueFrom]"]


def test_capabilities_from_the_agent_env_unless_the_server_sets_them() -> None:
    cfg = config(agent(var("SELDON_SERVER_CAPABILITIES", "mlserver, sklearn,custom")))
    assert server_info(server(), cfg).capabilities == ("mlserver", "sklearn", "custom")
    assert server_info(server(extraCapabilities=["gpu"]), cfg).capabilities == ("mlserver", "sklearn", "custom",
                                                                               "gpu")
    assert server_info(server(capabilities=["a"]), cfg).capabilities == ("a",)
    assert server_info(server(), None).capabilities == MLSERVER_CAPABILITIES


def test_which_inference_server_a_server_runs() -> None:
    triton = server(name="t", serverConfig="triton")
    assert inference_server(triton, None) == "triton"  # Seldon's stock name, its ServerConfig not at hand
    assert inference_server(triton, config(mlserver(), name="triton")) == "mlserver"  # what the config says wins
    assert inference_server(server(), config(agent(var("SELDON_SERVER_TYPE", "triton")))) == "triton"
    assert inference_server(server(), config({"name": "triton", "image": "nvcr.io/tritonserver"})) == "triton"
    assert inference_server(server(agent(var("SELDON_SERVER_TYPE", "mlserver"))),
                            config(agent(var("SELDON_SERVER_TYPE", "triton")))) == "mlserver"
    got = shape(triton, None)
    assert (got.inference_server, got.unsupported) == ("triton", TRITON_TEXT)
    assert shape(server(), None).unsupported is None


# -- at apply: bad values refused, unused fields warned -------------------------------------------------
def test_apply_refuses_a_bad_knob_naming_the_field() -> None:
    doc = server(agent(var("MEMORY_REQUEST", "lots"), var("SELDON_SERVER_TYPE", "tensorrt")))
    body, problems = validate_document(doc, "s.yaml#1")
    assert body is None and problems == [
        's.yaml#1 Server/mlserver: spec.podSpec.containers[agent].env[MEMORY_REQUEST].value: expected bytes or '
        'a Kubernetes quantity (e.g. 1073741824, 1Gi, 1.5G), got "lots"',
        's.yaml#1 Server/mlserver: spec.podSpec.containers[agent].env[SELDON_SERVER_TYPE].value: expected one '
        'of mlserver, triton (the inference servers Seldon\'s agent knows), got "tensorrt"']
    assert pod_spec_problems({"containers": [mlserver("1.5GB")]}) == [
        "spec.podSpec.containers[mlserver].resources.requests.memory: '1.5GB' is not a quantity (examples: "
        "100Ki, 2Gi, 1.5G, 500M)"]


def test_the_warning_for_a_pod_level_field_reads_as_documented() -> None:
    doc = server(mlserver("2Gi"))
    doc["spec"]["podSpec"]["nodeSelector"] = {"gpu": "true"}
    assert unacted_warnings(doc) == [
        "Server financial-ml/mlserver: spec.podSpec.nodeSelector: not used by local replicas (Berth runs each "
        "replica as processes on this machine); kept"]


def test_every_unused_part_is_named_and_honoured_ones_are_not() -> None:
    honoured = server(agent(var("MEMORY_REQUEST", **ref()), var("SELDON_OVERCOMMIT_PERCENTAGE", "20"),
                            var("SELDON_SERVER_CAPABILITIES", "mlserver"), var("SELDON_SERVER_TYPE", "mlserver")),
                      mlserver("2Gi", "2Gi"), replicas=2, capabilities=["sklearn"], extraCapabilities=["x"],
                      annotations={"berth.io/replica-memory": "1Gi", "team": "risk"})
    honoured["spec"]["podSpec"]["containers"][1]["resources"]["limits"] = {}  # a limit beside a request: unused
    assert unacted_warnings(honoured) == []
    noisy = server(agent(var("MEMORY_REQUEST", "1Gi"), var("SELDON_SERVER_HTTP_PORT", "9000"), image="agent:1"),
                   mlserver("2Gi", "3Gi", image="mlserver:1", env=[]), {"name": "rclone", "image": "rclone"},
                   replicas=1, minReplicas=1, maxReplicas=3, scaling={"x": 1},
                   annotations={"seldon.io/foo": "x", "berth.io/replica-memori": "1Gi",
                                "berth.io/placement-policy": "spread"})
    noisy["spec"]["podSpec"]["containers"][1]["resources"]["requests"]["cpu"] = "2"
    paths = [w.split(": ")[1] for w in unacted_warnings(noisy)]
    assert paths == [
        "metadata.annotations[seldon.io/foo]", "metadata.annotations[berth.io/replica-memori]",
        "metadata.annotations[berth.io/placement-policy]", "spec.scaling",  # min/maxReplicas: autoscaling
        "spec.podSpec.containers[agent]", "spec.podSpec.containers[mlserver]", "spec.podSpec.containers[rclone]"]
    lines = "\n".join(unacted_warnings(noisy))
    assert "containers[agent]: image, env[SELDON_SERVER_HTTP_PORT]: not used by local replicas" in lines
    assert "containers[mlserver]: image, env, resources.requests.cpu, resources.limits.memory: not used" in lines
    assert "berth.io/replica-memori]: not an annotation Berth knows (it reads berth.io/replica-memory on " \
           "Servers" in lines
    assert "berth.io/placement-policy]: not read on a Server (Berth reads it on SeldonRuntimes only)" in lines
    assert all(w.endswith("; kept") for w in unacted_warnings(noisy))


def test_models_runtimes_configs_and_triton_resources_are_warned() -> None:
    model = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": {"name": "m", "namespace": NS},
             "spec": {"storageUri": "s3://b/k", "maxReplicas": 3, "dedicated": True, "replicas": 1}}
    assert [w.split(": ")[1] for w in unacted_warnings(model)] == ["spec.dedicated"]  # maxReplicas: autoscaling
    experiment = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Experiment",
                  "metadata": {"name": "x", "namespace": NS},
                  "spec": {"resourceType": "pipeline", "candidates": [{"name": "p", "weight": 1}]}}
    assert unacted_warnings(experiment) == []  # pipelines are served: resourceType is acted on
    experiment["spec"]["resourceType"] = "model"
    assert unacted_warnings(experiment) == []
    pipeline = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Pipeline",
                "metadata": {"name": "p", "namespace": NS},
                "spec": {"steps": [{"name": "a"}], "input": {"externalInputs": ["x.outputs"]}}}
    assert [w.split(": ")[1] for w in unacted_warnings(pipeline)] == ["spec.input"]
    del pipeline["spec"]["input"]
    assert unacted_warnings(pipeline) == []
    assert unacted_warnings(server(name="t", serverConfig="triton")) == [
        f"Server {NS}/t: spec.serverConfig: not run: {TRITON_TEXT}; kept"]
    triton_config = config(agent(var("SELDON_SERVER_TYPE", "triton")), {"name": "triton"}, name="triton")
    assert unacted_warnings(triton_config) == [f"ServerConfig {NS}/triton: spec.podSpec: not run: {TRITON_TEXT}; kept"]
    runtime = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "SeldonRuntime",
               "metadata": {"name": "financial-ml-runtime", "namespace": "financial-ml"},
               "spec": {"seldonConfig": "default", "overrides": [
                   {"name": n, "replicas": 1} for n in ("seldon-scheduler", "seldon-modelgateway", "mlserver")]}}
    assert unacted_warnings(runtime) == [
        "SeldonRuntime financial-ml/financial-ml-runtime: spec.overrides[seldon-scheduler]: not used (Berth's "
        "one control plane schedules every namespace); kept",
        "SeldonRuntime financial-ml/financial-ml-runtime: spec.overrides[seldon-modelgateway]: not used (Berth's "
        "one gateway serves every namespace); kept",
        "SeldonRuntime financial-ml/financial-ml-runtime: spec.overrides[mlserver]: not used (mlserver is not a "
        "component of Seldon's default SeldonConfig; a Server's replicas come from its own spec.replicas); kept"]


def test_unknown_fields_stay_with_the_schema_warning_only() -> None:
    result = parse_text("apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: a}\n"
                        "spec: {storageUri: s3://b/k, colour: blue}\n", "m.yaml")
    assert result.warnings == ["m.yaml#1 Model/a: spec.colour: unknown field, kept and ignored"]
    assert unacted_warnings(result.documents[0].body) == []
    with pytest.raises(InvalidManifest):
        parse_text("apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {name: s}\nspec:\n"
                   "  serverConfig: mlserver\n  podSpec: {containers: [{name: agent, env: "
                   "[{name: SELDON_OVERCOMMIT_PERCENTAGE, value: lots}]}]}\n", "s.yaml")


junk = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["name", "env", "value", "valueFrom", "resourceFieldRef", "resource",
                                         "containerName", "divisor", "resources", "requests", "limits", "memory",
                                         "containers", "agent", "mlserver", "x"]), c, max_size=4),
                    max_leaves=15)


@settings(max_examples=200, deadline=None)
@given(pod=junk)
def test_any_pod_spec_shape_gives_lines_or_invalid_input_never_a_crash(pod: Any) -> None:
    unread_fields(pod)
    pod_spec_problems(pod)
    doc = server()
    doc["spec"]["podSpec"] = pod
    unacted_warnings(doc)
    try:
        shape(doc, config(agent(var("MEMORY_REQUEST", **ref()))))
    except InvalidInput:
        pass


# -- the scheduler never places on a server Berth does not run ------------------------------------------
def _docs(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [server(replicas=1), server(name="gpu", serverConfig="triton", replicas=2), *extra]


def _model(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": {"name": name, "namespace": NS},
            "spec": {"storageUri": "s3://b/k", **spec}}


def _plan(docs: list[dict[str, Any]], extra_replicas: tuple[ReplicaInfo, ...] = ()) -> dict[str, Any]:
    servers = [server_info(d) for d in docs if d["kind"] == "Server"]
    reps = dry_run_replicas(servers, memory=GiB) + list(extra_replicas)
    return dict(plan(snapshot_for(NS, docs, reps)).models)


def test_a_model_pinned_to_a_triton_server_fails_naming_it() -> None:
    mp = _plan(_docs(_model("pinned", requirements=["sklearn"], server="gpu")))["pinned"]
    assert mp.state == "ScheduleFailed" and [r.code for r in mp.reasons] == [UNSUPPORTED_SERVER]
    assert mp.message == ("Failed to schedule model as no matching servers are available: server gpu: "
                          + TRITON_TEXT)
    assert dict(mp.reasons[0].data) == {"serverConfig": "triton", "inferenceServer": "triton", "runs": "mlserver"}


def test_triton_servers_never_take_a_model_even_with_replicas_claiming_them() -> None:
    """A hand-started agent claiming the Triton server is left out of the snapshot."""
    claim = ReplicaInfo("gpu", NS, 0, ("sklearn",), memory=64 * GiB, ready=True)
    models = _plan(_docs(_model("a", requirements=["sklearn"], memory="2Gi")), (claim,))
    assert models["a"].state == "ScheduleFailed"
    assert {r.code for r in models["a"].reasons} == {UNSUPPORTED_SERVER, "InsufficientMemory"}
    assert "server gpu: serverConfig triton runs NVIDIA Triton" in models["a"].message
    assert _plan(_docs(_model("b", requirements=["sklearn"])))["b"].replicas[0].server == "mlserver"
    assert [r.server for r in dry_run_replicas([server_info(d) for d in _docs()], memory=GiB)] == ["mlserver"]


def test_even_a_hand_built_snapshot_never_places_on_a_triton_server() -> None:
    snap = Snapshot(NS, (ModelWant("m", NS, ("sklearn",)),),
                    (ServerInfo("gpu", NS, ("sklearn",), server_config="triton", inference_server="triton"),),
                    (ReplicaInfo("gpu", NS, 0, ("sklearn",), memory=GiB, ready=True),))
    mp = plan(snap).models["m"]
    assert (mp.state, [r.code for r in mp.reasons]) == ("ScheduleFailed", [UNSUPPORTED_SERVER])


@pytest.mark.parametrize("needs", [["onnx"], ["tensorflow", "sklearn"], ["pytorch-libtorch"], ["triton"]])
def test_requirements_only_triton_offers_fail_naming_them(needs: list[str]) -> None:
    mp = _plan(_docs(_model("m", requirements=needs)))["m"]
    triton_only = [n for n in needs if n != "sklearn"]
    assert mp.state == "ScheduleFailed" and [r.code for r in mp.reasons] == [REQUIRES_UNSUPPORTED_SERVER]
    word = "requirement" if len(triton_only) == 1 else "requirements"
    assert f"{word} {', '.join(triton_only)} " in mp.message
    assert "served by NVIDIA Triton, which Berth does not run, and no server Berth runs in namespace " \
           "financial-ml offers" in mp.message
    assert "Berth serves MLServer (runtimes: sklearn, xgboost, mlflow, lightgbm, python/custom)" in mp.message


def test_a_triton_requirement_an_mlserver_server_declares_is_placed() -> None:
    """Matching stays Seldon's: a custom MLServer runtime that declares onnx takes onnx models."""
    docs = _docs(server(name="custom", capabilities=["onnx", "python"]), _model("m", requirements=["onnx"]))
    assert _plan(docs)["m"].replicas[0].server == "custom"
    declared = _plan([server(name="gpu", serverConfig="triton", capabilities=["onnx"]),
                      _model("m", requirements=["onnx"])])["m"]
    assert "(declared by gpu, which runs Triton)" in declared.message
    pinned = _plan(_docs(_model("m", requirements=["onnx"], server="mlserver")))["m"]
    assert "and server mlserver does not offer it" in pinned.message
    plain = _plan(_docs(_model("m", requirements=["torch"])))["m"]  # not Triton-only: the usual reason
    assert {r.code for r in plain.reasons} >= {MISSING_CAPABILITIES}


# -- the control plane's decisions (pure parts) ----------------------------------------------------------
def test_the_provisioner_decides_memory_overcommit_and_whether_to_run() -> None:
    cfg = config(agent(var("MEMORY_REQUEST", **ref()), var("SELDON_OVERCOMMIT_PERCENTAGE", "25")), mlserver("3Gi"))
    got, note = decide(server(replicas=2), [cfg], replica_memory=GiB, overcommit_percent=10)
    assert (got, note) == (Shape(MLSERVER_CAPABILITIES, 3 * GiB, 25), None)
    got, note = decide(server(name="gpu", serverConfig="triton"), [cfg], replica_memory=GiB, overcommit_percent=10)
    assert got is None and note == f"server {NS}/gpu gets no replicas: {TRITON_TEXT}"
    bad = config(agent(var("MEMORY_REQUEST", **ref("nope"))), mlserver("3Gi"))
    got, note = decide(server(), [bad], replica_memory=GiB, overcommit_percent=10)
    assert got == Shape(MLSERVER_CAPABILITIES, GiB, 10)
    assert note is not None and "containerName: no container named nope" in note and note.endswith(
        "replicas offer --replica-memory and --overcommit instead")


def test_triton_server_and_server_config_are_not_ready_with_the_reason() -> None:
    srv = server(name="gpu", serverConfig="triton", replicas=2) | {"status": {}}
    srv["metadata"]["generation"] = 1
    st = server_status(srv, 2, [], 0.0)
    ready = st["conditions"][0]
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", UNSUPPORTED, TRITON_TEXT)
    assert st["readyReplicas"] == 0 and st["replicaStatus"][1]["message"] == \
        "not started: Berth does not run NVIDIA Triton"
    cfg = config(agent(var("SELDON_SERVER_TYPE", "triton")), name="triton")
    cst = server_config_status(cfg, ["gpu"], 0.0)
    assert (cst["conditions"][0]["status"], cst["conditions"][0]["reason"]) == ("False", UNSUPPORTED)
    assert cst["message"] == f"{TRITON_TEXT}; servers using it: gpu"
    ok = server_config_status(config(mlserver("1Gi")), [], 0.0)
    assert ok["conditions"][0]["status"] == "True" and "memory request" in ok["message"]
