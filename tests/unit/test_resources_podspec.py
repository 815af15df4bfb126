"""Replica memory from a Server's or ServerConfig's podSpec (the mlserver container's memory request)."""

from __future__ import annotations

from typing import Any

import pytest

from berth.errors import InvalidInput
from berth.resources.podspec import container_memory, replica_memory


def pod(*containers: dict[str, Any]) -> dict[str, Any]:
    return {"containers": list(containers)}


def mlserver(requests: str | None = None, limits: str | None = None, name: str = "mlserver") -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = {"cpu": "1", "memory": requests}
    if limits:
        resources["limits"] = {"memory": limits}
    return {"name": name, "image": "seldonio/mlserver:1.7.1", "resources": resources}


def test_request_then_limit_of_the_mlserver_container() -> None:
    assert container_memory(pod(mlserver("3Gi", "4Gi")), "x") == 3 << 30
    assert container_memory(pod(mlserver(limits="4Gi")), "x") == 4 << 30
    assert container_memory(pod(mlserver(name="agent", requests="1Gi"), mlserver("512Mi")), "x") == 512 << 20
    assert container_memory(pod(mlserver(name="only", requests="1G")), "x") == 10**9  # the only container
    assert container_memory(pod(mlserver(name="a", requests="1Gi"), mlserver(name="b", requests="2Gi")), "x") is None
    assert container_memory(pod(mlserver()), "x") is None
    assert container_memory(None, "x") is None
    assert container_memory({"containers": "nope"}, "x") is None


def test_server_podspec_overrides_its_server_config() -> None:
    server = {"metadata": {"namespace": "ml", "name": "s"}, "spec": {"serverConfig": "mlserver"}}
    config = {"metadata": {"namespace": "ml", "name": "mlserver"}, "spec": {"podSpec": pod(mlserver("2Gi"))}}
    field = ".containers[mlserver].resources.requests.memory"  # the exact field each figure was read from
    assert replica_memory(server, config) == (2 << 30, "ServerConfig ml/mlserver spec.podSpec" + field)
    server["spec"]["podSpec"] = pod(mlserver("6Gi"))
    assert replica_memory(server, config) == (6 << 30, "Server ml/s spec.podSpec" + field)
    assert replica_memory({"metadata": {"namespace": "ml", "name": "s"}, "spec": {}}, None) is None


def test_a_bad_quantity_names_the_field() -> None:
    server = {"metadata": {"namespace": "ml", "name": "s"}, "spec": {"podSpec": pod(mlserver("lots"))}}
    with pytest.raises(InvalidInput, match=r"Server ml/s spec.podSpec.containers\[mlserver\].resources.requests"):
        replica_memory(server, None)
