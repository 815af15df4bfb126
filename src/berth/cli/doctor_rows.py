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


RUNTIMES = "agent → runtimes"


def capability_rows(agents: list[dict[str, Any]]) -> list[Row]:
    """Per connected agent: does its inference server's Python have the runtime of every capability claimed?"""
    rows = []
    for a in agents:
        if not a.get("connected"):
            rows.append(Row(RUNTIMES, key(a), None, "agent not connected"))
            continue
        python = a.get("probedWith")
        if not python:
            rows.append(Row(RUNTIMES, key(a), None, "not probed: the agent's capability probe failed (its log "
                                                    "says why) or the agent predates it"))
            continue
        bad = a.get("unavailableCapabilities") or []
        if not bad:
            rows.append(Row(RUNTIMES, key(a), True, f"every claimed runtime importable by {python}"))
            continue
        claims = "; ".join(f"claims {p['capability']} but its MLServer cannot import {p['module']} "
                           f"({p.get('error') or 'not installed'})" for p in bad)
        rows.append(Row(RUNTIMES, key(a), False,
                        f"server {a['server']} {claims}; install the runtimes into {python}'s environment "
                        f"(`{python} -m pip install 'modelberth[serve]'`) or remove "
                        f"{', '.join(p['capability'] for p in bad)} from the Server's capabilities"))
    return rows
