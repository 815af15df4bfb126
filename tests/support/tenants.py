"""Two tenants on one control plane, and tokens for them (for the auth tests)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from berth.client.http import BerthClient
from tests.support.servers import ControlPlane, auth_headers

SELDON = "mlops.seldon.io/v1alpha1"
SECRET_VALUE = "s3cr3t-do-not-leak-7f3a"
B_MODEL = "fraud-detector-b"  # a name only team-b's tokens may ever see


def model(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": SELDON, "kind": "Model", "metadata": {"name": name, "namespace": ns},
            "spec": {"storageUri": "file:///tmp/nowhere", "requirements": ["sklearn"], **spec}}


def secret(name: str, ns: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
            "stringData": {"token": SECRET_VALUE}}


@dataclass
class Tenants:
    """team-a and team-b, each with a model and a Secret; ``tokens[name]`` for viewer/editor/admin of team-a,
    admin of team-b, and an inference-only token of team-a."""

    cp: ControlPlane
    admin: BerthClient
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.cp.url

    def client(self, who: str) -> BerthClient:
        return BerthClient(self.url, token=self.tokens[who])

    def headers(self, who: str | None) -> dict[str, str]:
        return auth_headers(self.tokens[who]) if who else {}


def two_tenants(cp: ControlPlane) -> Tenants:
    admin = BerthClient(cp.url)
    t = Tenants(cp, admin)
    admin.apply([model("model-a", "team-a"), secret("creds-a", "team-a"), model(B_MODEL, "team-b"),
                 secret("creds-b", "team-b")])
    for name, grants in (("viewer-a", {"team-a": "viewer"}), ("editor-a", {"team-a": "editor"}),
                         ("admin-a", {"team-a": "admin"}), ("admin-b", {"team-b": "admin"}),
                         ("infer-a", {"team-a": "inference"})):
        t.tokens[name] = admin.create_token(name, grants=grants)["token"]
    return t


class StreamReader:
    """Read an NDJSON stream in a thread; ``events`` fills as lines come, ``ended`` is set when it ends."""

    def __init__(self, url: str, params: dict[str, str], headers: dict[str, str]) -> None:
        self.events: list[dict[str, Any]] = []
        self.status = 0
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.ended_at = 0.0
        threading.Thread(target=self._run, args=(url, params, headers), daemon=True).start()
        assert self.opened.wait(10), "the stream did not open"

    def _run(self, url: str, params: dict[str, str], headers: dict[str, str]) -> None:
        try:
            with httpx.stream("GET", url, params=params, headers=headers, timeout=30) as r:
                self.status = r.status_code
                self.opened.set()
                for line in r.iter_lines():
                    if line.strip():
                        self.events.append(json.loads(line))
        except httpx.HTTPError:
            pass
        finally:
            self.ended_at = time.monotonic()
            self.opened.set()
            self.ended.set()

    def wait_for(self, what: Any, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what(self.events):
                return True
            time.sleep(0.05)
        return bool(what(self.events))


def names_in(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["object"]["metadata"]["namespace"], e["object"]["metadata"]["name"])
            for e in events if e.get("type") != "ERROR"}
