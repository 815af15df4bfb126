"""An agent whose MLServer address is wrong: the model's status names that address and the error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from berth.adapters.mlserver_proc import free_port
from tests.support.platform import Platform, manual_agent, model_doc, server_doc

pytestmark = pytest.mark.e2e


def test_agent_pointed_at_wrong_port_is_named(tmp_path: Path) -> None:
    closed = free_port()
    with Platform(tmp_path / "berth", provision=False) as p:
        p.client.apply([server_doc("manual", namespace="hand", replicas=1),
                        model_doc("iris", str(tmp_path), namespace="hand")])
        with manual_agent(p, tmp_path / "agent", server="manual", namespace="hand", http_port=closed):
            st: dict = {}
            for _ in range(100):
                st = p.client.get("Model", "hand", "iris").get("status") or {}
                if f"127.0.0.1:{closed}" in st.get("message", ""):
                    break
                time.sleep(0.1)
            assert st["state"] == "ScheduleFailed"
            assert f"server manual: replica 0: inference server 127.0.0.1:{closed} not ready: connection refused" \
                in st["message"]
            server = p.client.get("Server", "hand", "manual")["status"]
            assert f"127.0.0.1:{closed}" in server["conditions"][0]["message"]
