"""Identity on a real `berth up`: the CLI finds its admin token with no flags, the files are private, anonymous
calls get 401, no token shows in `ps`, the gateway follows routes with its own token, and the audit log
keeps what was written before a kill -9 of the control plane."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from berth.adapters.mlserver_proc import free_ports
from tests.support.servers import wait_http

pytestmark = pytest.mark.e2e
BERTH = [sys.executable, "-m", "berth.main"]
MODEL = ("apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: %s, namespace: team-a}\n"
         "spec: {storageUri: 'file:///tmp/nowhere', requirements: [sklearn]}\n")


class Up:
    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.cport, self.gport, self.grpc = free_ports(3)
        self.control = f"http://127.0.0.1:{self.cport}"
        self.env = dict(os.environ, BERTH_CONFIG_DIR=str(tmp / "config"), BERTH_ADDRESS=self.control,
                        BERTH_GATEWAY=f"http://127.0.0.1:{self.gport}", BERTH_GATEWAY_GRPC=f"127.0.0.1:{self.grpc}")
        self.env.pop("BERTH_TOKEN", None)  # the CLI must find the token `berth up` registered
        self.proc = subprocess.Popen(BERTH + ["up", "--data-dir", str(self.data), "--control-port", str(self.cport),
                                              "--gateway-port", str(self.gport), "--grpc-port", str(self.grpc),
                                              "--no-default-server"],
                                     env=self.env, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        lines = []
        while "admin token" not in (line := self.proc.stderr.readline()):
            lines.append(line)
            assert line, f"berth up ended before it was up: {''.join(lines)}"

    def berth(self, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(BERTH + list(args), input=stdin, env={**self.env, **env}, capture_output=True,
                              text=True, timeout=60)

    def control_process(self) -> psutil.Process:
        return next(p for p in psutil.Process(self.proc.pid).children()
                    if "control" in p.cmdline() and "--provision" in p.cmdline())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = Up(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def test_cli_finds_the_token_files_are_private_anonymous_is_refused(up: Up) -> None:
    admin_token = (up.data / "admin.token").read_text().strip()
    gateway_token = (up.data / "gateway.token").read_text().strip()
    assert oct(up.data.stat().st_mode & 0o777) == "0o700"
    for name in ("admin.token", "gateway.token", "auth.db"):
        assert oct((up.data / name).stat().st_mode & 0o777) == "0o600", name
    # discovery: no flags, no BERTH_TOKEN
    r = up.berth("apply", "-f", "-", stdin=MODEL % "found")
    assert r.returncode == 0, r.stderr
    r = up.berth("get", "models", "-A")
    assert r.returncode == 0 and "found" in r.stdout, r.stderr
    # BERTH_TOKEN overrides, and a bad one says how to get a good one, in one line
    r = up.berth("get", "models", "-A", BERTH_TOKEN="berth_not-a-real-token-0000000000000")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "BERTH_TOKEN" in r.stderr and "berth up" in r.stderr
    # a tenant token made with the CLI works through BERTH_TOKEN, and sees only its namespace
    r = up.berth("token", "create", "team-a-viewer", "-n", "team-a", "--role", "viewer")
    assert r.returncode == 0, r.stderr
    r = up.berth("get", "models", "-A", "-o", "json", BERTH_TOKEN=r.stdout.splitlines()[-1])
    assert [d["metadata"]["name"] for d in json.loads(r.stdout)["items"]] == ["found"]
    # anonymous callers: only health answers
    assert httpx.get(f"{up.control}/healthz", timeout=5).status_code == 200
    for path in ("/api/v1/models", "/api/v1/namespaces/team-a/models/found", "/api/v1/watch", "/api/v1/tokens",
                 "/api/v1/audit", "/api/v1/routes", "/metrics", "/api/v1/version"):
        r = httpx.get(up.control + path, timeout=5)
        assert r.status_code == 401 and r.json()["code"] == "Unauthenticated", (path, r.text)
        assert "found" not in r.text
    # no token on any command line `ps` shows
    for proc in [psutil.Process(up.proc.pid), *psutil.Process(up.proc.pid).children(recursive=True)]:
        line = " ".join(proc.cmdline())
        assert admin_token not in line and gateway_token not in line, line
    # the gateway follows routes with its own token (a refused watch would leave it not ready)
    assert wait_http(f"http://127.0.0.1:{up.gport}/v2/health/ready", 30), (up.data / "logs" / "gateway.log").read_text()


def test_audit_survives_a_kill_of_the_control_plane(up: Up) -> None:
    r = up.berth("apply", "-f", "-", stdin=MODEL % "before-kill")
    assert r.returncode == 0, r.stderr
    httpx.get(f"{up.control}/api/v1/namespaces/team-a/models/before-kill", timeout=5)  # refused: recorded too
    control = up.control_process()
    control.kill()
    control.wait(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # berth up restarts it
        try:
            if up.control_process().pid != control.pid and wait_http(f"{up.control}/healthz", 1):
                break
        except StopIteration:
            pass
        time.sleep(0.2)
    r = up.berth("audit", "-n", "team-a", "-o", "json")
    assert r.returncode == 0, r.stderr
    seen = {(rec["principal"], rec["verb"], rec["name"], rec["outcome"]) for rec in json.loads(r.stdout)["items"]}
    assert ("admin", "apply", "before-kill", "ok") in seen
    assert ("anonymous", "get", "before-kill", "unauthenticated") in seen
    r = up.berth("audit", "--since", "1h")
    assert r.returncode == 0 and "before-kill" in r.stdout
    r = up.berth("get", "model", "before-kill", "-n", "team-a")  # the same token still holds after the restart
    assert r.returncode == 0, r.stderr


SECRET = ("apiVersion: v1\nkind: Secret\nmetadata: {name: vault, namespace: team-a,\n"
          "  annotations: {kubectl.kubernetes.io/last-applied-configuration: '{\"stringData\": {\"s3\": \"%s\"}}'}}\n"
          "stringData: {s3: '%s'}\n")


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_the_data_dir_is_private_and_holds_no_plaintext_secret(up: Up) -> None:
    import base64

    value = "access_key_id: AKIA-SEALED-CHECK\nsecret_access_key: PLAINTEXT-MUST-NOT-BE-ON-DISK-42"
    r = up.berth("apply", "-f", "-", stdin=SECRET % ("PLAINTEXT-MUST-NOT-BE-ON-DISK-42", value.replace("\n", "\\n")))
    assert r.returncode == 0, r.stderr
    shown = up.berth("get", "secret", "vault", "-n", "team-a", "-o", "json")
    assert shown.returncode == 0 and "PLAINTEXT-MUST-NOT-BE-ON-DISK" not in shown.stdout
    assert "last-applied-configuration" not in shown.stdout
    needles = [b"PLAINTEXT-MUST-NOT-BE-ON-DISK-42", base64.b64encode(value.encode())[:24],
               base64.b64encode(b"PLAINTEXT-MUST-NOT-BE-ON-DISK-42")[:24]]

    def leaks() -> list[str]:
        return [f"{p}: {n!r}" for p in _files(up.data) for n in needles if n in p.read_bytes()]

    assert leaks() == []
    assert up.berth("delete", "secret", "vault", "-n", "team-a").returncode == 0
    assert leaks() == []
    # berth up's files are private to its user: folders 0700, files 0600 (logs, tokens, store, keys)
    files = _files(up.data)
    assert any(p.name == "control.log" for p in files) and any(p.name == "secrets.key" for p in files)
    wide = [f"{p} {oct(p.stat().st_mode & 0o777)}" for p in files if p.stat().st_mode & 0o077]
    wide += [f"{d} {oct(d.stat().st_mode & 0o777)}" for d in [up.data, *(p for p in up.data.rglob("*") if p.is_dir())]
             if d.stat().st_mode & 0o077]
    assert wide == [], wide
