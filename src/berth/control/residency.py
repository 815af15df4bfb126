"""Overcommit residency: which of the models placed on a replica are loaded, and which are evicted.

The scheduler places models on a replica up to its memory × (100 + overcommit)%; what is *loaded* must fit
the replica's real memory.  :func:`decide` is the pure rule, per replica (no I/O, no clock: times come in):

1. pinned models (annotation ``berth.io/pinned: "true"``, or one of a model's first ``minReplicas`` planned
   replicas) and models whose version is changing (two versions live during a rollout) stay as they are;
2. models woken by a request (the gateway holds it) are loaded, in the order they were woken, even when the
   replica must then evict a model loaded only moments ago;
3. models loaded less than ``min_resident_s`` ago stay (no thrashing between two LRU choices);
4. the rest, most recently used first (gateway usage reports; else load time; a new model counts from when
   it was first placed), are loaded while they fit.

What is left is evicted: unloaded from the inference server, the artifact kept on the replica's disk.  A
model's memory is :func:`effective_memory`.  :class:`ResidencyBook` keeps what the decision needs between
passes (first placement, load times, wakes, evictions) and the counters of the control plane's metrics.
See docs/overcommit.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from berth.errors import InvalidInput
from berth.resources.podspec import OVERCOMMIT_ANNOTATION, parse_overcommit
from berth.resources.quantity import humanize_bytes

PINNED_ANNOTATION = "berth.io/pinned"
MIN_RESIDENT_S = 30.0  # a model loaded this recently is evicted only to make room for a wake-up
WAKE_TTL_S = 120.0  # a wake that did not end in a load within this long is dropped (the load failed)
MAX_PENDING_WAKES = 10_000  # wakes in force at once, all namespaces (a flood of distinct names is refused)


def pinned(annotations: Mapping[str, Any] | None) -> bool:
    return str((annotations or {}).get(PINNED_ANNOTATION, "")).strip().lower() == "true"


def annotation_problems(kind: str, annotations: Mapping[str, Any] | None) -> list[str]:
    """Bad values of the annotations this module reads, each naming its field (refused at apply)."""
    annotations = annotations or {}
    problems: list[str] = []
    if kind == "Server" and OVERCOMMIT_ANNOTATION in annotations:
        try:
            parse_overcommit(annotations[OVERCOMMIT_ANNOTATION], f"metadata.annotations[{OVERCOMMIT_ANNOTATION}]")
        except InvalidInput as exc:
            problems.append(exc.message)
    if kind == "Model" and PINNED_ANNOTATION in annotations:
        value = annotations[PINNED_ANNOTATION]
        if not isinstance(value, str) or value.strip().lower() not in ("true", "false"):
            problems.append(f'metadata.annotations[{PINNED_ANNOTATION}]: expected "true" or "false", got {value!r}')
    return problems


def server_overcommit(annotations: Mapping[str, Any] | None) -> int | None:
    """The Server's ``berth.io/overcommit`` percent, or None when unset (or bad: refused at apply)."""
    value = (annotations or {}).get(OVERCOMMIT_ANNOTATION)
    if value is None:
        return None
    try:
        return parse_overcommit(value, f"metadata.annotations[{OVERCOMMIT_ANNOTATION}]")
    except InvalidInput:
        return None


def effective_memory(declared: int, measured: int) -> int:
    """What a model takes on a replica: its declaration, raised to what its load measured when that is more
    (a declaration is a reservation; an RSS delta below it is not trusted to shrink it, one above it is the
    model's real size)."""
    return max(declared, measured)


@dataclass(frozen=True, slots=True)
class Resident:
    """One model placed on the replica, as the decision needs it."""

    name: str
    memory: int  # effective bytes (0: unknown, always fits)
    loaded: bool  # loaded or loading now
    recency: float  # larger is more recent (last use, else load time, else first placement)
    pinned: bool = False
    woken: float | None = None  # when a request woke it (a wake in force)
    loaded_at: float | None = None
    locked: bool = False  # two versions live (a rollout): left as it is
    failed: bool = False  # its last load on the replica failed: a wake does not hold room for it


@dataclass(frozen=True, slots=True)
class Eviction:
    """Why a model is not loaded on a replica."""

    model: str
    memory: int
    needed_by: str  # the model the room went to ("" when none in particular)
    needed_memory: int
    reason: str  # one human line


@dataclass(frozen=True, slots=True)
class Residency:
    keep: tuple[str, ...]  # loaded or to load, in priority order
    evict: dict[str, Eviction]  # not loaded (loaded ones are unloaded)
    used: int  # bytes of what is kept


def _human(n: int) -> str:
    return humanize_bytes(n) if n else "unknown memory"


def decide(memory: int, residents: Sequence[Resident], now: float,
           min_resident_s: float = MIN_RESIDENT_S) -> Residency:
    """The models of one replica of ``memory`` bytes that are loaded, and why the others are not."""
    fixed = [r for r in residents if r.pinned or (r.locked and r.loaded)]
    rest = [r for r in residents if not (r.pinned or (r.locked and r.loaded))]
    # a woken model is kept whatever else must go, unless its load failed since: then it competes like the others
    woken = sorted((r for r in rest if r.woken is not None and not r.failed), key=lambda r: (r.woken, r.name))
    others = [r for r in rest if r.woken is None or r.failed]
    protected = sorted((r for r in others if r.loaded and r.loaded_at is not None
                        and now - r.loaded_at < min_resident_s), key=lambda r: (-r.recency, r.name))
    chosen = {r.name for r in protected}
    # a model whose load failed comes after every other, however recently it was asked for
    ordered = sorted((r for r in others if r.name not in chosen), key=lambda r: (r.failed, -r.recency, r.name))
    keep: list[Resident] = [*fixed, *woken]  # always kept (the scheduler keeps the total within overcommit)
    used = sum(r.memory for r in keep)
    dropped: list[Resident] = []
    for r in (*protected, *ordered):
        if used + r.memory <= memory:
            keep.append(r)
            used += r.memory
        else:
            dropped.append(r)
    newcomer = next((r for r in keep if r.woken is not None and not r.failed), None) or next(
        (r for r in keep if not r.loaded and not r.pinned), None)
    total = len(residents)
    evict: dict[str, Eviction] = {}
    for r in dropped:
        if newcomer is not None and newcomer.woken is not None:
            why = f"room for model {newcomer.name} ({_human(newcomer.memory)}), woken by a request"
        elif newcomer is not None:
            why = f"room for model {newcomer.name} ({_human(newcomer.memory)})"
        else:
            why = "the models used more recently fill the replica"
        reason = (f"{why}: the replica's {_human(memory)} hold {len(keep)} of its {total} models, and "
                  f"{r.name} ({_human(r.memory)}) was used less recently; the next request reloads it")
        evict[r.name] = Eviction(r.name, r.memory, newcomer.name if newcomer else "",
                                 newcomer.memory if newcomer else 0, reason)
    return Residency(tuple(r.name for r in keep), evict, used)


Key = tuple[str, str, str]  # (namespace, model, replica key "SERVER/INDEX")


@dataclass
class Evicted:
    """A model evicted from one replica: the decision's reason, and whether it was loaded (then unloaded)."""

    eviction: Eviction
    at: float  # wall-clock time (for status)
    unloaded: bool
    instance: str = ""  # the inference server's name of the copy unloaded
    reloading: bool = False  # a load was sent again (woken, or room came back); dropped once it is LOADED


@dataclass
class ResidencyBook:
    """What residency remembers between passes (times on the caller's monotonic clock), and its counters."""

    first_seen: dict[Key, float] = field(default_factory=dict)
    loaded_at: dict[Key, float] = field(default_factory=dict)
    evicted: dict[Key, Evicted] = field(default_factory=dict)  # written through evict() and drop() only
    _by_model: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (namespace, model) -> replica keys
    wakes: dict[tuple[str, str], float] = field(default_factory=dict)  # (namespace, model) -> when woken
    evictions: Counter[str] = field(default_factory=Counter)  # by namespace: loaded models unloaded for room
    reloads: Counter[str] = field(default_factory=Counter)  # by namespace: evicted models loaded again
    wakes_total: Counter[str] = field(default_factory=Counter)  # by namespace: wakes that were not coalesced

    def wake(self, namespace: str, model: str, now: float) -> bool:
        """Record a wake; False when one is already in force for the model (coalesced)."""
        key = (namespace, model)
        since = self.wakes.get(key)
        if since is not None and now - since < WAKE_TTL_S:
            return False
        self.wakes[key] = now
        self.wakes_total[namespace] += 1
        return True

    def pending_wakes(self, now: float) -> int:
        for key in [k for k, t in self.wakes.items() if now - t >= WAKE_TTL_S]:
            del self.wakes[key]
        return len(self.wakes)

    def woken(self, namespace: str, model: str, now: float) -> float | None:
        since = self.wakes.get((namespace, model))
        return since if since is not None and now - since < WAKE_TTL_S else None

    def loaded(self, key: Key, now: float) -> None:
        """The model is loaded on the replica: remember since when; a wake it answered is done."""
        if key not in self.loaded_at:
            self.loaded_at[key] = now
        wake = self.wakes.get(key[:2])
        if wake is not None and self.loaded_at[key] >= wake:
            del self.wakes[key[:2]]

    def failed(self, namespace: str, model: str) -> None:
        """The model's load failed: a wake in force for it is over (the requests it held were answered with the
        error, as the routes say LoadFailed), so it holds no room for a load that failed; a new request wakes it
        again once its state changes."""
        self.wakes.pop((namespace, model), None)

    def evict(self, key: Key, evicted: Evicted) -> None:
        self.evicted[key] = evicted
        self._by_model.setdefault(key[:2], set()).add(key[2])

    def drop(self, key: Key) -> None:
        self.evicted.pop(key, None)
        keys = self._by_model.get(key[:2])
        if keys is not None:
            keys.discard(key[2])
            if not keys:
                del self._by_model[key[:2]]

    def evictions_of(self, namespace: str, model: str) -> dict[str, Evicted]:
        """Replica key -> eviction, for one model (indexed: a pass over 1,000 models asks for each)."""
        return {k: self.evicted[(namespace, model, k)] for k in self._by_model.get((namespace, model), ())}

    def forget(self, namespace: str, keep: set[tuple[str, str]]) -> None:
        """Drop what is known of (model, replica) pairs of ``namespace`` no longer placed."""
        for table in (self.first_seen, self.loaded_at):
            for key in [k for k in table if k[0] == namespace and (k[1], k[2]) not in keep]:
                del table[key]
        for key in [k for k in self.evicted if k[0] == namespace and (k[1], k[2]) not in keep]:
            self.drop(key)
