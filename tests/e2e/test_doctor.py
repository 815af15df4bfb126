"""`berth doctor` against the real platform: a healthy namespace passes; each broken link is a ✗ row that
names the address or object, the error and the fix; the command exits 1 when anything fails."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from berth.adapters.mlserver_proc import free_port
from tests.support.models import train_sklearn
from tests.support.platform import Platform, manual_agent, model_doc, server_doc
from tests.support.s3 import enforce_auth, moto_server, user_with_keys

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    iris = train_sklearn(tmp_path_factory.mktemp("models") / "iris")
    with Platform(tmp_path_factory.mktemp("berth")) as p:
        p.client.apply([server_doc("mlserver", replicas=1), model_doc("iris", str(iris))])
        p.wait_model("iris", timeout=90)
        yield p


def _doctor(cli: Any, p: Platform, *args: str, gateway: str | None = None) -> tuple[int, dict[str, Any], str]:
    res = cli("--server", p.control.url, "--gateway", gateway or p.gateway_url, "doctor", "-o", "json", *args)
    return res.code, json.loads(res.out), res.err


def _rows(report: dict[str, Any], check: str, target: str | None = None) -> list[dict[str, Any]]:
    return [r for r in report["checks"] if r["check"] == check and (target is None or r["target"] == target)]


def _row(report: dict[str, Any], check: str, target: str | None = None) -> dict[str, Any]:
    """The one row of ``check`` (for ``target``): a report without it fails the test, naming what it had."""
    rows = _rows(report, check, target)
    assert len(rows) == 1, (f"expected one {check!r} row for {target or 'any target'}, got {len(rows)}: "
                            f"{[(r['check'], r['target']) for r in report['checks']]}")
    return rows[0]


def test_healthy_namespace_passes(cli: Any, platform: Platform) -> None:
    res = cli("--server", platform.control.url, "--gateway", platform.gateway_url, "doctor")
    assert res.code == 0, res.out + res.err
    assert "✗" not in res.out and "✓" in res.out
    assert "all " in res.out and " checks passed" in res.out
    code, report, _ = _doctor(cli, platform)
    assert code == 0 and report["ok"]
    checks = {r["check"] for r in report["checks"]}
    assert checks == {"cli → control plane", "control plane → agent", "agent → inference server", "agent → runtimes",
                      "agents → control plane (as the agents see it)", "cli → gateway", "gateway → replica",
                      "model storage", "requirements", "model progress"}
    assert {r["result"] for r in report["checks"]} == {"pass"}
    assert _row(report, "control plane → agent", "default/mlserver/0")["detail"].startswith("connected since")
    gw = _row(report, "cli → gateway", platform.gateway_url)["detail"]
    assert "probed by the gateway" in gw  # the gateway answers /berth/v1/probe itself
    grpc_row = _rows(report, "cli → gateway", f"{platform.gateway_grpc} (gRPC)")
    assert [r["detail"] for r in grpc_row] == ["ServerReady answered ready"]
    replica_rows = _rows(report, "gateway → replica")
    assert sum(r["target"].endswith("(gRPC)") for r in replica_rows) == len(replica_rows) // 2 > 0
    code, report, _ = _doctor(cli, platform, "-A")
    storage = _row(report, "model storage", "default/iris")["detail"]
    assert code == 0 and "policy ✓ object ✓ (" in storage
    assert "secret: no secretName on the model; none needed" in storage
    assert "credentials: a local path needs none (checked on replica default/mlserver/0)" in storage


def test_requirement_nobody_offers_and_stuck_model(cli: Any, platform: Platform, tmp_path: Path) -> None:
    platform.client.apply([model_doc("skl", str(tmp_path), requirements=["scikit-learn"])])
    try:
        platform.wait_model("skl", state="ScheduleFailed")
        code, report, err = _doctor(cli, platform, "--stuck-after", "0s")
        assert code == 1 and "checks failed" in err
        req = _row(report, "requirements", "default/skl")
        assert req["result"] == "fail"
        assert "scikit-learn offered by no server" in req["detail"]
        assert "did you mean sklearn for scikit-learn?" in req["detail"]
        assert "add capability scikit-learn to the server" in req["detail"]
        stuck = _row(report, "model progress", "default/skl")
        assert stuck["result"] == "fail" and stuck["detail"].startswith("ScheduleFailed for ")
        assert "berth describe model skl -n default" in stuck["detail"]
        assert _row(report, "model progress", "default/iris")["result"] == "pass"
    finally:
        platform.client.delete("Model", "default", "skl")


def _secret(name: str, ns: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "stringData": data}


def _rclone(endpoint: str, key_id: str, secret: str) -> dict[str, str]:
    return {"s3": f"type: s3\nname: s3\nparameters:\n  access_key_id: {key_id}\n  secret_access_key: {secret}\n"
                  f"  endpoint: {endpoint}\n"}


def test_storage_secret_credentials_object(cli: Any, platform: Platform) -> None:
    ns = "store"
    closed_gateway = f"http://127.0.0.1:{free_port()}"
    with moto_server() as (endpoint, admin):
        key_id, secret_key = user_with_keys(admin)
        boto3.client("s3", **admin).create_bucket(Bucket="models")
        boto3.client("s3", **admin).put_object(Bucket="models", Key="iris/v1/model.joblib", Body=b"x")
        enforce_auth(endpoint)
        uri = "s3://models/iris/v1"
        platform.client.apply([
            _secret("good", ns, _rclone(endpoint, key_id, secret_key)),
            _secret("bad", ns, _rclone(endpoint, key_id, "not-the-key")),
            model_doc("ok", uri, namespace=ns, secretName="good"),
            model_doc("nosecret", uri, namespace=ns, secretName="absent"),
            model_doc("wrongkeys", uri, namespace=ns, secretName="bad"),
            model_doc("noobject", "s3://models/iris/v9", namespace=ns, secretName="good"),
        ])
        started = time.monotonic()
        code, report, err = _doctor(cli, platform, "-n", ns, gateway=closed_gateway)
        assert time.monotonic() - started < 15
    assert code == 1
    storage = {r["target"]: r for r in _rows(report, "model storage")}
    assert storage[f"{ns}/ok"]["result"] == "pass"
    assert "secret 'absent' not found in namespace store" in storage[f"{ns}/nosecret"]["detail"]
    # credentials and the object are checked by an agent of the namespace (tests/control/test_storage_check_agent.py);
    # with none connected the doctor says so, and the control plane itself never contacted the endpoint
    for model in ("wrongkeys", "noobject"):
        detail = storage[f"{ns}/{model}"]["detail"]
        assert "credentials, object: not checked: no agent of namespace store is connected" in detail
    assert "not-the-key" not in json.dumps(report)
    gw = _row(report, "cli → gateway", closed_gateway)
    assert gw["result"] == "fail" and gw["target"] == closed_gateway
    assert f"cannot reach the gateway at {closed_gateway}" in gw["detail"] and "berth up" in gw["detail"]
    assert _row(report, "requirements", f"{ns}/ok")["detail"].startswith("no servers in namespace store")


def test_control_plane_unreachable(cli: Any) -> None:
    addr = f"http://127.0.0.1:{free_port()}"
    res = cli("--server", addr, "doctor")
    assert res.code == 1
    assert f"cannot reach the control plane at {addr}: connection refused" in res.out.replace("\n", "")
    assert "skipped" in res.out
    assert res.err.strip() == "error: 1 of 1 checks failed (8 skipped)"


def test_agent_pointed_at_closed_port(cli: Any, tmp_path: Path) -> None:
    closed = free_port()
    with Platform(tmp_path / "berth", provision=False) as p:
        p.client.apply([server_doc("manual", namespace="hand", replicas=2)])
        with manual_agent(p, tmp_path / "agent", server="manual", namespace="hand", http_port=closed):
            deadline = time.monotonic() + 30
            while not any(a["connected"] and a["error"] for a in p.client.agents("hand")):
                assert time.monotonic() < deadline, "the agent never connected"
                time.sleep(0.1)
            code, report, _ = _doctor(cli, p, "-n", "hand")
    assert code == 1
    inference = _row(report, "agent → inference server")
    assert inference["result"] == "fail"
    assert f"inference server 127.0.0.1:{closed} not ready: connection refused" in inference["detail"]
    assert "--inference-http-port" in inference["detail"]
    assert _row(report, "control plane → agent", "hand/manual/0")["result"] == "pass"
    absent = _row(report, "control plane → agent", "hand/manual/1")
    assert absent["result"] == "fail" and "no agent connected for replica 1 of server manual" in absent["detail"]
    # a replica that is not ready is in no route, so the gateway has nothing of it to probe: the failing
    # row that names it is "agent → inference server" above
    assert _rows(report, "gateway → replica") == []
