"""`berth control --store kubernetes`, the real process, against the emulated API server; and the `berth`
CLI reading that cluster as kubectl does (--kubeconfig or KUBECONFIG, no --server).

Custom resources applied to the API get their statuses written back (status subresource, Berth's reasons,
observedGeneration); a Server becomes a StatefulSet and a headless Service; an agent enrols with its pod's
projected token (TokenReview), and nothing else enrols; deleting the Server removes its objects.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from typer.testing import CliRunner, Result

from berth.adapters.mlserver_proc import free_port
from berth.cli.app import build
from berth.kube.flows import REPLICA, pod_labels
from berth.store.kubernetes import KubernetesStore
from berth.wire import agent as wire
from tests.kube.apiserver import ApiServer
from tests.support.seeds import EXAMPLES
from tests.support.servers import wait_http

NS = "financial-ml"
LAUNCH = [str(Path(sys.executable).parent / "berth")]  # the installed command, as a user runs it


class ControlProcess:
    """``berth control --store kubernetes`` as a child process on a free loopback port."""

    def __init__(self, api: ApiServer, folder: Path, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "control.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        env.pop("KUBECONFIG", None)
        self.proc = subprocess.Popen(
            [*LAUNCH, "control", "--store", "kubernetes", "--kubeconfig", str(api.kubeconfig), "--port",
             str(self.port), "--data-dir", str(folder / "data"), "--image", "berth:test", *extra],
            env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ApiServer, KubernetesStore, ControlProcess]]:
    with ApiServer(tmp_path) as api:
        store = KubernetesStore(kubeconfig=str(api.kubeconfig))  # the test's kubectl
        control = ControlProcess(api, tmp_path)
        try:
            assert wait_http(control.url + "/healthz", 30), control.output()
            yield api, store, control
        finally:
            control.stop()
            store.close()
    assert "Traceback" not in control.output(), control.output()


def example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / "financial-ml" / name).read_text()) if d]


def objects(api: ApiServer, plural: str) -> dict[str, dict[str, Any]]:
    snapshot: dict[Any, dict[str, Any]] = api._sync(lambda: copy.deepcopy(api.objects))  # on its own thread
    return {name: obj for (p, ns, name), obj in snapshot.items() if p == plural and ns == NS}


def until(what: str, check: Callable[[], Any], control: ControlProcess, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s; control plane said:\n{control.output()}")


def condition(doc: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (doc.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def connect_agent(url: str, token: str, replica: int) -> list[dict[str, Any]]:
    """Pose as the agent of replica ``replica`` with ``token``; the frames got until the connection closes
    or for one second after a welcome."""

    async def run() -> list[dict[str, Any]]:
        hello = wire.Hello(namespace=NS, server="mlserver", replica=replica, capabilities=["sklearn"],
                           memory=1 << 30, readiness=wire.Readiness(ready=False, error="starting"))
        frames: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as s, s.ws_connect(
                url + wire.AGENT_PATH, headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send_str(wire.dump(hello))
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frames.append(json.loads(msg.data))
                if frames[0]["type"] == "welcome":
                    deadline = min(deadline, time.monotonic() + 1)
        return frames

    return asyncio.run(run())


def test_control_plane_on_the_kubernetes_api(cluster: tuple[ApiServer, KubernetesStore, ControlProcess]) -> None:
    api, store, control = cluster
    for doc in (example("00-runtime.yaml") + example("05-secret.yaml") + example("10-server.yaml")
                + example("20-models.yaml")):
        store.apply(doc)

    # statuses come back through the status subresource, with Berth's reasons and observedGeneration
    def failed() -> dict[str, Any] | None:
        model = store.get("Model", NS, "baseline-predictor")
        cond = condition(model, "ModelReady")
        return model if cond is not None and cond["reason"] == "ScheduleFailed" else None

    model = until("the model's ScheduleFailed status", failed, control)
    message = condition(model, "ModelReady")["message"]  # type: ignore[index]
    assert message.startswith("Failed to schedule model as no matching servers are available")
    assert "server mlserver has no connected replicas (0 of 1)" in message, message
    assert model["status"]["observedGeneration"] == model["metadata"]["generation"]
    status_writes = [r for r in api.requests if r[0] == "PUT" and r[1].endswith("/models/baseline-predictor/status")]
    assert status_writes, "the status was not written through the status subresource"
    cli_reads_the_cluster(api, message)

    # the Server became a StatefulSet (the install's image) and a headless Service, owned by the Server
    server = store.get("Server", NS, "mlserver")
    sts = until("the StatefulSet", lambda: objects(api, "statefulsets").get("mlserver"), control)
    svc = until("the Service", lambda: objects(api, "services").get("mlserver"), control)
    assert sts["metadata"]["ownerReferences"][0]["uid"] == server["metadata"]["uid"]
    assert svc["spec"]["clusterIP"] == "None"
    images = {c["name"]: c["image"] for c in sts["spec"]["template"]["spec"]["containers"]}
    assert images == {"agent": "berth:test", "mlserver": "berth:test"}
    until("the namespace's gateway", lambda: objects(api, "deployments").get("berth-gateway"), control)

    # an agent enrols with its pod's projected token (TokenReview); nothing else does
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "mlserver-0", "namespace": NS, "uid": str(uuid.uuid4()), "labels": pod_labels(REPLICA, "mlserver"),
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "mlserver",
                             "uid": sts["metadata"]["uid"], "controller": True}]}, "spec": {"containers": []}}
    api._sync(lambda: api.objects.__setitem__(("pods", NS, "mlserver-0"), pod))
    token = api.issue_token(NS, "berth-server", ["berth"], pod)
    wrong_audience = api.issue_token(NS, "berth-server", ["https://kubernetes.default.svc"], pod)
    tenant_account = api.issue_token(NS, "default", ["berth"], pod)
    for bad in (wrong_audience, tenant_account, "not-a-token"):
        frames = connect_agent(control.url, bad, 0)
        assert frames and frames[0]["type"] == "error" and frames[0]["code"] == "Unauthenticated", frames
    frames = connect_agent(control.url, token, 1)  # replica 0's token claiming replica 1
    assert frames and frames[0]["type"] == "error" and frames[0]["code"] == "Forbidden", frames
    frames = connect_agent(control.url, token, 0)
    assert frames and frames[0]["type"] == "welcome", frames

    # deleting the Server removes its StatefulSet and Service
    store.delete("Server", NS, "mlserver")
    until("the StatefulSet's removal", lambda: "mlserver" not in objects(api, "statefulsets"), control)
    until("the Service's removal", lambda: "mlserver" not in objects(api, "services"), control)
    assert "berth-gateway" in objects(api, "deployments")  # the runtime's gateway stays


def berth(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(build(), list(args), env=env)


def failure(result: Result) -> str:
    """The one line a refused command prints (berth.main prints the error the app raises)."""
    assert result.exit_code != 0, result.output
    return getattr(result.exception, "message", "") or result.output


def cli_reads_the_cluster(api: ApiServer, message: str) -> None:
    """`berth get`, `describe` and `wait` with --kubeconfig (or KUBECONFIG) and no --server read the cluster."""
    kube = ["--kubeconfig", str(api.kubeconfig)]
    listed = berth(*kube, "get", "models", "-n", NS, "-o", "wide")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "baseline-predictor" in line)
    assert "False" in row and "ScheduleFailed" in row, listed.output
    shown = berth("get", "servers", "-n", NS, env={"KUBECONFIG": str(api.kubeconfig)})  # as kubectl finds it
    assert shown.exit_code == 0 and "mlserver" in shown.output, shown.output
    described = berth(*kube, "describe", "model", "baseline-predictor", "-n", NS)
    assert described.exit_code == 0 and "server mlserver has no connected replicas" in described.output, \
        described.output
    met = berth(*kube, "wait", "model/baseline-predictor", "--for", "condition=ModelReady=False", "-n", NS,
                "--timeout", "20s")
    assert met.exit_code == 0 and "condition met" in met.output, met.output
    unmet = berth(*kube, "wait", "model/baseline-predictor", "--for", "condition=ModelReady", "-n", NS,
                  "--timeout", "1s")
    assert "ScheduleFailed" in failure(unmet)
    secret = berth(*kube, "get", "secret", "ml-platform", "-n", NS, "-o", "json")
    assert secret.exit_code == 0 and "example-secret-key" not in secret.output, secret.output
    assert json.loads(secret.output)["data"] == {"s3": "<redacted>"}
    refused = berth(*kube, "delete", "model", "baseline-predictor", "-n", NS)
    assert "kubectl delete" in failure(refused)
    missing = berth(*kube, "get", "model", "nope", "-n", NS)
    assert "nope" in failure(missing) and api.url in failure(missing)


def test_an_unreachable_cluster_or_a_wrong_flag_is_one_line(tmp_path: Path) -> None:
    dead = tmp_path / "kubeconfig"
    dead.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}]}))
    base = [*LAUNCH, "control", "--store", "kubernetes", "--kubeconfig", str(dead), "--port", str(free_port()),
            "--data-dir", str(tmp_path / "data")]
    for extra, said in (([], "is unreachable"), (["--provision"], "drop --provision")):
        done = subprocess.run(base + extra, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "list models to watch them" in subprocess.run(base, capture_output=True, text=True, timeout=60).stderr
