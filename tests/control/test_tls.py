"""TLS between components: the control plane serving HTTPS/WSS from files as cert-manager writes them (tls.crt,
tls.key, ca.crt), an agent (the real Agent class) and a gateway's routes watcher reaching it with --control-ca,
and no token ever sent to a plain http:// control URL once a CA is configured.  The CA and certificates are
made by the test (cryptography); the control plane is a real one on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from berth.adapters.mlserver_proc import free_port
from berth.agent.config import AgentConfig
from berth.agent.runner import Agent
from berth.errors import ConfigError
from berth.gateway.routing.watch import TableWatcher
from berth.wire.tls import client_context, control_url, serving_context
from tests.support.servers import ControlPlane


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(folder: Path, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = folder / f"{cn}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_secret(folder: Path) -> tuple[Path, Path, Path]:
    """tls.crt, tls.key and ca.crt, as cert-manager writes them into a Secret (and Kubernetes mounts them)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert, ca_path = make_ca(folder, "berth-test-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("berth-control")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("berth-control.berth-system.svc"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (folder / "ca.crt").write_bytes(ca_path.read_bytes())
    return folder / "tls.crt", folder / "tls.key", folder / "ca.crt"


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[tuple[ControlPlane, Path]]:
    cert, key, ca = make_secret(tmp_path / "secret")
    cp = ControlPlane(tmp_path / "data")
    cp.opts = dataclasses.replace(cp.opts, tls_cert=cert, tls_key=key, header_timeout=1.0)
    cp.url = cp.url.replace("http://", "https://")
    with cp:
        yield cp, ca


def test_https_with_the_ca_and_nothing_in_clear(secure: tuple[ControlPlane, Path], tmp_path: Path) -> None:
    cp, ca = secure
    assert httpx.get(cp.url + "/healthz", verify=client_context(ca), timeout=10).status_code == 200
    who = httpx.get(cp.url + "/api/v1/whoami", verify=client_context(ca), timeout=10,
                    headers={"Authorization": f"Bearer {cp.admin_token}"})
    assert who.status_code == 200, who.text
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port: no answer
        httpx.get(cp.url.replace("https://", "http://") + "/healthz", timeout=5)
    _, _, other_ca = make_ca(tmp_path, "someone-else")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # a CA the client does not trust
        httpx.get(cp.url + "/healthz", verify=client_context(other_ca), timeout=10)
    # a client that opens a connection and never says hello is closed within the header timeout
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", cp.port), timeout=10) as silent:
        assert silent.recv(1) == b""
    assert time.monotonic() - started < 5


def test_agent_and_gateway_reach_it_over_tls(secure: tuple[ControlPlane, Path]) -> None:
    cp, ca = secure
    made = httpx.post(cp.url + "/api/v1/tokens", verify=client_context(ca), timeout=10,
                      headers={"Authorization": f"Bearer {cp.admin_token}"},
                      json={"name": "agent-0", "kind": "agent", "agent": "default/mlserver/0"})
    assert made.status_code == 201, made.text
    config = AgentConfig.from_env({"BERTH_CONTROL_PORT": str(cp.port), "BERTH_CONTROL_CA": str(ca),
                                   "BERTH_AGENT_TOKEN": made.json()["token"], "BERTH_NAMESPACE": "default",
                                   "BERTH_INFERENCE_HTTP_PORT": str(free_port()),
                                   "BERTH_INFERENCE_GRPC_PORT": str(free_port())})
    assert config.control_url.startswith("wss://")

    async def main() -> None:
        stop = asyncio.Event()
        agent = Agent(config)
        watcher = TableWatcher(cp.url, token=cp.admin_token, ca=ca)
        tasks = [asyncio.create_task(agent.run(stop)), asyncio.create_task(watcher.run(stop))]
        try:
            await asyncio.wait_for(agent.connected.wait(), 60)
            deadline = time.monotonic() + 30
            while not watcher.holder.ready and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert watcher.holder.ready, watcher.holder.problem
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    asyncio.run(main())


def test_no_token_to_a_plain_url_once_a_ca_is_configured(tmp_path: Path) -> None:
    cert, key, ca = make_secret(tmp_path)
    for url in ("http://berth-control.berth-system.svc:9004", "ws://127.0.0.1:9004/api/v1/agents/connect"):
        with pytest.raises(ConfigError, match="refusing to send the token in clear"):
            control_url(url, ca)
    with pytest.raises(ConfigError, match="refusing to send the token in clear"):
        TableWatcher("http://127.0.0.1:9004", token="secret", ca=ca)
    assert control_url("http://127.0.0.1:9004", None) == "http://127.0.0.1:9004"  # no CA: as before
    assert isinstance(serving_context(cert, key), ssl.SSLContext) and serving_context(None, None) is None
    with pytest.raises(ConfigError, match="--tls-key"):
        serving_context(cert, None)
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        serving_context(ca, key)  # the CA's certificate with the server's key: they do not match
    with pytest.raises(ConfigError, match="no such file"):
        client_context(tmp_path / "missing.crt")
