"""Cloud storage emulators on loopback for tests, with credentials really checked.

* GCS: ``gcp-storage-emulator`` (PyPI) served in this process on a free 127.0.0.1 port, behind a gate that
  plays Google's part in authentication: ``POST /token`` verifies a service account's signed JWT against the
  keys registered with :meth:`Gcs.service_account` (an unknown key gets ``invalid_grant``, as Google answers
  for a deleted key) and hands out bearer tokens; storage calls need one of those tokens, or no
  ``Authorization`` at all for reads of a bucket made public with :meth:`Gcs.make_public`.
* Azure Blob: Azurite (npm) as a subprocess on a free port, which checks shared-key and SAS signatures itself.
  It is looked for in ``$BERTH_AZURITE_BIN``, ``~/.cache/berth-azurite`` (where ``.ci/run`` installs it) and
  ``$PATH``; when missing and ``npm`` exists, :func:`ensure_azurite` installs it into ``~/.cache/berth-azurite``
  once (at most 5 minutes).  :func:`require_azurite` fails the test under ``CI=true`` when it is still
  missing, and skips it elsewhere, saying how to install it.

:func:`guard_loopback` makes any connection from this process to an address other than loopback fail
(and be recorded), so a test can prove it never reached Google or Azure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http import server
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from berth.adapters.mlserver_proc import free_port

AZURITE_DIR = Path.home() / ".cache" / "berth-azurite"
AZURITE_HINT = ("Azurite is not installed: install it with `npm install --no-save --prefix "
                "~/.cache/berth-azurite azurite` (needs Node.js and npm; on Debian `apt-get install nodejs npm`), "
                "or point BERTH_AZURITE_BIN at azurite-blob; .ci/run installs it before `make test`")
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_BUCKET = re.compile(r"/b/([^/?]+)")
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


def upload_plan(folder: Path, prefix: str) -> list[tuple[Path, str]]:
    """(file, object name) for every file under ``folder``, named ``prefix`` + its relative path."""
    return [(f, prefix + f.relative_to(folder).as_posix()) for f in sorted(folder.rglob("*")) if f.is_file()]


def same_files(a: Path, b: Path) -> bool:
    """Whether two folders hold the same relative paths with byte-identical contents."""
    files = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
    if files != {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}:
        return False
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


# --- GCS ------------------------------------------------------------------------------------------------------

@dataclass
class _Gate:
    token_uri: str = ""
    keys: dict[str, str] = field(default_factory=dict)  # private_key_id -> public key PEM
    tokens: set[str] = field(default_factory=lambda: {"admin-token"})
    public: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _gated_handler(gate: _Gate) -> type:
    from gcp_storage_emulator.server import RequestHandler

    class Gated(RequestHandler):  # type: ignore[misc]
        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _deny(self, message: str) -> None:
            self._reply(401, {"error": {"code": 401, "message": message,
                                        "errors": [{"message": message, "domain": "global", "reason": "required"}]}})

        def _token(self) -> None:
            from google.auth import jwt

            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            assertion = parse_qs(body).get("assertion", [""])[0]
            try:
                # google-auth signs for Google's token URL whatever token_uri it posts to
                jwt.decode(assertion, certs=gate.keys, audience=[gate.token_uri, GOOGLE_TOKEN_URI])
            except Exception:
                self._reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
                return
            token = "ya29.test-" + secrets.token_hex(12)
            gate.tokens.add(token)
            self._reply(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

        def _allowed(self) -> bool:
            if self.command == "POST" and self.path.split("?")[0] == "/token":
                self._token()
                return False
            auth = self.headers.get("Authorization") or ""
            if auth.startswith("Bearer "):
                if auth[len("Bearer "):] in gate.tokens:
                    return True
                self._deny("Invalid Credentials")
                return False
            m = _BUCKET.search(self.path)
            if self.command == "GET" and m and m.group(1) in gate.public:
                return True
            self._deny("Anonymous caller does not have storage.objects.list access to the Google Cloud Storage "
                       "bucket. Permission 'storage.objects.list' denied on resource (or it may not exist).")
            return False

        def _gated(self, method: Any) -> None:
            with gate.lock:
                if self._allowed():
                    method(self)

        def do_GET(self) -> None:
            self._gated(RequestHandler.do_GET)

        def do_POST(self) -> None:
            self._gated(RequestHandler.do_POST)

        def do_PUT(self) -> None:
            self._gated(RequestHandler.do_PUT)

        def do_PATCH(self) -> None:
            self._gated(RequestHandler.do_PATCH)

        def do_DELETE(self) -> None:
            self._gated(RequestHandler.do_DELETE)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Gated


@dataclass
class Gcs:
    endpoint: str
    gate: _Gate

    @property
    def token_uri(self) -> str:
        return self.gate.token_uri

    def service_account(self, *, registered: bool = True, project: str = "berth-test") -> dict[str, Any]:
        """A fresh service account key file (JSON as a dict); ``registered=False`` makes a key Google never saw."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = secrets.token_hex(20)
        if registered:
            self.gate.keys[kid] = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        return {"type": "service_account", "project_id": project, "private_key_id": kid, "private_key": pem,
                "client_email": f"berth-models@{project}.iam.gserviceaccount.com", "client_id": "1000000000001",
                "auth_uri": f"{self.endpoint}/auth", "token_uri": self.token_uri,
                "universe_domain": "googleapis.com"}

    def rclone_secret(self, info: dict[str, Any] | None, *, name: str = "gcs", endpoint: bool = True) -> dict[str, str]:
        """Seldon's rclone form of the Secret: a gcs remote, with this emulator as its endpoint."""
        import yaml

        params: dict[str, Any] = {"anonymous": True} if info is None else {
            "service_account_credentials": json.dumps(info)}
        if endpoint:
            params["endpoint"] = self.endpoint
        return {name: yaml.safe_dump({"type": "gcs", "name": name, "parameters": params})}

    def admin(self) -> Any:
        """A storage client allowed everything (uploads, bucket creation)."""
        from google.cloud import storage
        from google.oauth2.credentials import Credentials

        return storage.Client(project="berth-test", credentials=Credentials(token="admin-token"),
                              client_options={"api_endpoint": self.endpoint})

    def make_public(self, bucket: str) -> None:
        self.gate.public.add(bucket)

    def upload(self, bucket: str, folder: Path, prefix: str) -> None:
        client = self.admin()
        target = client.bucket(bucket)
        if not target.exists():
            target = client.create_bucket(bucket)
        for path, name in upload_plan(folder, prefix):
            target.blob(name).upload_from_filename(str(path))


@contextmanager
def gcs_emulator() -> Iterator[Gcs]:
    """gcp-storage-emulator (in memory) behind the token gate, on a free loopback port."""
    from gcp_storage_emulator.storage import Storage

    gate = _Gate()
    httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_gated_handler(gate), Storage(use_memory_fs=True)))
    httpd.daemon_threads = True
    endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
    gate.token_uri = f"{endpoint}/token"
    thread = threading.Thread(target=httpd.serve_forever, name="gcs-emulator", daemon=True)
    thread.start()
    try:
        yield Gcs(endpoint, gate)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# --- Azurite --------------------------------------------------------------------------------------------------

def azurite_bin() -> Path | None:
    """azurite-blob from $BERTH_AZURITE_BIN, ~/.cache/berth-azurite or $PATH; None when absent."""
    for candidate in (os.environ.get("BERTH_AZURITE_BIN"), AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob",
                      shutil.which("azurite-blob")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def ensure_azurite(timeout: float = 300.0) -> Path | None:
    """azurite-blob, installed with npm into ~/.cache/berth-azurite first if missing (and npm and node exist)."""
    found = azurite_bin()
    npm = shutil.which("npm")
    if found is not None or npm is None or shutil.which("node") is None:
        return found
    AZURITE_DIR.mkdir(parents=True, exist_ok=True)
    log = AZURITE_DIR / "install.log"
    # past pytest's capture: the install takes a minute and should not look like a hang
    if sys.__stderr__ is not None:
        sys.__stderr__.write(f"\ninstalling Azurite with npm into {AZURITE_DIR} (first use, at most "
                             f"{timeout:.0f} s; log in {log})\n")
    with open(log, "wb") as out:
        try:
            subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(AZURITE_DIR),
                            "azurite@3"], stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return None
    return azurite_bin()


def require_azurite() -> Path:
    """azurite-blob, or fail the test (CI=true) / skip it (elsewhere) saying how to install it."""
    found = ensure_azurite()
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(AZURITE_HINT + " (CI=true: the Azure Blob tests must run, so this fails)", pytrace=False)
        pytest.skip(AZURITE_HINT)
    return found


@dataclass
class Azurite:
    port: int
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def connection_string(self, key: str = AZURITE_KEY) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
                f"BlobEndpoint={self.endpoint};")

    def admin(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string())

    def container_sas(self, container: str, *, key: str = AZURITE_KEY) -> str:
        """A read+list SAS token for ``container``, valid one hour, signed with ``key``."""
        from datetime import UTC, datetime, timedelta

        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        return generate_container_sas(AZURITE_ACCOUNT, container, account_key=key,
                                      permission=ContainerSasPermissions(read=True, list=True),
                                      expiry=datetime.now(UTC) + timedelta(hours=1))

    def upload(self, container: str, folder: Path, prefix: str) -> None:
        service = self.admin()
        client = service.get_container_client(container)
        if not client.exists():
            client = service.create_container(container)
        for path, name in upload_plan(folder, prefix):
            with open(path, "rb") as data:
                client.upload_blob(name, data, overwrite=True)


@contextmanager
def azurite(workdir: Path, binary: Path | None = None) -> Iterator[Azurite]:
    """Azurite's blob service on a free loopback port, its data and log under ``workdir``."""
    binary = binary or require_azurite()
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "azurite.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                                 str(workdir / "data"), "--skipApiVersionCheck", "--loose", "--silent"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Azurite did not listen on 127.0.0.1:{port} in 30 s (exit code "
                                       f"{proc.poll()}): {log.read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.05)
        yield Azurite(port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --- loopback only --------------------------------------------------------------------------------------------

def guard_loopback(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse (and record) every connection this process opens to an address other than loopback."""
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(sock: socket.socket, address: Any) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return True
        host = str(address[0])
        if host in ("127.0.0.1", "::1", "localhost") or host.startswith("127."):
            return True
        attempts.append(f"{host}:{address[1]}")
        return False

    def connect(sock: socket.socket, address: Any) -> None:
        if not allowed(sock, address):
            raise ConnectionRefusedError(f"test guard: {address} is not loopback; tests talk to 127.0.0.1 only")
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        if not allowed(sock, address):
            return 111
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return attempts
