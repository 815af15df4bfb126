"""``berth doctor``'s storage check runs on an enrolled agent of the model's namespace, never on the control
plane: a real control plane, a real agent (no inference server needed) and S3 served by moto on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from berth.adapters.mlserver_proc import free_port
from berth.agent.config import AgentConfig
from berth.agent.runner import run_agent
from berth.client.http import BerthClient
from tests.support.s3 import enforce_auth, moto_server, user_with_keys
from tests.support.servers import ControlPlane, LoopThread
from tests.support.tenants import SELDON, model


def _secret(name: str, endpoint: str, key_id: str, key: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "team-a"},
            "stringData": {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": key, "AWS_ENDPOINT_URL": endpoint}}


class Trap:
    """A TCP listener that counts the connections made to it (the endpoint a hostile tenant names)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def trap() -> Iterator[Trap]:
    t = Trap()
    yield t
    t.close()


def _agent(cp: ControlPlane, tmp_path: Path, token: str) -> LoopThread:
    cfg = AgentConfig(server="mlserver", replica=0, namespace="team-a", capabilities=("sklearn",), memory=1 << 30,
                      inference_http_port=free_port(), inference_grpc_port=free_port(), control_port=cp.port,
                      data_dir=tmp_path / "agent", token=token, reconnect_max=1.0, probe_timeout=0.5)
    return LoopThread(lambda stop: run_agent(cfg, stop))


def _wait_agent(admin: BerthClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(a.get("connected") for a in admin.agents("team-a")):
            return
        time.sleep(0.1)
    raise AssertionError(f"the agent did not connect in {timeout}s")


def test_storage_checks_run_on_the_agent(tmp_path: Path, trap: Trap) -> None:
    artifact = tmp_path / "iris"
    artifact.mkdir()
    (artifact / "model.joblib").write_bytes(b"x")
    with moto_server() as (endpoint, admin_s3), ControlPlane(tmp_path / "data") as cp:
        key_id, key = user_with_keys(admin_s3)
        boto3.client("s3", **admin_s3).create_bucket(Bucket="models")
        boto3.client("s3", **admin_s3).put_object(Bucket="models", Key="iris/v1/model.joblib", Body=b"x")
        enforce_auth(endpoint)
        admin = BerthClient(cp.url)
        admin.apply([
            {"apiVersion": SELDON, "kind": "Server", "metadata": {"name": "mlserver", "namespace": "team-a"},
             "spec": {"serverConfig": "mlserver", "replicas": 1}},
            _secret("good", endpoint, key_id, key), _secret("bad", endpoint, key_id, "not-the-key"),
            _secret("trap", trap.url, key_id, key),
            model("ok", "team-a", storageUri="s3://models/iris/v1", secretName="good"),
            model("wrongkeys", "team-a", storageUri="s3://models/iris/v1", secretName="bad"),
            model("noobject", "team-a", storageUri="s3://models/iris/v9", secretName="good"),
            model("trapped", "team-a", storageUri="s3://models/iris/v1", secretName="trap"),
            model("local", "team-a", storageUri=str(artifact)),
            model("nolocal", "team-a", storageUri=str(tmp_path / "absent")),
        ])
        # no agent connected: nothing is checked, and the control plane connected nowhere
        ans = admin.storage_check("team-a", "trapped")
        assert ans["checkedOn"] is None and ans["ok"] is True
        assert [c["ok"] for c in ans["checks"]] == [True, True, None, None]
        assert "no agent of namespace team-a is connected" in ans["checks"][3]["detail"]
        time.sleep(0.3)
        assert trap.accepted == 0
        token = admin.create_token("agent-a0", kind="agent", agent="team-a/mlserver/0")["token"]
        agent = _agent(cp, tmp_path, token).start()
        try:
            _wait_agent(admin)
            answers = {m: admin.storage_check("team-a", m) for m in
                       ("ok", "wrongkeys", "noobject", "local", "nolocal", "trapped")}
        finally:
            agent.stop()
    for ans in answers.values():
        assert ans["checkedOn"] == "team-a/mlserver/0"
    assert answers["ok"]["ok"] is True
    assert answers["ok"]["checks"][3]["detail"].startswith("s3://models/iris/v1 has objects (checked on replica")
    wrong = answers["wrongkeys"]["checks"][2]
    assert wrong["ok"] is False and wrong["detail"].startswith(f"credentials rejected by {endpoint}")
    assert "not-the-key" not in str(answers)
    assert answers["noobject"]["message"].startswith("no objects under s3://models/iris/v9")
    assert answers["local"]["checks"][3]["detail"].startswith(f"{artifact} exists on the agent's host")
    assert answers["nolocal"]["ok"] is False and "does not exist on the agent's host" in answers["nolocal"]["message"]
    assert trap.accepted >= 1  # the agent, not the control plane, went to the tenant's endpoint


def test_a_refused_location_is_never_tried(tmp_path: Path) -> None:
    """Models stored before a stricter policy are judged again: the answer names the rule and nothing else,
    whether the path exists or not."""
    data, store = tmp_path / "data", str(tmp_path / "data" / "berth.db")
    with ControlPlane(data, store=store) as cp:
        (tmp_path / "m1").mkdir()
        BerthClient(cp.url).apply([model("exists", "default", storageUri=str(tmp_path / "m1")),
                                   model("absent", "default", storageUri=str(tmp_path / "m2"))])
    policy = tmp_path / "policy.yaml"
    policy.write_text("default: {schemes: [file], fileRoots: [/srv/models]}\n")
    strict = ControlPlane(data, store=store)
    strict.opts.storage_policy = policy
    with strict:
        admin = BerthClient(strict.url)
        answers = [admin.storage_check("default", m) for m in ("exists", "absent")]
    for ans, path in zip(answers, (str(tmp_path / "m1"), str(tmp_path / "m2")), strict=True):
        assert [c["name"] for c in ans["checks"]] == ["secret", "policy", "credentials", "object"]
        assert ans["ok"] is False and ans["checkedOn"] is None
        assert ans["message"] == (f"refused by the storage policy: local path {path} is outside default.fileRoots "
                                  f"[/srv/models] of {policy} (namespace default)")
        assert [c["ok"] for c in ans["checks"][2:]] == [None, None]
    assert str(answers[0]).replace("/m1", "/P") == str(answers[1]).replace("/m2", "/P")
