"""A test harness that plays the kubelet (and the StatefulSet controller) for Berth's pods, without containers.

For every StatefulSet in the emulated API server it creates the pods ``NAME-0 … NAME-(replicas-1)`` through
the API (labels from the pod template, owned by the StatefulSet), and runs each pod's containers as local
processes from the template's own ``command``, ``args`` and ``env``:

- **env** as the kubelet resolves it: ``fieldRef`` (``metadata.name``, ``metadata.namespace``,
  ``status.podIP`` → 127.0.0.1), ``resourceFieldRef`` (``requests.memory`` of a container, in bytes);
- **volumes** become folders of the pod (``emptyDir``; a ``projected`` ServiceAccount token is issued by the
  API server for the pod's ServiceAccount and audience, bound to the pod, and written there); a path under
  a mount in an env value or argument is rewritten to that folder;
- **network**: the pods share the host's loopback (no network namespace here), so each pod gets distinct
  ports: every container port, and every ``*_PORT`` variable, is mapped to a free port of its own, except
  a Service's port (``services``: ``{host: {port: real port}}``), which maps to what the test runs; a
  ``*.svc`` host becomes 127.0.0.1;
- **readiness**: a container's ``readinessProbe`` (``httpGet``) is polled on its mapped port and the pod's
  ``Ready`` condition written back through ``pods/status``;
- **restarts**: a container whose process exits is started again (``restartPolicy: Always``), as a kubelet
  heals a crashed MLServer; a pod whose StatefulSet is gone or scaled down is stopped and deleted.

Commands are found beside this interpreter (``berth``, ``mlserver``: the image's ``PATH``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from berth.adapters.mlserver_proc import free_port
from berth.resources.quantity import parse_quantity
from tests.kube.apiserver import ApiServer

BIN = Path(sys.executable).parent


@dataclass
class Container:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    probe: tuple[str, int] | None  # (path, host port) of its readinessProbe
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0


@dataclass
class Pod:
    namespace: str
    name: str
    doc: dict[str, Any]
    ports: dict[int, int]  # container port (or *_PORT value) -> host port
    containers: list[Container] = field(default_factory=list)
    ready: bool = False

    def container(self, name: str) -> Container:
        return next(c for c in self.containers if c.name == name)


class Kubelet:
    def __init__(self, api: ApiServer, folder: Path, services: dict[str, dict[int, int]]) -> None:
        self.api, self.folder, self.services = api, folder, services
        self.pods: dict[tuple[str, str], Pod] = {}
        self.http = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.token}"}, timeout=10)

    # -- the StatefulSet controller's part ---------------------------------------------------------------
    def sync(self) -> None:
        """Start missing pods, stop the ones no StatefulSet wants, restart exited containers, report readiness."""
        sets = self.http.get("/apis/apps/v1/statefulsets").json().get("items") or []
        wanted: set[tuple[str, str]] = set()
        for sts in sets:
            ns, name = sts["metadata"]["namespace"], sts["metadata"]["name"]
            for i in range(int(sts["spec"].get("replicas", 1))):
                key = (ns, f"{name}-{i}")
                wanted.add(key)
                if key not in self.pods:
                    self.pods[key] = self._start(sts, i)
        for key in [k for k in self.pods if k not in wanted]:
            self._remove(self.pods.pop(key))
        for pod in self.pods.values():
            for c in pod.containers:
                if c.proc is not None and c.proc.poll() is not None:
                    c.restarts += 1
                    self._run(c)
            self._report(pod)

    def _start(self, sts: dict[str, Any], index: int) -> Pod:
        ns, name = sts["metadata"]["namespace"], f"{sts['metadata']['name']}-{index}"
        template = sts["spec"]["template"]
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": ns, "labels": {**template["metadata"].get("labels", {}),
                                                      "statefulset.kubernetes.io/pod-name": name},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"],
                                 "uid": sts["metadata"]["uid"], "controller": True}]},
            "spec": template["spec"]}
        created = self.http.post(f"/api/v1/namespaces/{ns}/pods", json=body)
        created.raise_for_status()
        doc = created.json()
        spec = template["spec"]
        root = self.folder / ns / name
        mounts = self._volumes(doc, spec, root)
        ports: dict[int, int] = {}
        for c in spec["containers"]:
            for p in c.get("ports") or []:
                ports.setdefault(int(p["containerPort"]), free_port())
        pod = Pod(ns, name, doc, ports)
        for c in spec["containers"]:
            env = self._env(pod, c, spec, mounts)
            argv = [_path(a, mounts.get(c["name"], {})) for a in [*c.get("command", []), *c.get("args", [])]]
            argv[0] = str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0]
            probe = (c.get("readinessProbe") or {}).get("httpGet")
            named = {p.get("name"): int(p["containerPort"]) for p in c.get("ports") or []}
            probe_at = (probe["path"], ports[named.get(probe["port"], probe["port"])]) if probe else None
            container = Container(c["name"], argv, env, root / f"{c['name']}.log", probe_at)
            pod.containers.append(container)
            self._run(container)
        return pod

    def _volumes(self, doc: dict[str, Any], spec: dict[str, Any], root: Path) -> dict[str, dict[str, Path]]:
        """Each container's mounts: mountPath -> the pod's folder for that volume."""
        folders: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            folder = root / "volumes" / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            folders[volume["name"]] = folder
            for source in (volume.get("projected") or {}).get("sources") or []:
                token = source.get("serviceAccountToken")
                if token is not None:
                    issued = self.api.issue_token(doc["metadata"]["namespace"], spec["serviceAccountName"],
                                                  [token["audience"]], doc)
                    (folder / token["path"]).write_text(issued)
        return {c["name"]: {m["mountPath"]: folders[m["name"]] for m in c.get("volumeMounts") or []}
                for c in spec["containers"]}

    def _env(self, pod: Pod, c: dict[str, Any], spec: dict[str, Any],
             mounts: dict[str, dict[str, Path]]) -> dict[str, str]:
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(self.folder / pod.namespace / pod.name),
               "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
        for item in c.get("env") or []:
            name = item["name"]
            if "value" in item:
                value = str(item["value"])
            else:
                ref = item.get("valueFrom") or {}
                if "fieldRef" in ref:
                    value = {"metadata.name": pod.name, "metadata.namespace": pod.namespace,
                             "status.podIP": "127.0.0.1"}[ref["fieldRef"]["fieldPath"]]
                else:
                    res = ref["resourceFieldRef"]
                    target = next(x for x in spec["containers"] if x["name"] == res.get("containerName", c["name"]))
                    kind, _, what = res["resource"].partition(".")
                    value = str(parse_quantity((target.get("resources") or {}).get(kind, {}).get(what, 0)))
            env[name] = self._net(name, _path(value, mounts.get(c["name"], {})), pod)
        return env

    def _net(self, name: str, value: str, pod: Pod) -> str:
        if value == "0.0.0.0" or re.fullmatch(r"[a-z0-9.-]+\.svc(\.cluster\.local)?", value):
            return "127.0.0.1"  # a pod's own addresses, and a Service's, are the host's loopback here
        if name.endswith("_PORT") and value.isdigit():
            port = int(value)
            for ports in self.services.values():
                if port in ports:
                    return str(ports[port])
            return str(pod.ports.setdefault(port, free_port()))
        return value

    # -- the kubelet's part ----------------------------------------------------------------------------------
    def _run(self, c: Container) -> None:
        with c.log.open("a") as log:
            c.proc = subprocess.Popen(c.argv, env=c.env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=c.env["HOME"])

    def _report(self, pod: Pod) -> None:
        ready = all(c.probe is None or _answers(*c.probe) for c in pod.containers)
        if ready == pod.ready:
            return
        current = self.http.get(f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}").json()
        current["status"] = {"phase": "Running", "podIP": "127.0.0.1", "conditions": [
            {"type": "Ready", "status": "True" if ready else "False"}]}
        if self.http.put(f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status", json=current).is_success:
            pod.ready = ready

    def _remove(self, pod: Pod) -> None:
        for c in pod.containers:
            _stop(c)
        self.http.request("DELETE", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}", json={})

    def kill(self, pod: tuple[str, str], container: str) -> int:
        """SIGKILL one container's process (as an OOM kill would); the next ``sync`` starts it again."""
        proc = self.pods[pod].container(container).proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return proc.pid

    def close(self) -> None:
        for pod in self.pods.values():
            for c in pod.containers:
                _stop(c)
        self.pods.clear()
        self.http.close()


def _path(value: str, mounts: dict[str, Path]) -> str:
    for mount, folder in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if value == mount or value.startswith(mount + "/"):
            return str(folder) + value[len(mount):]
    return value


def _answers(path: str, port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(c: Container) -> None:
    if c.proc is None or c.proc.poll() is not None:
        return
    try:
        os.killpg(c.proc.pid, signal.SIGTERM)
        c.proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(c.proc.pid, signal.SIGKILL)
        c.proc.wait(5)
    except ProcessLookupError:
        pass
