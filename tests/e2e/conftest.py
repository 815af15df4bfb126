"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.gateway import LoopThread


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopThread]:
    """An asyncio loop on a background thread, one per test module."""
    loop_thread = LoopThread()
    yield loop_thread
    loop_thread.close()


@pytest.fixture(autouse=True)
def _loop_errors_fail_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A task that crashed on the module's loop during a test fails that test, not a later one."""
    if "lt" not in request.fixturenames:
        yield
        return
    loop_thread: LoopThread = request.getfixturevalue("lt")
    seen = len(loop_thread.errors)
    yield
    new = loop_thread.errors[seen:]
    del loop_thread.errors[seen:]
    assert not new, f"unhandled exceptions on the test's event loop: {new}"
