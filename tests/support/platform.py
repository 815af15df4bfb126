"""The whole platform for end-to-end tests: a control plane with the local provisioner (real agents
and MLServer processes) and a gateway, in this process's background threads, on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from berth.adapters.mlserver_proc import free_ports
from berth.client.gateway import GatewayClient, InferResult
from berth.client.http import BerthClient
from berth.errors import ModelNotReady
from berth.gateway.app import run_gateway
from tests.support.servers import ControlPlane, LoopThread, wait_http

SELDON = "mlops.seldon.io/v1alpha1"


def model_doc(name: str, uri: str, *, namespace: str = "default", requirements: list[str] | None = None,
              **spec: Any) -> dict[str, Any]:
    return {"apiVersion": SELDON, "kind": "Model", "metadata": {"name": name, "namespace": namespace},
            "spec": {"storageUri": uri, "requirements": requirements or ["sklearn"], **spec}}


def server_doc(name: str, *, namespace: str = "default", replicas: int = 1,
               capabilities: list[str] | None = None) -> dict[str, Any]:
    return {"apiVersion": SELDON, "kind": "Server", "metadata": {"name": name, "namespace": namespace},
            "spec": {"serverConfig": "mlserver", "replicas": replicas,
                     "capabilities": capabilities or ["sklearn", "mlflow", "python", "numpy"]}}


class Platform:
    def __init__(self, data_dir: Path, *, provision: bool = True) -> None:
        self.control = ControlPlane(data_dir, store=str(data_dir / "berth.db"), provision=provision)
        self.gateway_port, self.grpc_port = free_ports(2)
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.gateway_grpc = f"127.0.0.1:{self.grpc_port}"

        async def gw(stop: asyncio.Event) -> None:
            await run_gateway("127.0.0.1", self.gateway_port, self.control.url, stop, grpc_port=self.grpc_port,
                              token=self.control.admin_token)

        self._gateway = LoopThread(gw)
        self.client: BerthClient
        self.gateway: GatewayClient

    def __enter__(self) -> Platform:
        self.control.__enter__()
        self._gateway.start()
        self.client = BerthClient(self.control.url, token=self.control.admin_token)
        self.gateway = GatewayClient(self.gateway_url)
        if not wait_http(f"{self.gateway_url}/v2/health/live", 20):
            self._gateway.check()
            raise RuntimeError(f"the gateway at {self.gateway_url} did not answer /v2/health/live in 20 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.gateway.close()
        self.client.close()
        try:
            self._gateway.stop()  # raises if the gateway crashed during the test
        finally:
            self.control.__exit__(*exc)

    def wait_model(self, name: str, namespace: str = "default", *, state: str = "ModelAvailable",
                   available: int | None = None, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = self.client.get("Model", namespace, name).get("status") or {}
            if st.get("state") == state and (available is None or st.get("availableReplicas") == available):
                return st
            time.sleep(0.1)
        raise AssertionError(f"model {namespace}/{name} not {state} (available={available}) in {timeout}s; "
                             f"last status: {st.get('state')}: {st.get('message')}")

    def infer_served(self, name: str, payload: dict[str, Any], namespace: str = "default",
                     timeout: float = 30.0) -> InferResult:
        """``gateway.infer`` once the gateway serves the model: its routes come from a watch and may trail the
        status ``wait_model`` saw by a publication, so ModelNotReady is retried until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.gateway.infer(name, payload, namespace=namespace)
            except ModelNotReady:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def wait_server(self, name: str, namespace: str = "default", *, ready_replicas: int,
                    timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = self.client.get("Server", namespace, name).get("status") or {}
            if st.get("readyReplicas") == ready_replicas and st.get("replicas") == ready_replicas:
                return st
            time.sleep(0.1)
        raise AssertionError(f"server {namespace}/{name} not at {ready_replicas} ready replicas in {timeout}s; "
                             f"last status: {st}")

    def routed_endpoints(self, name: str, namespace: str = "default") -> list[str]:
        for route in self.client.routes()["models"]:
            if route["name"] == name and route["namespace"] == namespace:
                return sorted(f"{e['server']}/{e['replica']}" for e in route["endpoints"])
        return []


@contextmanager
def manual_agent(platform: Platform, data: Path, *, server: str, namespace: str, http_port: int,
                 replica: int = 0) -> Iterator[subprocess.Popen[bytes]]:
    """`berth agent` started by hand (as on another host), pointed at an inference server port, enrolled as an
    admin would: a token minted for exactly this replica in the control plane's registry, given in a file."""
    from berth.control.tokens import TokenRegistry
    from berth.resources.identity import AgentIdentity

    registry = TokenRegistry(platform.control.opts.data_dir / "auth.db")  # the control plane's auth.db
    try:
        token = registry.create(f"manual.{namespace}.{server}.{replica}.{os.urandom(4).hex()}", kind="agent",
                                agent=AgentIdentity(namespace, server, replica))
    finally:
        registry.close()
    data.mkdir(parents=True, exist_ok=True)
    token_file = data / "agent.token"
    with os.fdopen(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(token + "\n")
    env = dict(os.environ, BERTH_DATA_DIR=str(data))
    agent = subprocess.Popen(
        [sys.executable, "-m", "berth.main", "agent", "--server", server, "--replica", str(replica),
         "--namespace", namespace, "--capabilities", "sklearn", "--memory", "1Gi",
         "--inference-http-port", str(http_port), "--control", f"127.0.0.1:{platform.control.port}",
         "--token-file", str(token_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield agent
    finally:
        agent.terminate()
        agent.wait(10)
