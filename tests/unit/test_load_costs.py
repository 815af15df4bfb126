"""What each model load costs outside the load itself: reading the inference server's memory (the process
tree's own /proc files, not a scan of every process) and importing its runtime (at start, not on the first
load).  docs/loading.md."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from mlserver.repository.factory import ModelRepositoryFactory
from mlserver.settings import Settings

from berth.adapters.mlserver import _children, pid_alive, rss_of
from berth.adapters.mlserver_proc import PRELOAD, MLServerProcess
from berth.adapters.mlserver_repo import BerthModelRepository


def test_children_and_rss_cover_the_whole_tree() -> None:
    # a parent with a child that has its own child: three processes, two levels below the root
    spawn = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {!r}]); time.sleep(30)"
    grandchild = "import time; time.sleep(30)"
    root = subprocess.Popen([sys.executable, "-c", spawn.format(spawn.format(grandchild))])
    try:
        proc = psutil.Process(root.pid)
        for _ in range(100):
            if len(proc.children(recursive=True)) == 2:
                break
            asyncio.run(asyncio.sleep(0.05))
        expected = sorted(c.pid for c in proc.children(recursive=True))
        assert len(expected) == 2
        found = _children(root.pid)
        assert found is not None and sorted(found) == expected
        total = proc.memory_info().rss + sum(psutil.Process(p).memory_info().rss for p in expected)
        assert abs(rss_of(root.pid) - total) < 4 << 20  # the same three processes (RSS moves a little)
        assert rss_of(root.pid) > proc.memory_info().rss
    finally:
        for child in psutil.Process(root.pid).children(recursive=True):
            child.kill()
        root.kill()
        root.wait()


def test_rss_and_liveness_of_a_process_that_is_gone() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert rss_of(gone.pid) == 0
    assert rss_of(None) == 0
    assert not pid_alive(gone.pid)
    assert pid_alive(os.getpid())
    assert _children(gone.pid) in (None, [])


def test_repository_preloads_runtime_modules_and_skips_missing_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "berth_preload_probe.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "berth_preload_probe", raising=False)
    repo = BerthModelRepository(str(tmp_path), preload=["berth_preload_probe", "berth_no_such_runtime"])
    assert repo.preloaded == ["berth_preload_probe"]  # the missing one is logged, not raised
    assert "berth_preload_probe" in sys.modules


def test_settings_berth_writes_make_mlserver_preload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "mlserver_sklearn" in PRELOAD
    (tmp_path / "berth_preload_probe2.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "berth_preload_probe2", raising=False)
    proc = MLServerProcess(tmp_path / "work", preload=("berth_preload_probe2",))
    proc.write_settings()
    written = json.loads((proc.workdir / "settings.json").read_text())
    assert written["model_repository_implementation_args"]["preload"] == ["berth_preload_probe2"]
    repo = ModelRepositoryFactory.resolve_model_repository(Settings(**written))  # as MLServer builds it
    assert isinstance(repo, BerthModelRepository)
    assert repo.preloaded == ["berth_preload_probe2"]

