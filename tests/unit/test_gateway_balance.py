"""Replica choice: least outstanding requests, ties broken round-robin, per-model turns."""

from __future__ import annotations

from collections import Counter

from berth.gateway.forwarding.balance import Balancer

A, B, C = "10.0.0.1:9500", "10.0.0.2:9500", "10.0.0.3:9500"


def test_idle_replicas_take_turns() -> None:
    bal = Balancer()
    picks = [bal.choose("iris", [A, B, C]) for _ in range(6)]
    assert picks == [A, B, C, A, B, C]


def test_least_outstanding_wins_over_the_turn() -> None:
    bal = Balancer()
    bal.acquire(A)
    bal.acquire(A)
    bal.acquire(B)
    # C is idle: chosen whatever the turn says
    assert [bal.choose("iris", [A, B, C]) for _ in range(3)] == [C, C, C]
    bal.acquire(C)
    bal.acquire(C)
    # now B has the fewest (1 against 2 and 2)
    assert bal.choose("iris", [A, B, C]) == B


def test_ties_among_the_least_loaded_rotate() -> None:
    bal = Balancer()
    for _ in range(3):
        bal.acquire(A)
    bal.acquire(B)
    bal.acquire(C)
    picks = Counter(bal.choose("iris", [A, B, C]) for _ in range(10))
    assert picks[A] == 0
    assert abs(picks[B] - picks[C]) <= 1 and picks[B] + picks[C] == 10


def test_release_counts_down_and_forgets_idle_addresses() -> None:
    bal = Balancer()
    bal.acquire(A)
    bal.acquire(A)
    assert bal.outstanding(A) == 2
    bal.release(A)
    assert bal.outstanding(A) == 1
    bal.release(A)
    bal.release(A)  # an extra release never goes negative
    assert bal.outstanding(A) == 0
    bal.acquire(B)
    assert bal.choose("iris", [A, B]) == A


def test_excluded_addresses_are_skipped_and_none_when_nothing_is_left() -> None:
    bal = Balancer()
    assert bal.choose("iris", [A, B], exclude=[A]) == B
    assert bal.choose("iris", [A, B], exclude=[A]) == B
    assert bal.choose("iris", [A], exclude=[A]) is None
    assert bal.choose("iris", []) is None


def test_each_model_keeps_its_own_turn_but_load_is_shared_per_replica() -> None:
    bal = Balancer()
    assert bal.choose(("default", "iris"), [A, B]) == A
    assert bal.choose(("default", "wine"), [A, B]) == A
    assert bal.choose(("default", "iris"), [A, B]) == B
    bal.acquire(A)  # an iris request in flight on A makes wine prefer B
    assert bal.choose(("default", "wine"), [A, B]) == B
    assert bal.choose(("default", "wine"), [A, B]) == B


def test_turn_survives_a_shrinking_replica_list() -> None:
    bal = Balancer()
    for _ in range(5):
        bal.choose("iris", [A, B, C])
    picks = [bal.choose("iris", [A, B]) or "" for _ in range(4)]
    assert sorted(picks) == [A, A, B, B]


def test_in_flight_spread_evenly_when_nothing_is_answered() -> None:
    bal = Balancer()
    for _ in range(9):
        bal.acquire(bal.choose("iris", [A, B, C]) or "")
    assert [bal.outstanding(x) for x in (A, B, C)] == [3, 3, 3]
