"""Replica choice: least outstanding requests, ties broken round-robin.

Outstanding requests are counted per inference-server address (a replica serves every model it
holds, so its load is shared between them); the round-robin turn is kept per model, so two models on
the same replicas each rotate through all of them.  Pure bookkeeping: no I/O, no clock, no randomness.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence


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
