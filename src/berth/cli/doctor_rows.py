"""What every `berth doctor` check produces: rows of a ✓/✗ matrix, and a small thread pool to probe in parallel."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

QUICK = httpx.Timeout(5.0, connect=2.0)
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Row:
    check: str
    target: str
    ok: bool | None  # None: skipped
    detail: str

    @property
    def result(self) -> str:
        return {True: "pass", False: "fail", None: "skip"}[self.ok]


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(fn, items))


def key(a: dict[str, Any]) -> str:
    return f"{a['namespace']}/{a['server']}/{a['replica']}"
