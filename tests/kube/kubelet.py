"""A test harness that plays the kubelet (and the StatefulSet and Deployment controllers) for Berth's pods,
without containers.

For every StatefulSet in the emulated API server it creates the pods ``NAME-0 … NAME-(replicas-1)`` through
the API (labels from the pod template, owned by the StatefulSet), and for every Deployment the pods
``NAME-HASH-N`` (owned by the ReplicaSet ``NAME-HASH`` a Deployment controller would make, ``HASH`` from the
pod template, so a changed template replaces them), and runs each pod's containers as local processes from
the template's own ``command``, ``args`` and ``env``:

- **env** as the kubelet resolves it: ``fieldRef`` (``metadata.name``, ``metadata.namespace``,
  ``status.podIP``), ``resourceFieldRef`` (``requests.memory`` of a container, in bytes);
- **volumes** become folders of the pod (``emptyDir``; a ``projected`` ServiceAccount token is issued by the
  API server for the pod's ServiceAccount and audience, bound to the pod, and written there); a path under
  a mount in an env value or argument is rewritten to that folder;
- **network** (tests/kube/podnet.py): as root with ``ip netns``, each pod gets a network namespace of its own
  (its own ``127.0.0.1``, shared by its containers only) joined to a bridge the harness makes, its IP
  ``10.244.X.N`` on it; its containers run inside through ``ip netns exec`` and keep their ports. Else (the
  fallback) each pod gets ``127.0.0.N`` on the host's loopback (Linux answers the whole 127/8 on ``lo``),
  what ``0.0.0.0`` means in its env; its ``127.0.0.1`` is then the host's, shared, so every container port,
  and every ``*_PORT`` variable, is mapped to a free port of its own. Either way the IP is the pod's
  ``status.podIP``, a Service's port (``services``: ``{host: {port: real port}}``) maps to what the test runs,
  and a ``*.svc`` host, or a ``http://HOST.svc:PORT`` URL's, becomes the address the test's services listen on
  for the pods (``network.host``: the bridge's address, or 127.0.0.1), with the Service's port;
- **readiness**: a container's ``readinessProbe`` (``httpGet`` or ``tcpSocket``) is polled at the pod's IP on
  its mapped port, as a kubelet probes, and the pod's ``Ready`` condition and IP written back through
  ``pods/status``;
- **restarts**: a container whose process exits is started again (``restartPolicy: Always``), as a kubelet
  heals a crashed MLServer; a pod whose StatefulSet is gone or scaled down is stopped and deleted.

``exec`` runs a command in a pod's network (``kubectl exec``), ``connects`` says whether a TCP connection from
a pod (or the host) is accepted: what the tests check the pods' isolation with.

Commands are found beside this interpreter (``berth``, ``mlserver``: the image's ``PATH``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from berth.adapters.mlserver_proc import free_port
from berth.resources.quantity import parse_quantity
from tests.kube.apiserver import ApiServer
from tests.kube.podnet import PodNetwork, pod_network

BIN = Path(sys.executable).parent


@dataclass
class Container:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    probe: tuple[str | None, int] | None  # (path, host port) of its readinessProbe (path None: tcpSocket)
    launch: list[str] = field(default_factory=list)  # what starts it in its pod's network namespace (or nothing)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0


@dataclass
class Pod:
    namespace: str
    name: str
    doc: dict[str, Any]
    ports: dict[int, int]  # container port (or *_PORT value) -> port it listens on (the same in a namespace)
    ip: str  # its own: 10.244.X.N in its network namespace, or 127.0.0.N
    containers: list[Container] = field(default_factory=list)
    ready: bool = False

    def container(self, name: str) -> Container:
        return next(c for c in self.containers if c.name == name)


class Kubelet:
    def __init__(self, api: ApiServer, folder: Path, services: dict[str, dict[int, int]],
                 network: PodNetwork | None = None) -> None:
        self.api, self.folder, self.services = api, folder, services
        self.pods: dict[tuple[str, str], Pod] = {}
        self.network = network if network is not None else pod_network()
        try:
            if not self.network.shared_loopback:  # the pods reach the API server at the bridge's address too
                asyncio.run_coroutine_threadsafe(_listen(api, self.network.host), api._loop).result(10)
        except BaseException:
            self.network.close()
            raise
        self.http = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.token}"}, timeout=10)

    # -- the StatefulSet controller's part ---------------------------------------------------------------
    def sync(self) -> None:
        """Start missing pods, stop the ones no StatefulSet wants, restart exited containers, report readiness."""
        sets = self.http.get("/apis/apps/v1/statefulsets").json().get("items") or []
        wanted: set[tuple[str, str]] = set()
        for sts in sets:
            ns, name = sts["metadata"]["namespace"], sts["metadata"]["name"]
            owner = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name, "uid": sts["metadata"]["uid"],
                     "controller": True}
            for i in range(int(sts["spec"].get("replicas", 1))):
                key = (ns, f"{name}-{i}")
                wanted.add(key)
                if key not in self.pods:
                    self.pods[key] = self._start(ns, key[1], sts["spec"]["template"], owner,
                                                 {"statefulset.kubernetes.io/pod-name": key[1]})
        for deployment in self.http.get("/apis/apps/v1/deployments").json().get("items") or []:
            ns, template = deployment["metadata"]["namespace"], deployment["spec"]["template"]
            digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
            replica_set = f"{deployment['metadata']['name']}-{digest}"
            owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set, "controller": True,
                     "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, deployment["metadata"]["uid"] + digest))}
            for i in range(int(deployment["spec"].get("replicas", 1))):
                key = (ns, f"{replica_set}-{i}")
                wanted.add(key)
                if key not in self.pods:
                    self.pods[key] = self._start(ns, key[1], template, owner, {"pod-template-hash": digest})
        for key in [k for k in self.pods if k not in wanted]:
            self._remove(self.pods.pop(key))
        for pod in self.pods.values():
            for c in pod.containers:
                if c.proc is not None and c.proc.poll() is not None:
                    c.restarts += 1
                    self._run(c)
            self._report(pod)

    def pod_of(self, namespace: str, prefix: str) -> Pod | None:
        """The first pod of ``namespace`` whose name starts with ``prefix`` (a Deployment's pods: NAME-)."""
        return next((p for (ns, name), p in sorted(self.pods.items()) if ns == namespace and name.startswith(prefix)),
                    None)

    def _start(self, ns: str, name: str, template: dict[str, Any], owner: dict[str, Any],
               labels: dict[str, str]) -> Pod:
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": ns, "labels": {**template["metadata"].get("labels", {}), **labels},
            "ownerReferences": [owner]}, "spec": template["spec"]}
        created = self.http.post(f"/api/v1/namespaces/{ns}/pods", json=body)
        created.raise_for_status()
        doc = created.json()
        spec = template["spec"]
        root = self.folder / ns / name
        root.mkdir(parents=True, exist_ok=True)  # its HOME and its containers' logs, with or without volumes
        mounts = self._volumes(doc, spec, root)
        ports: dict[int, int] = {}
        for c in spec["containers"]:
            for p in c.get("ports") or []:
                port = int(p["containerPort"])
                ports.setdefault(port, free_port() if self.network.shared_loopback else port)
        pod = Pod(ns, name, doc, ports, self.network.attach(ns, name))
        self.api.pod_ports[pod.ip] = ports  # what the API server's service proxy forwards to
        launch = self.network.launcher(pod.ip)
        for c in spec["containers"]:
            env = self._env(pod, c, spec, mounts)
            argv = [_path(a, mounts.get(c["name"], {})) for a in [*c.get("command", []), *c.get("args", [])]]
            argv[0] = str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0]
            readiness = c.get("readinessProbe") or {}
            probe = readiness.get("httpGet") or readiness.get("tcpSocket")
            named = {p.get("name"): int(p["containerPort"]) for p in c.get("ports") or []}
            probe_at = (probe.get("path"), ports[named.get(probe["port"], probe["port"])]) if probe else None
            container = Container(c["name"], argv, env, root / f"{c['name']}.log", probe_at, launch)
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
                             "status.podIP": pod.ip}[ref["fieldRef"]["fieldPath"]]
                else:
                    res = ref["resourceFieldRef"]
                    target = next(x for x in spec["containers"] if x["name"] == res.get("containerName", c["name"]))
                    kind, _, what = res["resource"].partition(".")
                    value = str(parse_quantity((target.get("resources") or {}).get(kind, {}).get(what, 0)))
            env[name] = self._net(name, _path(value, mounts.get(c["name"], {})), pod)
        return env

    def _net(self, name: str, value: str, pod: Pod) -> str:
        shared = self.network.shared_loopback
        if value == "0.0.0.0" and shared:
            return pod.ip  # every address of the pod: its IP here (its 127.0.0.1 is the host's, shared)
        if re.fullmatch(r"[a-z0-9.-]+\.svc(\.cluster\.local)?", value):
            return self.network.host  # a Service's: where the test runs it for the pods
        url = re.fullmatch(r"(https?://)([a-z0-9.-]+\.svc(?:\.cluster\.local)?):(\d+)(/.*)?", value)
        if url is not None:  # a Service's URL: what the test runs behind that Service
            port = self.services.get(url[2], {}).get(int(url[3]), int(url[3]))
            return f"{url[1]}{self.network.host}:{port}{url[4] or ''}"
        if name.endswith("_PORT") and value.isdigit():
            port = int(value)
            for ports in self.services.values():
                if port in ports:
                    return str(ports[port])
            return str(pod.ports.setdefault(port, free_port() if shared else port))
        return value

    # -- the kubelet's part ----------------------------------------------------------------------------------
    def _run(self, c: Container) -> None:
        with c.log.open("a") as log:
            c.proc = subprocess.Popen([*c.launch, *c.argv], env=c.env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=c.env["HOME"])

    def _report(self, pod: Pod) -> None:
        ready = all(c.probe is None or _answers(pod.ip, *c.probe) for c in pod.containers)
        if ready == pod.ready:
            return
        current = self.http.get(f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}").json()
        current["status"] = {"phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}], "conditions": [
            {"type": "Ready", "status": "True" if ready else "False"}]}
        if self.http.put(f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status", json=current).is_success:
            pod.ready = ready

    def _remove(self, pod: Pod) -> None:
        try:
            for c in pod.containers:
                _stop(c)
        finally:
            self.network.detach(pod.ip)
        self.http.request("DELETE", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}", json={})

    def exec(self, pod: Pod, argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``pod``'s network, as ``kubectl exec`` would (in the fallback: on the host)."""
        return subprocess.run([*self.network.launcher(pod.ip), *argv], capture_output=True, text=True,
                              timeout=timeout, env={"PATH": f"{BIN}:/usr/bin:/bin", "LANG": "C.UTF-8"})

    def connects(self, pod: Pod | None, host: str, port: int) -> bool:
        """Whether a TCP connection to ``host:port`` from inside ``pod`` (None: from the host) is accepted."""
        if pod is None:
            try:
                socket.create_connection((host, port), timeout=3).close()
                return True
            except OSError:
                return False
        probe = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)"
                 "\nexcept OSError:\n    sys.exit(3)")
        done = self.exec(pod, [sys.executable, "-c", probe, host, str(port)])
        assert done.returncode in (0, 3), f"could not run a probe in pod {pod.name} ({done.returncode}): {done.stderr}"
        return done.returncode == 0

    def kill(self, pod: tuple[str, str], container: str) -> int:
        """SIGKILL one container's process (as an OOM kill would); the next ``sync`` starts it again."""
        proc = self.pods[pod].container(container).proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return proc.pid

    def close(self) -> None:
        """Stop every pod's containers, then take the pods' network down (even when a stop fails)."""
        try:
            for pod in self.pods.values():
                for c in pod.containers:
                    _stop(c)
        finally:
            self.pods.clear()
            self.http.close()
            self.network.close()


async def _listen(api: ApiServer, host: str) -> None:
    """The emulated API server also on ``host`` (the bridge's address), same port: pods reach it there."""
    assert api._runner is not None
    await web.TCPSite(api._runner, host, api.port).start()


def _path(value: str, mounts: dict[str, Path]) -> str:
    for mount, folder in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if value == mount or value.startswith(mount + "/"):
            return str(folder) + value[len(mount):]
    return value


def _answers(ip: str, path: str | None, port: int) -> bool:
    if path is None:  # a tcpSocket probe
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return True
        except OSError:
            return False
    try:
        return httpx.get(f"http://{ip}:{port}{path}", timeout=1).status_code == 200
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
