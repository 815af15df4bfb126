"""Slowloris against the real control plane: raw sockets that trickle a request's head or body, or send
nothing, are answered 408 and closed within the configured timeouts, while a well-behaved client on another
connection is served meanwhile."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import ControlPlane, auth_headers

HEAD_S, BODY_S, IDLE_S = 1.0, 1.0, 1.5


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "data")
    plane.opts.header_timeout, plane.opts.body_timeout, plane.opts.idle_timeout = HEAD_S, BODY_S, IDLE_S
    with plane:
        yield plane


def _connect(cp: ControlPlane) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", cp.port), timeout=10)
    s.settimeout(10)
    return s


def _trickle(s: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    """Send ``data`` one byte every ``every`` seconds until it is sent, the peer closes, or ``stop``."""
    for i in range(len(data)):
        if stop.wait(every):
            return
        try:
            s.sendall(data[i:i + 1])
        except OSError:
            return


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return out
        if not chunk:
            return out
        out += chunk


def _served_meanwhile(cp: ControlPlane, until: float) -> int:
    """A well-behaved client: requests on fresh connections until ``until``; every one must succeed."""
    served = 0
    with httpx.Client(headers=auth_headers(), timeout=5) as client:
        while time.monotonic() < until:
            assert client.get(f"{cp.url}/healthz").status_code == 200
            assert client.get(f"{cp.url}/api/v1/version").json()["api"] == "v1"
            served += 1
            time.sleep(0.05)
    return served


def _assert_408(answer: bytes, what: str) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    err = json.loads(body)
    assert err["code"] == "RequestTimeout"
    assert what in err["message"] and "did not arrive within 1s" in err["message"]


def test_trickled_head_is_cut_while_others_are_served(cp: ControlPlane) -> None:
    s = _connect(cp)
    stop = threading.Event()
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    sender = threading.Thread(target=_trickle, args=(s, head, 0.05, stop), daemon=True)
    started = time.monotonic()
    sender.start()
    served = _served_meanwhile(cp, started + HEAD_S + 0.3)
    answer = _read_all(s)
    took = time.monotonic() - started
    stop.set()
    sender.join(5)
    s.close()
    assert served >= 3
    _assert_408(answer, "head")
    assert HEAD_S - 0.1 <= took < HEAD_S + 2.5


def test_silent_connections_are_closed(cp: ControlPlane) -> None:
    socks = [_connect(cp) for _ in range(20)]  # never send a byte
    started = time.monotonic()
    served = _served_meanwhile(cp, started + 0.5)
    answers = [_read_all(s) for s in socks]
    took = time.monotonic() - started
    for s in socks:
        s.close()
    assert served >= 2
    for answer in answers:
        _assert_408(answer, "head")
    assert took < HEAD_S + 2.5


def test_trickled_body_is_cut(cp: ControlPlane) -> None:
    s = _connect(cp)
    token = auth_headers()["Authorization"]
    s.sendall(b"POST /api/v1/apply HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: " + token.encode() + b"\r\nContent-Length: 5000\r\n\r\n")
    stop = threading.Event()
    sender = threading.Thread(target=_trickle, args=(s, b'{"documents": [' + b" " * 4000, 0.05, stop),
                              daemon=True)
    started = time.monotonic()
    sender.start()
    served = _served_meanwhile(cp, started + BODY_S + 0.3)
    answer = _read_all(s)
    took = time.monotonic() - started
    stop.set()
    sender.join(5)
    s.close()
    assert served >= 3
    _assert_408(answer, "body")
    assert BODY_S - 0.1 <= took < BODY_S + 2.5
    # nothing was applied, and the control plane still answers
    with httpx.Client(headers=auth_headers(), timeout=5) as client:
        assert client.get(f"{cp.url}/api/v1/models").json()["items"] == []


def test_keepalive_idle_then_slow_head(cp: ControlPlane) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    # idle after an answer: closed silently after the idle timeout
    s = _connect(cp)
    s.sendall(request)
    first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200"), first
    started = time.monotonic()
    rest = _read_all(s)
    s.close()
    assert rest == b""
    assert IDLE_S - 0.1 <= time.monotonic() - started < IDLE_S + 2.5
    # a second request's head trickled after a first one: 408 within the header timeout of its first byte
    s = _connect(cp)
    s.sendall(request)
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    stop = threading.Event()
    sender = threading.Thread(target=_trickle, args=(s, request.replace(b"\r\n\r\n", b"\r\nX: " + b"y" * 100),
                                                        0.05, stop), daemon=True)
    started = time.monotonic()
    sender.start()
    answer = _read_all(s)
    took = time.monotonic() - started
    stop.set()
    sender.join(5)
    s.close()
    _assert_408(answer, "head")
    assert took < HEAD_S + 2.5


def test_a_prompt_client_is_not_cut(cp: ControlPlane) -> None:
    """Keep-alive requests spaced below the idle timeout, and a watch longer than every timeout, are kept."""
    with httpx.Client(headers=auth_headers(), timeout=10) as client:
        for _ in range(3):
            assert client.get(f"{cp.url}/healthz").status_code == 200
            time.sleep(IDLE_S / 2)
        with client.stream("GET", f"{cp.url}/api/v1/watch", params={"kinds": "Model"}) as watch:
            assert watch.status_code == 200
            time.sleep(HEAD_S + BODY_S + 0.5)
            client.post(f"{cp.url}/api/v1/apply", json={"documents": [{
                "apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
                "metadata": {"name": "late", "namespace": "default"},
                "spec": {"storageUri": "/tmp/late", "requirements": ["sklearn"]}}]}).raise_for_status()
            for line in watch.iter_lines():
                if line and json.loads(line).get("object", {}).get("metadata", {}).get("name") == "late":
                    break
