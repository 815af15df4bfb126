"""Replica choice: least outstanding requests, ties broken round-robin.

Outstanding requests are counted per inference-server address (a replica serves every model it
holds, so its load is shared between them); the round-robin turn is kept per model, so two models on
the same replicas each rotate through all of them.  Pure bookkeeping: no I/O, no randomness; the
clock comes in as a function.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence


class Balancer:
    """Picks the endpoint with the fewest requests in flight; equal loads take turns."""

    __slots__ = ("_outstanding", "_turn")

    def __init__(self) -> None:
        self._outstanding: dict[str, int] = {}
        self._turn: dict[Hashable, int] = {}

    def outstanding(self, address: str) -> int:
        """Requests sent to ``address`` and not answered yet."""
        return self._outstanding.get(address, 0)

    def choose(self, key: Hashable, addresses: Sequence[str], exclude: Collection[str] = ()) -> str | None:
        """The address to send the next request for ``key`` to, or None when none is left.

        The scan starts at this key's turn and keeps the first address with the lowest load; the next
        turn starts just after the one chosen, so equally loaded replicas are used in rotation and a
        busier one is passed over.
        """
        n = len(addresses)
        if n == 0:
            return None
        start = self._turn.get(key, 0) % n
        outstanding = self._outstanding
        best: str | None = None
        best_load = 0
        best_at = start
        for i in range(n):
            at = (start + i) % n
            address = addresses[at]
            if address in exclude:
                continue
            load = outstanding.get(address, 0)
            if best is None or load < best_load:
                best, best_load, best_at = address, load, at
                if load == 0:
                    break
        self._turn[key] = (best_at + 1) % n
        return best

    def acquire(self, address: str) -> None:
        """Count one more request in flight to ``address``."""
        self._outstanding[address] = self._outstanding.get(address, 0) + 1

    def release(self, address: str) -> None:
        """Count one request to ``address`` as answered (or failed)."""
        left = self._outstanding.get(address, 0) - 1
        if left > 0:
            self._outstanding[address] = left
        else:
            self._outstanding.pop(address, None)


class Ejections:
    """Replicas passed over for a while after refusing connections (shared by REST and gRPC).

    ``clock`` is read only when something is ejected, so the common path costs one truth test.
    """

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def eject(self, address: str, until: float) -> None:
        self._until[address] = until

    def restore(self, address: str) -> None:
        if self._until:
            self._until.pop(address, None)

    def pick(self, balancer: Balancer, key: Hashable, addresses: Sequence[str], failed: Collection[str],
             clock: Callable[[], float]) -> str | None:
        """The replica for the next attempt: not failed in this request, not recently refusing
        (unless nothing else is left)."""
        down = self._until
        if down:
            now = clock()
            for address in [a for a, until in down.items() if until <= now]:
                del down[address]
            if down:
                choice = balancer.choose(key, addresses, exclude=down.keys() | set(failed))
                if choice is not None:
                    return choice
        return balancer.choose(key, addresses, exclude=failed)
