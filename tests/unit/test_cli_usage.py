"""Usage mistakes answer as usage mistakes (exit 2, what was wrong), never as an internal error."""

from __future__ import annotations

import os
import sys

import pytest
import typer.main

from berth.adapters.mlserver_proc import free_port
from berth.cli.context import hoist_globals, settings
from berth.main import build


def test_unknown_option_is_a_usage_error(cli) -> None:
    r = cli("get", "--bogus")
    assert r.code == 2
    assert "No such option: --bogus" in r.err and "internal error" not in r.err


def test_missing_argument_is_a_usage_error(cli) -> None:
    r = cli("get")
    assert r.code == 2
    assert "Missing argument" in r.err and "internal error" not in r.err


def test_help_exits_zero(cli) -> None:
    r = cli("--help")
    assert r.code == 0 and "Commands" in r.out


# -- global options anywhere, as kubectl's -------------------------------------------------------------


@pytest.fixture(scope="module")
def root():  # type: ignore[no-untyped-def]
    return typer.main.get_command(build())


@pytest.mark.parametrize(("given", "parsed"), [
    ("get models --server U", "--server U get models"),
    ("get models -s U -n ns", "-s U get models -n ns"),
    ("get models --server=U -o wide", "--server=U get models -o wide"),
    ("get models -sU", "-sU get models"),
    ("-n ns get models", "get -n ns models"),
    ("-n ns --server U get models", "--server U get -n ns models"),
    ("token list --token T --gateway G", "--token T --gateway G token list"),
    ("token --server U create x", "--server U token create x"),
    ("infer m --gateway-grpc H -i 3", "--gateway-grpc H infer m -i 3"),
    ("agent --server mlserver --replica 0", "agent --server mlserver --replica 0"),  # the agent's own --server
    ("get models --bogus", "get models --bogus"),  # left for click to name
    ("infer m -d --server", "infer m -d --server"),  # a value, not an option
    ("get models -- --server", "get models -- --server"),
    ("--help", "--help"),
])
def test_options_move_to_where_their_command_reads_them(root, given: str, parsed: str) -> None:  # type: ignore[no-untyped-def]
    assert hoist_globals(root, given.split()) == parsed.split()


def _refused() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: the error names the address used


@pytest.mark.parametrize("args", [
    ("get", "models", "--server", "{u}"),
    ("get", "models", "-s", "{u}", "-n", "team-a"),
    ("-n", "team-a", "get", "models", "--server={u}"),
    ("describe", "server", "mlserver", "--server", "{u}", "--debug"),
    ("token", "list", "--server", "{u}"),
    ("audit", "--server", "{u}"),
])
def test_global_options_after_the_subcommand_take_effect(cli, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    url = _refused()
    r = cli(*(a.format(u=url) for a in args))
    assert r.code == 1, r.err
    assert f"cannot reach the control plane at {url}" in r.err and "No such option" not in r.err


def test_token_after_the_subcommand_is_sent(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BERTH_TOKEN", "from-env")  # restored after the test; --token must win over it
    r = cli("get", "models", "--token", "from-flag", "--server", _refused())
    assert r.code == 1 and settings.token == "from-flag"
    assert os.environ["BERTH_TOKEN"] == "from-flag"  # the gateway client reads it from there


@pytest.mark.parametrize(("args", "named"), [
    (("get", "models", "--bogus"), "--bogus"),
    (("-x", "get", "models"), "-x"),
    (("token", "create", "x", "--nope"), "--nope"),
    (("describe", "server", "s", "--replicas", "3"), "--replicas"),
    (("infer", "m", "--no-such"), "--no-such"),
    (("up", "--control-port", "abc"), "--control-port"),
    (("get", "models", "--server"), "--server"),
    (("get", "models", "-n"), "-n"),
])
def test_a_wrong_option_is_a_usage_error_naming_it(cli, args: tuple[str, ...], named: str) -> None:  # type: ignore[no-untyped-def]
    r = cli(*args)
    assert r.code == 2, (r.code, r.err)
    assert named in r.err and "internal error" not in r.err


def test_a_cluster_without_the_kubernetes_client_is_one_line(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pip install modelberth` has no Kubernetes client: naming a cluster says which extra to install."""
    loaded = ("kubernetes_asyncio", "berth.client.kube", "berth.cli.doctor_network")
    for name in [m for m in list(sys.modules) if m.startswith(loaded)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "kubernetes_asyncio", None)  # as if not installed
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    r = cli("get", "models")
    assert r.code != 0 and "internal error" not in r.err
    assert "needs the Kubernetes client: pip install 'modelberth[kube]'" in r.err
