"""TLS between Berth's components (agents and gateways -> the control plane), from files as cert-manager
writes them into a Secret (``tls.crt``, ``tls.key``, ``ca.crt``) and Kubernetes mounts them.

- The control plane serves HTTPS (and WSS for agents) with :func:`server_context` (``--tls-cert``,
  ``--tls-key``): TLS 1.2 at least, the certificate chain as given.
- Agents and gateways trust the CA in ``--control-ca`` only (:func:`client_context`: the system's roots are
  not used, the host name is checked).  :func:`control_url` refuses, with a one-line ConfigError, a
  plain ``http://``/``ws://`` control URL when a CA is configured: a bearer token never crosses the
  network in clear because of a forgotten ``s``.

Every failure to read or use a file is a ConfigError naming the file and what to do.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from berth.errors import ConfigError

_PLAIN = {"http": "https", "ws": "wss"}


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The control plane's TLS context from a PEM certificate (chain) and its private key."""
    for path, what in ((cert, "--tls-cert"), (key, "--tls-key")):
        if not Path(path).is_file():
            raise ConfigError(f"{what} {path}: no such file; mount the TLS Secret (tls.crt, tls.key) and name "
                              "its files")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its private key "
                          f"({exc}); use the tls.crt and tls.key of the Secret") from exc
    return ctx


def client_context(ca: Path) -> ssl.SSLContext:
    """A client context trusting only the CA in ``ca`` (PEM), checking the control plane's host name."""
    if not Path(ca).is_file():
        raise ConfigError(f"--control-ca {ca}: no such file; mount the CA (ca.crt of the TLS Secret) and name it")
    try:  # with a cafile, the system's roots are not loaded: only this CA is trusted
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"--control-ca {ca}: not a PEM CA certificate ({exc}); use ca.crt of the TLS "
                          "Secret") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def control_url(url: str, ca: Path | None) -> str:
    """``url`` when it may carry a token: with a CA configured it must be ``https://`` or ``wss://``."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if ca is not None and scheme in _PLAIN:
        raise ConfigError(f"control plane URL {url} is {scheme}:// but a CA is configured (--control-ca {ca}): "
                          f"refusing to send the token in clear; use {_PLAIN[scheme]}://")
    return url


def serving_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """:func:`server_context` when both files are named, None when neither is; one without the other is an
    error."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "--tls-cert (tls.crt)" if cert is None else "--tls-key (tls.key)"
        raise ConfigError(f"TLS needs both --tls-cert and --tls-key; {missing} is missing")
    return server_context(cert, key)
