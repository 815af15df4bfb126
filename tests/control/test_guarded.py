"""The issue's test: a failure injected into a real control plane's reconcile loop is logged at once, naming the
task and the error, and the loop comes back (guarded, restart with backoff): the platform converges again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from berth.client.http import BerthClient
from berth.control.reconcile import Reconciler
from tests.control.test_wait import NS, ready, server_config
from tests.support.servers import ControlPlane

INJECTED = "injected failure outside the per-namespace guard"


@pytest.fixture
def loop_breaks_once(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """``Reconciler._replicas_back`` (called by ``run`` outside its per-namespace try) raises the first time, which
    ends ``Reconciler.run``.  Request it before ``control``."""
    calls = [0]
    original = Reconciler._replicas_back

    def broken(self: Reconciler) -> bool:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError(INJECTED)
        return original(self)

    monkeypatch.setattr(Reconciler, "_replicas_back", broken)
    yield calls


def eventually(what: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.05)


def test_a_crashed_reconcile_loop_is_logged_and_the_platform_converges_again(
        loop_breaks_once: list[int], control: ControlPlane, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="berth.tasks")
    client = BerthClient(control.url)
    client.apply([server_config("mlserver")])  # wakes the loop: the pass reconciles, then the loop dies

    failed = eventually(lambda: [r for r in caplog.records if r.name == "berth.tasks" and r.levelno == logging.ERROR])
    assert "task reconcile failed: RuntimeError: " + INJECTED in failed[0].getMessage()
    assert failed[0].exc_info is not None and failed[0].exc_info[0] is RuntimeError  # with its traceback

    # The loop is restarted after its backoff, and a change made afterwards is reconciled.
    eventually(lambda: any("task reconcile restarted (restart 1)" in r.getMessage() for r in caplog.records))
    client.apply([server_config("triton")])  # generation 2: Ready=False (Triton is not run by Berth)
    doc = eventually(lambda: (d := client.get("ServerConfig", NS, "cfg"))["status"].get("observedGeneration") == 2
                     and d)
    assert ready(doc) == "False"
    # the restarted loop goes past the point that failed (after the pass and its rest, docs/responsiveness.md)
    eventually(lambda: loop_breaks_once[0] >= 2)
