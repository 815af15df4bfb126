"""Autoscaling decisions: how many replicas a model (or a server) should have now.  Pure: the load and the
clocks are passed in; :mod:`berth.control.autoscale_loop` feeds it and turns decisions into plans.

A model autoscales when its ``maxReplicas`` is above its lower bound (``minReplicas``, at least 1; Berth
does not scale to zero).  It starts at ``spec.replicas`` (else ``minReplicas``, else 1) within the bounds.
Its load is what the gateways measured (:class:`berth.control.usage.ModelLoad`):

- **up** when requests in flight per replica stay above the target (annotation
  ``berth.io/autoscale-target-inflight``, default ``DEFAULT_TARGET_INFLIGHT``) or the p95 latency stays
  above ``berth.io/autoscale-target-latency-ms`` (no default: latency counts only when set), for
  ``berth.io/autoscale-up-after`` seconds (default ``DEFAULT_UP_AFTER``).  It adds what the ratio of load
  to target asks for (at least one replica), up to ``maxReplicas``;
- **down** by one replica when both figures stay below ``SCALE_DOWN_BELOW`` of their targets, or no
  gateway saw traffic at all, for ``berth.io/autoscale-down-after`` seconds (the cool-down, default
  ``DEFAULT_DOWN_AFTER``); each further step down waits the cool-down again.

The gap between the two thresholds and the two durations is the hysteresis: a load near the target moves
nothing.  With no gateway reporting at all the load is unknown, not zero: nothing moves.  Every decision is
a :class:`Decision` with its reason; the last ``MAX_EVENTS`` stay in the status.

A Server with ``maxReplicas`` above its lower bound follows the room its models need
(:func:`decide_server`): one more replica when models wait for room on it (every rejection on that server is
``InsufficientMemory`` or ``NotEnoughReplicas``, and its replicas are all up) for the up delay; one fewer when
its highest replica holds no model and none waits, for the cool-down.  The same annotations set the delays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from berth.control.usage import ModelLoad
from berth.resources.statuses import AutoscalingStatus, ScalingEvent
from berth.scheduler.snapshot import (
    INSUFFICIENT_MEMORY,
    NO_REPLICAS,
    NOT_ENOUGH_REPLICAS,
    REPLICA_DRAINING,
    REPLICA_NOT_READY,
    Plan,
    ReplicaRef,
)

PREFIX = "berth.io/autoscale-"
TARGET_INFLIGHT = PREFIX + "target-inflight"
TARGET_LATENCY = PREFIX + "target-latency-ms"
UP_AFTER = PREFIX + "up-after"
DOWN_AFTER = PREFIX + "down-after"
DEFAULT_TARGET_INFLIGHT = 4.0  # requests in flight per replica
DEFAULT_UP_AFTER = 10.0  # seconds above a target before scaling up
DEFAULT_DOWN_AFTER = 120.0  # seconds well below the targets before each step down (the cool-down)
SCALE_DOWN_BELOW = 0.5  # "well below": under half of each target
MAX_EVENTS = 10
Direction = Literal["up", "down"]


@dataclass(frozen=True)
class Targets:
    """A model's autoscaling settings, from its annotations (a bad value falls back to the default and is
    named in ``problems``)."""

    inflight: float = DEFAULT_TARGET_INFLIGHT
    latency_ms: float | None = None
    up_after: float = DEFAULT_UP_AFTER
    down_after: float = DEFAULT_DOWN_AFTER
    problems: tuple[str, ...] = ()

    @staticmethod
    def of(annotations: Mapping[str, str] | None) -> Targets:
        notes = annotations or {}
        problems: list[str] = []

        def number(key: str, default: float | None, *, low: float, high: float) -> float | None:
            text = notes.get(key)
            if text is None or str(text).strip() == "":
                return default
            try:
                value = float(str(text).strip().removesuffix("ms").removesuffix("s"))
            except ValueError:
                value = math.nan
            if not low <= value <= high:  # NaN fails too
                problems.append(f"annotation {key}: {text!r} is not a number in [{low:g}, {high:g}]; using "
                                f"{'no target' if default is None else f'{default:g}'}")
                return default
            return value

        return Targets(inflight=number(TARGET_INFLIGHT, DEFAULT_TARGET_INFLIGHT, low=0.01, high=1e6)
                       or DEFAULT_TARGET_INFLIGHT,
                       latency_ms=number(TARGET_LATENCY, None, low=0.01, high=3.6e6),
                       up_after=number(UP_AFTER, DEFAULT_UP_AFTER, low=0, high=86_400) or 0.0,
                       down_after=number(DOWN_AFTER, DEFAULT_DOWN_AFTER, low=0, high=86_400) or 0.0,
                       problems=tuple(problems))


@dataclass(frozen=True)
class Bounds:
    low: int
    high: int

    @staticmethod
    def of(spec: Mapping[str, Any]) -> Bounds | None:
        """The bounds of a Model's or Server's spec, or None when it does not autoscale."""
        low = max(1, int(spec.get("minReplicas") or 1))
        high = spec.get("maxReplicas")
        if not isinstance(high, int) or high <= low:
            return None
        return Bounds(low, high)

    def clamp(self, n: int) -> int:
        return max(self.low, min(self.high, n))


@dataclass(frozen=True)
class Decision:
    direction: Direction
    previous: int
    replicas: int
    reason: str


@dataclass
class Scaling:
    """One model's (or server's) autoscaling state."""

    replicas: int
    bounds: Bounds
    above_since: float | None = None
    below_since: float | None = None
    events: list[ScalingEvent] = field(default_factory=list)
    changes: int = 0  # decisions so far (a change of it means the status changes)

    def record(self, d: Decision, when: str) -> None:
        self.replicas = d.replicas
        self.changes += 1
        self.events = [*self.events, ScalingEvent(time=when, direction=d.direction, previous=d.previous,
                                                  replicas=d.replicas, reason=d.reason)][-MAX_EVENTS:]
        self.above_since = self.below_since = None

    def status(self, problems: tuple[str, ...] = ()) -> AutoscalingStatus:
        st = AutoscalingStatus(replicas=self.replicas, minReplicas=self.bounds.low, maxReplicas=self.bounds.high,
                               events=list(self.events))
        if problems:
            st["problems"] = list(problems)
        return st


def start(spec: Mapping[str, Any], bounds: Bounds, stored: Mapping[str, Any] | None) -> Scaling:
    """The state of a model seen for the first time: what its stored status decided (a restarted control
    plane resumes there), else its spec's replicas, within the bounds."""
    replicas = spec.get("replicas")
    first = replicas if isinstance(replicas, int) else bounds.low
    events: list[ScalingEvent] = []
    if stored and isinstance(stored.get("replicas"), int):
        first = stored["replicas"]
        events = list(stored.get("events") or [])[-MAX_EVENTS:]
    return Scaling(replicas=bounds.clamp(first), bounds=bounds, events=events)


def decide(s: Scaling, load: ModelLoad | None, reporting: bool, targets: Targets, now: float) -> Decision | None:
    """The decision for ``s`` given its ``load`` (None: no recent report names it) at ``now`` (monotonic
    seconds); ``reporting``: some gateway reports at all.  Updates the timers; the caller records a decision."""
    n = s.replicas
    if n != s.bounds.clamp(n):  # the bounds changed under it
        m = s.bounds.clamp(n)
        return Decision("up" if m > n else "down", n, m,
                        f"replicas {n} outside minReplicas..maxReplicas {s.bounds.low}..{s.bounds.high}")
    if load is None and not reporting:
        s.above_since = s.below_since = None  # no gateway reports: the load is unknown, not zero
        return None
    inflight = load.inflight_per_replica if load is not None else 0.0
    p95 = load.latency_p95_ms if load is not None else None
    busy = inflight / targets.inflight
    slow = p95 / targets.latency_ms if p95 is not None and targets.latency_ms else 0.0
    if (busy > 1 or slow > 1) and n < s.bounds.high:
        s.below_since = None
        s.above_since = now if s.above_since is None else s.above_since
        if now - s.above_since < targets.up_after:
            return None
        ratio = max(busy, slow)
        m = s.bounds.clamp(max(n + 1, math.ceil(n * ratio)))
        why = (f"{inflight:.1f} requests in flight per replica, over the target {targets.inflight:g}" if busy >= slow
               else f"p95 latency {p95:.0f} ms, over the target {targets.latency_ms:g} ms")
        return Decision("up", n, m, f"{why}, for {now - s.above_since:.0f}s")
    if busy < SCALE_DOWN_BELOW and slow < SCALE_DOWN_BELOW and n > s.bounds.low:
        s.above_since = None
        s.below_since = now if s.below_since is None else s.below_since
        if now - s.below_since < targets.down_after:
            return None
        why = ("no traffic" if load is None else
               f"{inflight:.1f} requests in flight per replica, under half the target {targets.inflight:g}"
               + (f" and p95 {p95:.0f} ms under half of {targets.latency_ms:g} ms"
                  if targets.latency_ms and p95 is not None else ""))
        return Decision("down", n, n - 1, f"{why}, for {now - s.below_since:.0f}s")
    s.above_since = s.below_since = None
    return None


# --- servers ------------------------------------------------------------------------------------------------

ROOM = frozenset({INSUFFICIENT_MEMORY, NOT_ENOUGH_REPLICAS})  # rejections one more replica can answer
STARTING = frozenset({NO_REPLICAS, REPLICA_NOT_READY, REPLICA_DRAINING})  # wait until the replicas are up


def room_wanted(plan: Plan | None, server: str) -> tuple[list[str], bool]:
    """The models of ``plan`` that more replicas of ``server`` would place (every rejection on that server is
    for room), and whether some of its replicas are still starting (then nothing is decided)."""
    if plan is None:
        return [], True
    wanting: list[str] = []
    starting = False
    for mp in plan.models.values():
        if mp.state in ("Scheduled", "Deleting"):
            continue
        mine = [r for r in mp.reasons if r.server == server]
        if any(r.code in STARTING for r in mine):
            starting = True
        elif mine and all(r.code in ROOM for r in mine):
            wanting.append(mp.name)
    return sorted(wanting), starting


def holds_models(plan: Plan | None, server: str, index: int) -> bool:
    """Does ``plan`` place any model on replica ``index`` of ``server``?  (Unknown plan: yes.)"""
    if plan is None:
        return True
    ref = ReplicaRef(server, index)
    return any(ref in mp.replicas for mp in plan.models.values())


def decide_server(s: Scaling, wanting: list[str], starting: bool, last_empty: bool, targets: Targets,
                  now: float) -> Decision | None:
    """A Server's decision: one more replica when models wait for room on it for ``up_after``; one fewer when
    its last replica holds no model and none waits, for ``down_after`` (replicas leave from the highest
    index, as a StatefulSet's do)."""
    n = s.replicas
    if n != s.bounds.clamp(n):
        m = s.bounds.clamp(n)
        return Decision("up" if m > n else "down", n, m,
                        f"replicas {n} outside minReplicas..maxReplicas {s.bounds.low}..{s.bounds.high}")
    if starting:
        s.above_since = s.below_since = None
        return None
    if wanting and n < s.bounds.high:
        s.below_since = None
        s.above_since = now if s.above_since is None else s.above_since
        if now - s.above_since < targets.up_after:
            return None
        names = ", ".join(wanting[:3]) + (f" and {len(wanting) - 3} more" if len(wanting) > 3 else "")
        return Decision("up", n, n + 1, f"{len(wanting)} model(s) cannot be placed for lack of room ({names}), "
                                        f"for {now - s.above_since:.0f}s")
    if not wanting and last_empty and n > s.bounds.low:
        s.above_since = None
        s.below_since = now if s.below_since is None else s.below_since
        if now - s.below_since < targets.down_after:
            return None
        return Decision("down", n, n - 1, f"replica {n - 1} holds no model, for {now - s.below_since:.0f}s")
    s.above_since = s.below_since = None
    return None
