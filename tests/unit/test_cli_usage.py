"""Usage mistakes answer as usage mistakes (exit 2, what was wrong), never as an internal error."""

from __future__ import annotations


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
