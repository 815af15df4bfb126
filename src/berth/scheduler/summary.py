"""Turn a model's rejections into the few readable lines of its condition message.

Every rejection stays in ``ModelPlan.reasons`` as data; only the message aggregates: one line per
server-level reason, and replicas of one server rejected for the same code folded into one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from berth.scheduler.reasons import humanize_bytes, memory_breakdown
from berth.scheduler.snapshot import (
    INSUFFICIENT_MEMORY,
    MISSING_CAPABILITIES,
    NOT_ENOUGH_REPLICAS,
    REPLICA_DRAINING,
    REPLICA_NOT_READY,
    RUNTIME_NOT_IMPORTABLE,
    Rejection,
)

MAX_LINES = 12  # past this, the message says how many more candidates were rejected
FAILED = "Failed to schedule model as no matching servers are available"
FAILED_REPLICAS = "Failed to schedule model as no matching server had enough suitable replicas"


def compact(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``0-2, 5, 7, 8`` (runs of three or more become ranges)."""
    ordered = sorted(set(indices))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{ordered[i]}-{ordered[j]}")
        else:
            parts.extend(str(n) for n in ordered[i:j + 1])
        i = j + 1
    return ", ".join(parts)


def replicas_phrase(indices: Sequence[int]) -> str:
    """``replica 0`` / ``replicas 0, 1`` in the order given."""
    return ("replica " if len(indices) == 1 else "replicas ") + ", ".join(str(i) for i in indices)


def _memory_line(group: list[Rejection]) -> str:
    data = [dict(r.data) for r in group]
    server = group[0].server
    idx = compact([r.replica for r in group if r.replica is not None])
    need = humanize_bytes(data[0]["need"])
    figures = {(d["free"], d["memory"], d["overcommit_percent"], d["used"]) for d in data}
    if len(figures) == 1:
        d = data[0]
        breakdown = memory_breakdown(d["memory"], d["overcommit_percent"], d["used"])
        return (f"server {server} replicas {idx} have {humanize_bytes(d['free'])} free each "
                f"({breakdown}); model needs {need}")
    best_i = max(range(len(group)), key=lambda i: (data[i]["free"], -(group[i].replica or 0)))
    d = data[best_i]
    breakdown = memory_breakdown(d["memory"], d["overcommit_percent"], d["used"])
    return (f"server {server} replicas {idx} have at most {humanize_bytes(d['free'])} free "
            f"(replica {group[best_i].replica}: {breakdown}); model needs {need}")


def _not_ready_lines(group: list[Rejection]) -> list[str]:
    if len(group) <= 2:
        return [r.message for r in group]
    details = [str(dict(r.data)["detail"]) for r in group]
    idx = compact([r.replica for r in group if r.replica is not None])
    if len(set(details)) == 1:
        return [f"server {group[0].server}: replicas {idx}: {details[0]}"]
    return [f"server {group[0].server}: replicas {idx} not ready "
            f"(e.g. replica {group[0].replica}: {details[0]})"]


def _group_lines(code: str, group: list[Rejection]) -> list[str]:
    if code in (MISSING_CAPABILITIES, RUNTIME_NOT_IMPORTABLE):
        return list(dict.fromkeys(r.message for r in group))
    if len(group) == 1:
        return [group[0].message]
    if code == INSUFFICIENT_MEMORY:
        return [_memory_line(group)]
    if code == REPLICA_NOT_READY:
        return _not_ready_lines(group)
    if code == REPLICA_DRAINING:
        idx = compact([r.replica for r in group if r.replica is not None])
        return [f"server {group[0].server}: replicas {idx} are draining"]
    return [r.message for r in group]


def server_lines(rejections: Sequence[Rejection]) -> list[str]:
    """The lines for one candidate's rejections (NotEnoughReplicas aside): replicas of a server
    rejected for the same code fold into one line."""
    groups: dict[tuple[str | None, str, int], list[Rejection]] = {}
    for n, r in enumerate(rejections):
        if r.code == NOT_ENOUGH_REPLICAS:
            continue
        key = (r.server, r.code, -1) if r.replica is not None else (r.server, r.code, n)
        groups.setdefault(key, []).append(r)
    lines: list[str] = []
    for (_, code, _), group in groups.items():
        lines.extend(_group_lines(code, group))
    return lines


def combine(short: Sequence[Rejection], chunks: Sequence[list[str]]) -> list[str]:
    """The message lines: servers short of replicas first, then each candidate's lines (``chunks``),
    at most MAX_LINES; past that, how many candidates were left out."""
    lines: list[str] = []
    for i, r in enumerate(short):
        if i == 0:
            lines.append(r.message)
        else:
            d: dict[str, Any] = dict(r.data)
            plural = "" if d["suitable"] == 1 else "s"
            lines.append(f"server {r.server} has {d['suitable']} suitable replica{plural} (of {d['total']})")
    for n, chunk in enumerate(chunks):
        left = len(chunks) - n - 1
        limit = MAX_LINES - (1 if left else 0)  # keep a line to say what was left out
        if n and len(lines) + len(chunk) > limit:
            left = len(chunks) - n
            lines.append(f"and {left} more candidate{'s' if left > 1 else ''} rejected "
                         "(every rejection is listed in the reasons)")
            break
        lines.extend(chunk)
    return lines


def explain(rejections: Sequence[Rejection]) -> list[str]:
    """The message lines for a model's rejections, most telling first, at most MAX_LINES."""
    by_candidate: dict[str | None, list[Rejection]] = {}
    for r in rejections:
        by_candidate.setdefault(r.server, []).append(r)
    return combine([r for r in rejections if r.code == NOT_ENOUGH_REPLICAS],
                   [server_lines(group) for group in by_candidate.values()])


def failure_message(lines: Sequence[str], short: bool) -> str:
    """Seldon's sentence (``short``: some server had suitable replicas, not enough), then the reasons."""
    return f"{FAILED_REPLICAS if short else FAILED}: " + "; ".join(lines)
