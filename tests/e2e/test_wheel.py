"""A user who never runs `make`: the built wheel installed into a fresh virtual environment gives a
working `berth` (version, plan on the repository's examples, a clear word when the serving extras are
missing).  Installs the wheel's dependencies from the package index (pip's cache makes it quick)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support.seeds import EXAMPLES, ROOT

pytestmark = pytest.mark.e2e


def _run(cmd: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "BERTH_MLSERVER")}
    env["PATH"] = str(Path(cmd[0]).parent) + os.pathsep + "/usr/bin:/bin"  # no mlserver of the dev venv
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.mark.timeout(600)
def test_wheel_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], 300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = list(dist.glob("modelberth-*.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "berth/main.py" in names and "berth/scheduler/plan.py" in names
    assert not [n for n in names if n.startswith(("tests/", "demo/", "examples/"))], "only the package ships"

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, berth = env_dir / "bin" / "python", env_dir / "bin" / "berth"
    installed = _run([str(py), "-m", "pip", "install", "-q", str(wheels[0])], 400)
    assert installed.returncode == 0, installed.stderr[-3000:]

    out = _run([str(berth), "--server", "http://127.0.0.1:9", "version"], 60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "client: berth " in out.stdout and "unreachable" in out.stdout

    good = _run([str(berth), "plan", "-f", str(EXAMPLES / "financial-ml")], 60, cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert good.stdout.count("Scheduled on mlserver") == 2, good.stdout

    bad = _run([str(berth), "plan", "-f", str(EXAMPLES / "misconfigured" / "capability-typo.yaml")], 60, cwd=tmp_path)
    assert bad.returncode == 1
    assert "did you mean pytorch for torch, sklearn for scikit-learn?" in bad.stdout
    assert "Traceback" not in bad.stderr

    # Without the [serve] extras, `berth up` says what to install, in one line, and exits non-zero.
    up = _run([str(berth), "up", "--data-dir", str(tmp_path / "data")], 60, cwd=tmp_path)
    assert up.returncode != 0
    assert "pip install 'modelberth[serve]'" in up.stderr and "Traceback" not in up.stderr, up.stderr
