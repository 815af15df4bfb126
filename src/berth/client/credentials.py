"""Where the CLI finds its token, as kubectl finds a local cluster's credentials, and whether it talks to a
Kubernetes cluster's API instead of a control plane (``names_cluster``).

Order: ``BERTH_TOKEN``; else the token file that `berth up` registered for this control-plane address in
``$BERTH_CONFIG_DIR/credentials.json`` (default ``~/.config/berth/``).  The registry maps an address to
the path of a file only its user can read; it never holds a token itself.  The gateway is matched through
the control plane `berth up` started beside it (``gateways`` in the same file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def config_dir() -> Path:
    named = os.environ.get("BERTH_CONFIG_DIR")
    return Path(named) if named else Path.home() / ".config" / "berth"


def names_cluster(env: Mapping[str, str], *, server: str | None = None, kubeconfig: str | None = None,
                  context: str | None = None) -> bool:
    """No ``--server`` (nor ``BERTH_ADDRESS``) but a cluster named (``--kubeconfig``, ``--context`` or
    ``KUBECONFIG``): the CLI reads that cluster's API, as kubectl does, not a Berth control plane."""
    return server is None and not env.get("BERTH_ADDRESS") and bool(kubeconfig or context or env.get("KUBECONFIG"))


def _normal(address: str) -> str:
    address = address.strip().rstrip("/")
    address = address if "://" in address else f"http://{address}"
    return address.replace("://localhost:", "://127.0.0.1:")


def _read() -> dict[str, Any]:
    try:
        data = json.loads((config_dir() / "credentials.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def register(control: str, token_file: Path, gateways: list[str] = ()) -> None:  # type: ignore[assignment]
    """Remember that ``control`` (and its ``gateways``) answer to the token in ``token_file``."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    data = _read()
    servers = data.setdefault("servers", {})
    servers[_normal(control)] = str(token_file.resolve())
    for gateway in gateways:
        data.setdefault("gateways", {})[_normal(gateway)] = str(token_file.resolve())
    path = directory / "credentials.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _from_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError:
        return None
    return token or None


def find_token(address: str, *, gateway: bool = False) -> str | None:
    """The token to present to the control plane (or, with ``gateway``, the gateway) at ``address``."""
    explicit = os.environ.get("BERTH_TOKEN")
    if explicit:
        return explicit.strip()
    table = _read().get("gateways" if gateway else "servers") or {}
    return _from_file(table.get(_normal(address))) if isinstance(table, dict) else None
