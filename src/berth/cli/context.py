"""Options shared by every command (control-plane address, gateway addresses, token), and where they may stand.

As kubectl's global flags, Berth's work anywhere on the command line: ``berth get models --server URL`` is
``berth --server URL get models``, and ``berth -n team-a get models`` is ``berth get models -n team-a``.
``hoist_globals`` rewrites the arguments before click parses them: a root option found after the command
moves in front of it unless that command has an option of the same name (``berth agent --server NAME`` keeps
its own meaning), and a command's option given before the command moves behind it.  Anything else is left
where it is, so a wrong option is still click's usage error naming it (exit 2).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:  # recent typer carries its own copy of click (see berth.main)
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click.exceptions import UsageError  # type: ignore[assignment]

from berth.client import credentials
from berth.client.http import BerthClient
from berth.errors import ConfigError

if TYPE_CHECKING:
    from berth.client.kube import KubeClient


@dataclass
class Settings:
    server: str | None = None
    gateway: str | None = None
    gateway_grpc: str | None = None
    token: str | None = None
    kubeconfig: str | None = None  # --kubeconfig / --context: read Berth's resources from a cluster, as kubectl
    kube_context: str | None = None

    def cluster(self, kubeconfig: str | None = None, context: str | None = None) -> bool:
        """No --server (nor BERTH_ADDRESS) but a cluster named (--kubeconfig, --context or KUBECONFIG, or a
        command's own ``kubeconfig``/``context``): the CLI reaches that cluster's API, as kubectl does."""
        return credentials.names_cluster(os.environ, server=self.server, kubeconfig=kubeconfig or self.kubeconfig,
                                         context=context or self.kube_context)

    def kube_client(self, timeout: float = 30.0, kubeconfig: str | None = None,
                    context: str | None = None) -> KubeClient:
        try:
            from berth.client.kube import KubeClient  # the Kubernetes client only when a cluster is named
        except ModuleNotFoundError as exc:
            raise kube_missing("reaching a cluster named by --kubeconfig, --context or KUBECONFIG") from exc
        return KubeClient(kubeconfig or self.kubeconfig, context or self.kube_context, timeout=timeout)

    def client(self, timeout: float = 30.0) -> BerthClient:
        """The control plane's client; with no --server (nor BERTH_ADDRESS) but a cluster named (--kubeconfig,
        --context or KUBECONFIG), a client reading the cluster's API as kubectl does (client/kube.py)."""
        if self.cluster():
            return self.kube_client(timeout)
        return BerthClient(self.server, timeout=timeout, token=self.token)

    def use_token(self, token: str | None) -> None:
        """``--token``: sent to the control plane and the gateway, before ``BERTH_TOKEN`` and registered tokens."""
        self.token = token.strip() if token and token.strip() else None
        if self.token:
            os.environ["BERTH_TOKEN"] = self.token  # what the gateway client reads first


settings = Settings()

Options = dict[str, bool]  # option name (-n, --namespace) -> whether it takes a value


# Commands and parameters are read by shape, not class: typer may carry its own copy of click.


def _subcommands(command: Any) -> dict[str, Any]:
    found = getattr(command, "commands", None)
    return found if isinstance(found, dict) else {}


def options_of(command: Any) -> Options:
    """Every option name ``command`` accepts (secondary names of flags included) and whether it takes a value."""
    found: Options = {}
    for param in getattr(command, "params", ()):
        if getattr(param, "param_type_name", "") == "option":
            takes = not getattr(param, "is_flag", False) and not getattr(param, "count", False)
            for name in (*param.opts, *param.secondary_opts):
                found[name] = takes
    found.setdefault("--help", False)
    return found


def _leaves(group: Any) -> Iterable[Any]:
    for cmd in _subcommands(group).values():
        yield cmd
        yield from _leaves(cmd)


def _split(token: str, known: Options) -> tuple[str, bool]:
    """(option name, value attached) for ``--opt=value``, ``-nvalue`` or a bare ``--opt``/``-n``."""
    if token.startswith("--"):
        name, sep, _ = token.partition("=")
        return name, bool(sep)
    if len(token) > 2 and known.get(token[:2]):
        return token[:2], True
    return token, False


def _is_option(token: str) -> bool:
    return token.startswith("-") and token not in ("-", "--") and not token[1:2].isdigit()


def hoist_globals(root: Any, args: Sequence[str]) -> list[str]:
    """``args`` with root options moved in front of the command and command options moved behind it."""
    args = list(args)
    root_opts = options_of(root)
    anywhere: Options = {}
    for leaf in _leaves(root):
        for name, takes in options_of(leaf).items():
            anywhere.setdefault(name, takes)
    head: list[str] = []
    early: list[str] = []  # a command's options written before the command
    i = 0
    while i < len(args) and _is_option(args[i]):
        name, attached = _split(args[i], {**anywhere, **root_opts})
        own = name in root_opts
        takes = (root_opts if own else anywhere).get(name, False)
        width = 1 if attached or not takes else 2
        (head if own else early).extend(args[i:i + width])
        i += width
    path: list[str] = []
    command = root
    while i < len(args) and args[i] in _subcommands(command):
        command = _subcommands(command)[args[i]]
        path.append(args[i])
        i += 1
    if not path:
        return args
    own_opts = options_of(command)
    rest: list[str] = []
    while i < len(args):
        token = args[i]
        if token == "--":
            rest.extend(args[i:])
            break
        if _is_option(token):
            name, attached = _split(token, {**root_opts, **own_opts})
            mine = name in own_opts or name not in root_opts
            takes = (own_opts if mine else root_opts).get(name, False)
            width = 1 if attached or not takes else 2
            if not mine and i + width > len(args):
                raise UsageError(f"Option '{name}' requires an argument.")
            (rest if mine else head).extend(args[i:i + width])
            i += width
            continue
        rest.append(token)
        i += 1
    return head + path + early + rest


def kube_missing(what: str) -> ConfigError:
    """The one-line answer when the Kubernetes client (the ``kube`` extra) is not installed."""
    return ConfigError(f"{what} needs the Kubernetes client: pip install 'modelberth[kube]' (or pass --server to "
                       "reach a control plane directly)")
