"""Shared fixtures: the example manifests, a control plane per test, the CLI run in-process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.seeds import EXAMPLES
from tests.support.servers import ControlPlane

pytest_plugins = ["tests.support.s3"]  # the `s3` fixture (moto on loopback)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def examples() -> Path:
    """The repository's own example manifests (financial-ml tenant, misconfigurations)."""
    return EXAMPLES


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path / "data") as cp:
        yield cp


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run `berth ARGS` in this process; returns exit code and captured output."""
    from berth.main import main

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    os.environ.pop("BERTH_ADDRESS", None)

    def run(*args: str, stdin: str | None = None) -> CliResult:
        if stdin is not None:
            import io
            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
