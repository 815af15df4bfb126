"""A list response much larger than one write chunk (control/slices.py respond_in_slices) arrives whole and
as before: one JSON document, its length declared, only what the caller may see; and the loop keeps serving
other requests while it is written."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

import httpx

from berth.client.http import BerthClient
from berth.control.slices import WRITE_CHUNK
from tests.support.servers import ControlPlane
from tests.support.tenants import model

NOTE = "x" * 2000  # an annotation that makes each Model ~2.5 KB of JSON


def _models(ns: str, n: int) -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        doc = model(f"m-{i:03d}", ns)
        doc["metadata"]["annotations"] = {"note": NOTE}
        docs.append(doc)
    return docs


def test_a_large_list_arrives_whole_and_filtered(tmp_path: Path) -> None:
    with ControlPlane(tmp_path / "data", store=str(tmp_path / "berth.db")) as cp:
        admin = BerthClient(cp.url)
        admin.apply(_models("team-a", 200))
        admin.apply(_models("team-b", 50))
        viewer = admin.create_token("viewer-a", grants={"team-a": "viewer"})["token"]
        h = {"Authorization": f"Bearer {cp.admin_token}"}
        r = httpx.get(cp.url + "/api/v1/models", headers=h, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json; charset=utf-8"
        assert int(r.headers["content-length"]) == len(r.content) > 5 * WRITE_CHUNK
        body = r.json()
        names = [(d["metadata"]["namespace"], d["metadata"]["name"]) for d in body["items"]]
        assert names == sorted(names) and len(names) == 250 and body["revision"] >= 250
        assert all(d["metadata"]["annotations"]["note"] == NOTE for d in body["items"])
        mine = httpx.get(cp.url + "/api/v1/models", headers={"Authorization": f"Bearer {viewer}"}, timeout=30)
        assert mine.status_code == 200
        assert {d["metadata"]["namespace"] for d in mine.json()["items"]} == {"team-a"}  # never team-b's

        # while lists of ~600 KB are written, health probes on other connections are still answered
        def probe() -> float:
            start = time.perf_counter()
            assert httpx.get(cp.url + "/healthz", timeout=10).status_code == 200
            return time.perf_counter() - start

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            lists = [pool.submit(httpx.get, cp.url + "/api/v1/models", headers=h, timeout=30) for _ in range(3)]
            probes = [pool.submit(probe) for _ in range(10)]
            assert all(f.result().status_code == 200 and len(f.result().json()["items"]) == 250 for f in lists)
            assert all(f.result() < 5 for f in probes)
