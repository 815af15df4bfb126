"""The supervisor `berth up` uses: restarts a dying child with backoff, logs the exit status, gives up on
a child that keeps crashing, and stops every child it started."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from berth.daemons.supervisor import Child, Supervisor


def _drive(sup: Supervisor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sup.check()
        time.sleep(0.05)


def test_crashing_child_is_restarted_then_reported(tmp_path: Path) -> None:
    lines: list[str] = []
    sup = Supervisor(lines.append, max_restarts=2, window=60)
    child = sup.add(Child("flaky", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
                          tmp_path / "flaky.log"))
    _drive(sup, 4.0)
    assert child.gave_up
    restarts = [x for x in lines if "restarting" in x]
    assert len(restarts) == 2 and all("exited with status 3" in x for x in restarts)
    assert "keeps crashing" in lines[-1] and "boom" in lines[-1] and "flaky.log" in lines[-1]


def test_stop_all_ends_every_child(tmp_path: Path) -> None:
    sup = Supervisor(lambda _: None)
    kids = [sup.add(Child(f"sleeper-{i}", [sys.executable, "-c", "import time; time.sleep(60)"],
                          tmp_path / f"{i}.log")) for i in range(2)]
    time.sleep(0.2)
    assert all(k.running() for k in kids)
    sup.stop_all(timeout=5)
    assert not any(k.running() for k in kids)
