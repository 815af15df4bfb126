"""`berth gateway` reaches a TLS control plane: the real command (``--control https://…``, ``--control-ca``,
``--token-file``) follows the routes, posts usage reports and asks for wake-ups trusting only the test's CA;
the token file is read again at each connection (a token revoked and replaced in the file is picked up); an
http:// control URL with a CA configured is refused before anything is sent.  The CA and certificates are made by
the test (tests/control/test_tls.py); the control plane is a real one on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from berth.adapters.mlserver_proc import free_port
from berth.gateway.routing.router import Router
from berth.gateway.routing.wake import Waker
from berth.wire.tls import client_context
from tests.control.test_tls import make_ca, secure  # noqa: F401  (the fixture)
from tests.support.servers import ControlPlane

LAUNCH = [str(Path(sys.executable).parent / "berth")]  # the installed command, as a user runs it


def _admin(cp: ControlPlane, ca: Path, method: str, path: str, **kw: object) -> httpx.Response:
    return httpx.request(method, cp.url + path, verify=client_context(ca), timeout=10,
                         headers={"Authorization": f"Bearer {cp.admin_token}"}, **kw)  # type: ignore[arg-type]


def _gateway_token(cp: ControlPlane, ca: Path, name: str) -> str:
    made = _admin(cp, ca, "POST", "/api/v1/tokens", json={"name": name, "kind": "gateway"})
    assert made.status_code == 201, made.text
    return str(made.json()["token"])


def _accepted(cp: ControlPlane, ca: Path) -> int:
    text = _admin(cp, ca, "GET", "/metrics").text
    found = re.search(r'berth_usage_reports_total\{outcome="accepted"\} (\d+)', text)
    return int(found.group(1)) if found else 0


class GatewayProcess:
    def __init__(self, folder: Path, *args: str) -> None:
        self.port = free_port()
        self.log = folder / "gateway.log"
        env = {k: v for k, v in os.environ.items() if k != "BERTH_TOKEN"}  # only the token file speaks
        self.proc = subprocess.Popen([*LAUNCH, "gateway", "--port", str(self.port), "--grpc-port", "-1", *args],
                                     env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def gateway(secure: tuple[ControlPlane, Path],  # noqa: F811
            tmp_path: Path) -> Iterator[tuple[ControlPlane, Path, Path, GatewayProcess]]:
    cp, ca = secure
    token_file = tmp_path / "token"
    token_file.write_text(_gateway_token(cp, ca, "gw-1") + "\n")
    gw = GatewayProcess(tmp_path, "--control", cp.url, "--control-ca", str(ca), "--token-file", str(token_file),
                        "--usage-interval", "0.3")
    try:
        yield cp, ca, token_file, gw
    finally:
        gw.stop()
    assert "Traceback" not in gw.log.read_text(), gw.log.read_text()


def _until(check: object, timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(why)


def test_the_gateway_follows_and_reports_over_tls_with_a_rotated_token(
        gateway: tuple[ControlPlane, Path, Path, GatewayProcess]) -> None:
    cp, ca, token_file, gw = gateway
    url = f"http://127.0.0.1:{gw.port}/v2/health/ready"

    def ready() -> bool:
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    _until(ready, 45, f"the gateway never got its routing table over TLS: {gw.log.read_text()[-2000:]}")
    _until(lambda: _accepted(cp, ca) >= 2, 20, f"no usage report arrived: {gw.log.read_text()[-2000:]}")

    # the kubelet rotates the token: the old one is revoked, the file now holds a new one
    token_file.write_text(_gateway_token(cp, ca, "gw-2") + "\n")
    assert _admin(cp, ca, "DELETE", "/api/v1/tokens/gw-1").status_code in (200, 204)
    time.sleep(1.0)  # reports in flight with the old token are over
    before = _accepted(cp, ca)
    _until(lambda: _accepted(cp, ca) >= before + 2, 20, "reports stopped after the token was rotated")
    # the routes watch of the revoked token ended; the watcher came back with the new one and is ready again
    _until(lambda: gw.log.read_text().count("following routes from https://") >= 2, 20,
           f"the routes watch did not come back with the new token: {gw.log.read_text()[-2000:]}")
    assert ready()
    assert gw.proc.poll() is None


def test_a_gateway_with_a_ca_refuses_a_plain_control_url(tmp_path: Path) -> None:
    _, _, ca = make_ca(tmp_path, "berth-test-ca")
    (tmp_path / "token").write_text("not-sent\n")
    gw = GatewayProcess(tmp_path, "--control", "http://127.0.0.1:9", "--control-ca", str(ca),
                        "--token-file", str(tmp_path / "token"))
    try:
        assert gw.proc.wait(30) == 1
    finally:
        gw.stop()
    out = gw.log.read_text()
    assert "refusing to send the token in clear; use https://" in out and "Traceback" not in out, out


def test_the_wake_client_speaks_tls_with_the_token_file(secure: tuple[ControlPlane, Path],  # noqa: F811
                                                         tmp_path: Path) -> None:
    cp, ca = secure
    token_file = tmp_path / "token"
    token_file.write_text(_gateway_token(cp, ca, "gw-w") + "\n")

    async def main() -> dict[str, float]:
        waker = Waker(Router(), cp.url, None, tls=client_context(ca), token_file=token_file)
        try:
            await waker._call("default", "no-such-model")  # authenticated, then 404: TLS and token both worked
            token_file.write_text("garbage-token\n")  # read again: the control plane now refuses it
            await waker._call("default", "no-such-model")
            _, _, other = make_ca(tmp_path, "someone-else")  # a CA that did not sign the control plane
            stranger = Waker(Router(), cp.url, None, tls=client_context(other), token_file=token_file)
            await stranger._call("default", "no-such-model")
            await stranger.close()
        finally:
            await waker.close()
        return {f"{s.labels['outcome']}": s.value for m in waker.wakeups.collect() for s in m.samples
                if s.name.endswith("_total")} | {
            f"stranger-{s.labels['outcome']}": s.value for m in stranger.wakeups.collect() for s in m.samples
            if s.name.endswith("_total")}

    outcomes = asyncio.run(main())
    assert outcomes == {"http-404": 1.0, "http-401": 1.0, "stranger-unreachable": 1.0}, outcomes
