"""Shared fixtures: the example manifests, a control plane per test, the CLI run in-process."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from berth.resources.identity import new_token

# Identity for the whole test session, set before anything reads it: no test touches ~/.config/berth,
# and every control plane the tests start (tests.support.servers.ControlPlane) knows this admin token,
# so clients, in-process CLIs and subprocesses authenticate through BERTH_TOKEN with no change.
os.environ["BERTH_CONFIG_DIR"] = tempfile.mkdtemp(prefix="berth-config-")
atexit.register(shutil.rmtree, os.environ["BERTH_CONFIG_DIR"], ignore_errors=True)
os.environ["BERTH_TOKEN"] = new_token()
# Every SQLite store in the tests (in process, and in the control planes they start) checks that no reader
# changed a document it shares (berth.store.shared): such a reader raises SharedDocumentChanged, and each
# finding is written to this file, which fails the session (pytest_sessionfinish) wherever it was raised.
SHARED_FINDINGS = os.path.join(os.environ["BERTH_CONFIG_DIR"], "shared-documents-changed.txt")
os.environ["BERTH_STORE_CHECK_SHARED"] = SHARED_FINDINGS

from tests.support.seeds import EXAMPLES  # noqa: E402
from tests.support.servers import ControlPlane  # noqa: E402

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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A shared document changed in place anywhere (in process or in a control plane a test started) fails
    the run, even where the test around it passed (berth.store.shared)."""
    if os.path.exists(SHARED_FINDINGS):
        with open(SHARED_FINDINGS, encoding="utf-8") as found:
            findings = found.read()
        if findings.strip():
            print("\nshared store documents changed in place (berth.store.shared):\n" + findings)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
