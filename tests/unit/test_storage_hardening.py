"""Artifact fetching against hostile artifacts and servers: symlinks out of the model's folder, device files,
redirects to other hosts, endless or compressed bodies, stalled servers, error bodies meant to be echoed, and
metadata endpoints.  Real files and a real HTTP server on loopback."""

from __future__ import annotations

import gzip
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from berth.adapters.storage import endpoint_problem, fetch
from berth.adapters.storage_check import check
from berth.adapters.storage_http import fetch_http
from berth.errors import StorageError
from berth.wire.agent import ModelSource


def _fetch(uri: str, dest: Path) -> Path:
    return fetch(uri, dest, ModelSource(storage_uri=uri))


def test_symlinks_may_not_leave_the_model_folder(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.joblib").write_bytes(b"weights")
    (model / "alias.joblib").symlink_to("model.joblib")  # inside: fine
    (model / "subdir-link").symlink_to("sub")
    (model / "sub" / "x.txt").write_text("x")
    got = _fetch(str(model), tmp_path / "out1")
    assert (got / "alias.joblib").read_bytes() == b"weights" and (got / "subdir-link" / "x.txt").read_text() == "x"
    secret = tmp_path / "other-tenant" / "key.pem"
    secret.parent.mkdir()
    secret.write_text("PRIVATE")
    for name, target in (("leak.pem", secret), ("up", tmp_path / "other-tenant"), ("passwd", Path("/etc/passwd"))):
        link = model / "sub" / name
        link.symlink_to(target)
        with pytest.raises(StorageError) as err:
            _fetch(f"file://{model}", tmp_path / f"out-{name}")
        assert re.search(f"(sub|subdir-link)/{re.escape(name)} is a symlink that leaves the model's folder",
                         err.value.message)
        assert str(target) not in err.value.message  # the answer names the link, never what it points at
        assert not (tmp_path / f"out-{name}" / "sub" / name).exists()
        link.unlink()
    (model / "sub" / "loop").symlink_to("..")  # a link back up: copied once, not forever
    got = _fetch(str(model), tmp_path / "out-loop")
    assert (got / "sub" / "x.txt").exists() and not (got / "sub" / "loop" / "sub").exists()


def test_device_files_and_pipes_are_never_read(tmp_path: Path) -> None:
    for uri in ("/dev/zero", "file:///dev/urandom", "/proc/self/environ"):
        with pytest.raises(StorageError, match="device or kernel file"):
            _fetch(uri, tmp_path / "out")
    link = tmp_path / "innocent.joblib"
    link.symlink_to("/dev/zero")
    with pytest.raises(StorageError, match="links to\\) a device or kernel file"):
        _fetch(str(link), tmp_path / "out")
    model = tmp_path / "m"
    model.mkdir()
    os.mkfifo(model / "model.joblib")
    started = time.monotonic()
    with pytest.raises(StorageError, match="model.joblib is not a regular file or folder"):
        _fetch(str(model), tmp_path / "out2")
    assert time.monotonic() - started < 5  # never blocked opening the pipe
    assert check(ModelSource(storage_uri="/dev/zero"))[1]["ok"] is False


def test_metadata_endpoints_are_refused_after_resolution() -> None:
    assert endpoint_problem("http://169.254.169.254") is not None
    assert "metadata" in (endpoint_problem("http://metadata.google.internal:80/x") or "")
    assert endpoint_problem("http://127.0.0.1:9000") is None
    assert endpoint_problem(None) is None


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes | None]] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        status, headers, body = self.routes.get(self.path, (404, {}, b"SECRET-BODY: internal stack trace"))
        if self.path == "/endless":
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                return
        if self.path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            time.sleep(3)
            return
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


@pytest.fixture
def http_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    _Handler.routes = {
        "/m.joblib": (200, {}, b"weights"),
        "/same": (302, {"Location": "/m.joblib"}, b""),
        "/other": (302, {"Location": f"http://localhost:{port}/m.joblib"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
        "/big": (200, {}, b"x" * 5000),
        "/gz": (200, {"Content-Encoding": "gzip"}, gzip.compress(b"\0" * 100000)),
        "/meta": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()
    server.server_close()


def test_http_downloads_are_bounded(http_server: int, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{http_server}"
    assert (fetch_http(f"{base}/m.joblib", tmp_path / "a") / "m.joblib").read_bytes() == b"weights"
    assert (fetch_http(f"{base}/same", tmp_path / "b") / "same").read_bytes() == b"weights"
    cases = {
        "/other": "redirected to another host (localhost)",
        "/loop": "more than 5 redirects",
        "/big": "it is 5000 bytes, above the limit of 1000 bytes",
        "/endless": "more than 1000 bytes, the limit for one HTTP download",
        "/gz": "gzip-encoded although asked for the file as it is",
        "/meta": "169.254.169.254",
        "/missing": "the server answered HTTP 404 Not Found",
        "/stall": "did not answer within 0.5s",
    }
    for path, why in cases.items():
        (tmp_path / "c").mkdir(exist_ok=True)
        started = time.monotonic()
        with pytest.raises(StorageError) as err:
            fetch_http(f"{base}{path}", tmp_path / "c", max_bytes=1000, read_timeout=0.5)
        assert why in err.value.message, (path, err.value.message)
        assert "SECRET-BODY" not in err.value.message
        assert time.monotonic() - started < 5
        assert list((tmp_path / "c").iterdir()) == []  # no partial file left behind
