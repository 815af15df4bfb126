"""Indexes that find a model's first fitting server without scanning every server.

The placer's rule is "the first server by name that can take every replica".  Scanning servers in name
order costs O(servers) per model: as binpack fills servers in that order, each new model walks past all
the full ones, which made a plan O(models x servers).  Here, for each set of candidate servers (the
servers with usable replicas offering a model's requirements) and each replica count ``k`` asked for,
a :class:`FitTree` (a max segment tree over the candidates in name order) holds, per server, an upper
bound of the k-th largest free memory among its candidate replicas.  "First server with k replicas
having ``memory`` free" is a descent to the leftmost leaf whose bound is at least ``memory``.

Bounds are kept loose on purpose: taking memory only lowers free memory, so a bound stays an upper
bound and nothing is updated then; the search checks the server it lands on and, when it turns out
full, tightens that one leaf to its true value and goes on.  Giving memory back (a model moved) raises
free memory: every tree holding that server has its leaf reset to "unknown" (the largest bound).
Trees are built lazily, from the true figures of the moment, the first time a (candidates, k) pair is
asked for; requirement sets with the same candidates share their trees.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from berth.scheduler.pool import Slot

NONE = -(1 << 62)  # below any free memory: "no k-th replica here"
UNKNOWN = 1 << 62  # above any: "not known, look"


def kth_free(slots: Iterable[Slot], k: int) -> int:
    """The k-th largest free memory among ``slots`` (NONE when there are fewer than k)."""
    frees = sorted((s.capacity - s.used for s in slots), reverse=True)
    return frees[k - 1] if len(frees) >= k else NONE


class FitTree:
    """Max segment tree over one candidate set's servers, in name order, for one replica count ``k``."""

    __slots__ = ("k", "names", "slots", "size", "bounds", "leaf")

    def __init__(self, names: list[str], slots: list[list[Slot]], k: int) -> None:
        self.k = k
        self.names = names
        self.slots = slots  # per leaf: the server's candidate replicas
        size = 1
        while size < max(1, len(names)):
            size *= 2
        self.size = size
        bounds = [NONE] * (2 * size)
        for i, group in enumerate(slots):
            bounds[size + i] = kth_free(group, k)
        for i in range(size - 1, 0, -1):
            left, right = bounds[2 * i], bounds[2 * i + 1]
            bounds[i] = left if left >= right else right
        self.bounds = bounds
        self.leaf = {name: i for i, name in enumerate(names)}

    @classmethod
    def derived(cls, old: FitTree, slots: list[list[Slot]], loosen: set[str]) -> FitTree:
        """The tree of the same servers (``old.names``) with their replicas now ``slots``, from ``old``'s
        bounds, valid when ``old``'s were upper bounds of the replicas' free memory when its plan ended and
        free memory rose since only on the servers in ``loosen`` (their leaves become unknown)."""
        self = cls.__new__(cls)
        self.k, self.names, self.slots, self.size = old.k, old.names, slots, old.size
        self.bounds = old.bounds.copy()
        self.leaf = old.leaf
        leaf = self.leaf
        for name in loosen:
            i = leaf.get(name)
            if i is not None:
                self._set(i, UNKNOWN)
        return self

    def _set(self, i: int, value: int) -> None:
        bounds = self.bounds
        j = i + self.size
        bounds[j] = value
        j >>= 1
        while j:
            left, right = bounds[2 * j], bounds[2 * j + 1]
            best = left if left >= right else right
            if bounds[j] == best:
                break
            bounds[j] = best
            j >>= 1

    def loosen(self, name: str) -> None:
        """Free memory on ``name`` went up: its bound becomes unknown (looked at on the next search)."""
        i = self.leaf.get(name)
        if i is not None:
            self._set(i, UNKNOWN)

    def _first_at_least(self, memory: int, start: int) -> int:
        """The leftmost leaf at or after ``start`` whose bound is at least ``memory`` (-1: none)."""
        size, bounds = self.size, self.bounds
        if start >= size:
            return -1
        j = start + size
        while True:
            if bounds[j] >= memory:
                while j < size:
                    j = 2 * j if bounds[2 * j] >= memory else 2 * j + 1
                return j - size
            while j & 1:  # a right child (or the root): climb to the next subtree to the right
                j >>= 1
            if j == 0:
                return -1
            j += 1

    def _first_from_root(self, memory: int) -> int:
        """``_first_at_least(memory, 0)``, descending from the root (half the steps)."""
        bounds, size = self.bounds, self.size
        if bounds[1] < memory:
            return -1
        j = 1
        while j < size:
            j = 2 * j if bounds[2 * j] >= memory else 2 * j + 1
        return j - size

    def first_one(self, memory: int, spread: bool) -> Slot | None:
        """For k = 1: the replica ``Pool.pick`` would take for a model of ``memory`` with nothing kept —
        on the first server (by name) with a candidate replica having ``memory`` free, the one with the
        least free memory (``spread``: the most), the lowest index on a tie.  One pass, no list, no sort."""
        bounds, size = self.bounds, self.size
        if bounds[1] < memory:
            return None
        j = 1
        while j < size:  # the leftmost leaf whose bound is at least ``memory``
            j = 2 * j if bounds[2 * j] >= memory else 2 * j + 1
        i = j - size
        while i >= 0:
            best: Slot | None = None
            if spread:
                most = -1
                for slot in self.slots[i]:  # in index order: strict comparisons keep the lowest index
                    free = slot.capacity - slot.used
                    if free >= memory and free > most:
                        best, most = slot, free
            else:
                least = UNKNOWN
                for slot in self.slots[i]:
                    free = slot.capacity - slot.used
                    if memory <= free < least:
                        best, least = slot, free
            if best is not None:
                return best
            self._set(i, kth_free(self.slots[i], 1))  # the bound was loose: make it exact
            i = self._first_at_least(memory, i + 1)
        return None

    def first_k(self, memory: int, spread: bool) -> list[Slot] | None:
        """For any k: the k replicas ``Pool.pick`` would take for a model of ``memory`` with nothing kept
        (on the first server with k candidate replicas having ``memory`` free, in the policy's order)."""
        k, bounds, size = self.k, self.bounds, self.size
        if bounds[1] < memory:
            return None
        j = 1
        while j < size:  # the leftmost leaf whose bound is at least ``memory``
            j = 2 * j if bounds[2 * j] >= memory else 2 * j + 1
        i = j - size
        while i >= 0:
            slots = self.slots[i]
            # (free, index, slot), or (-free, index, slot) to spread: indexes differ, so slots are never compared
            got = ([(s.used - s.capacity, s.index, s) for s in slots if s.capacity - s.used >= memory] if spread
                   else [(s.capacity - s.used, s.index, s) for s in slots if s.capacity - s.used >= memory])
            if len(got) >= k:
                got.sort()
                return [g[2] for g in got[:k]]
            self._set(i, kth_free(slots, k))  # the bound was loose: make it exact
            i = self._first_at_least(memory, i + 1)
        return None

    def first_fit(self, memory: int) -> tuple[str, list[Slot]] | None:
        """The first server (by name) with k candidate replicas having ``memory`` free, and those of its
        candidate replicas that have it; None when no server has."""
        k = self.k
        i = self._first_from_root(memory)
        while i >= 0:
            got = [s for s in self.slots[i] if s.capacity - s.used >= memory]
            if len(got) >= k:
                return self.names[i], got
            self._set(i, kth_free(self.slots[i], k))  # the bound was loose: make it exact
            i = self._first_at_least(memory, i + 1)
        return None


class Candidates:
    """One candidate set (servers with usable replicas offering some requirements), with its trees."""

    __slots__ = ("by_server", "names", "trees")

    def __init__(self, by_server: dict[str, list[Slot]], names: list[str]) -> None:
        self.by_server = by_server
        self.names = names
        self.trees: dict[int, FitTree] = {}

    @classmethod
    def derived(cls, old: Candidates, by_server: dict[str, list[Slot]], names: list[str],
                loosen: set[str]) -> Candidates:
        """``old``'s set (the same servers) in a re-plan's pool: its trees carried over (FitTree.derived)."""
        self = cls(by_server, names)
        slots = [by_server[n] for n in names]
        for k, tree in old.trees.items():
            self.trees[k] = FitTree.derived(tree, slots, loosen)
        return self

    def tree(self, k: int) -> FitTree:
        found = self.trees.get(k)
        if found is None:
            found = self.trees[k] = FitTree(self.names, [self.by_server[n] for n in self.names], k)
        return found
