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
