"""Overcommit residency (berth.control.residency): which placed models are loaded, which evicted. Pure logic."""

from __future__ import annotations

from berth.control import residency
from berth.control.residency import ResidencyBook, Resident, decide

MiB = 1 << 20


def r(name: str, memory: int = 100 * MiB, *, loaded: bool = True, recency: float = 0.0, **kw: object) -> Resident:
    return Resident(name=name, memory=memory, loaded=loaded, recency=recency, **kw)  # type: ignore[arg-type]


def test_everything_fits_nothing_is_evicted() -> None:
    out = decide(300 * MiB, [r("a", recency=1), r("b", recency=2), r("c", recency=3)], now=1000)
    assert set(out.keep) == {"a", "b", "c"}
    assert out.evict == {}
    assert out.used == 300 * MiB


def test_least_recently_used_go_first() -> None:
    out = decide(250 * MiB, [r("old", recency=1), r("mid", recency=5), r("new", recency=9)], now=1000)
    assert out.keep == ("new", "mid")
    assert set(out.evict) == {"old"}
    ev = out.evict["old"]
    assert ev.memory == 100 * MiB
    assert "old (100 MiB) was used less recently" in ev.reason
    assert "250 MiB hold 2 of its 3 models" in ev.reason


def test_a_new_model_evicts_the_lru_and_says_it_needed_the_room() -> None:
    out = decide(200 * MiB, [r("a", recency=1), r("b", recency=2), r("fresh", loaded=False, recency=3)], now=1000)
    assert set(out.keep) == {"fresh", "b"}
    assert out.evict["a"].needed_by == "fresh"
    assert out.evict["a"].needed_memory == 100 * MiB
    assert out.evict["a"].reason.startswith("room for model fresh (100 MiB)")


def test_pinned_models_never_leave_even_when_least_recent() -> None:
    out = decide(200 * MiB, [r("pin", recency=0, pinned=True), r("b", recency=5), r("c", recency=9)], now=1000)
    assert "pin" in out.keep
    assert set(out.evict) == {"b"}


def test_pinned_models_stay_even_beyond_memory() -> None:
    out = decide(100 * MiB, [r("p1", pinned=True), r("p2", pinned=True), r("x", recency=99)], now=1000)
    assert set(out.keep) == {"p1", "p2"}
    assert set(out.evict) == {"x"}


def test_just_loaded_models_are_not_evicted_for_another_lru_choice() -> None:
    # "recent" was loaded 5 s ago but its recency is lower than "other": the thrash guard keeps it
    residents = [r("recent", recency=1, loaded_at=995.0), r("other", loaded=False, recency=50)]
    out = decide(100 * MiB, residents, now=1000, min_resident_s=30)
    assert out.keep == ("recent",)
    assert set(out.evict) == {"other"}
    # past the guard, recency decides
    out = decide(100 * MiB, residents, now=1100, min_resident_s=30)
    assert out.keep == ("other",)


def test_a_wake_up_evicts_even_a_just_loaded_model() -> None:
    residents = [r("recent", recency=99, loaded_at=995.0), r("asleep", loaded=False, recency=0, woken=999.0)]
    out = decide(100 * MiB, residents, now=1000, min_resident_s=30)
    assert out.keep == ("asleep",)
    ev = out.evict["recent"]
    assert ev.needed_by == "asleep"
    assert "woken by a request" in ev.reason


def test_wakes_are_served_in_order_and_always_loaded() -> None:
    residents = [r("w2", loaded=False, woken=20.0), r("w1", loaded=False, woken=10.0), r("idle", recency=5)]
    out = decide(100 * MiB, residents, now=30)
    assert out.keep[:2] == ("w1", "w2")  # both woken: both load (the scheduler bounds the total by overcommit)
    assert set(out.evict) == {"idle"}


def test_a_woken_model_whose_load_failed_holds_no_room_over_a_loaded_one() -> None:
    # woken first, its (re)load failed (artifact gone): the model loaded since is not evicted for it
    residents = [r("lost", 600 * MiB, loaded=False, recency=10, woken=10.0, failed=True),
                 r("stuck", 600 * MiB, recency=20, loaded_at=995.0)]
    out = decide(1024 * MiB, residents, now=1000)
    assert out.keep == ("stuck",)
    assert set(out.evict) == {"lost"}
    # asked for more recently than a model that is not loaded: still after it
    out = decide(1024 * MiB, [residents[0], r("keeper", 600 * MiB, loaded=False, recency=5)], now=1000)
    assert out.keep == ("keeper",) and set(out.evict) == {"lost"}
    out = decide(1024 * MiB, [residents[0]], now=1000)  # with room, it is kept (the load is retried)
    assert out.keep == ("lost",)


def test_models_of_unknown_memory_always_fit() -> None:
    out = decide(100 * MiB, [r("a"), r("b", memory=0, recency=-1), r("c", memory=0, recency=-2)], now=0)
    assert set(out.keep) == {"a", "b", "c"}


def test_a_model_with_two_versions_loaded_is_left_alone() -> None:
    out = decide(100 * MiB, [r("rolling", recency=0, locked=True), r("b", recency=9)], now=0)
    assert "rolling" in out.keep and set(out.evict) == {"b"}


def test_deterministic_by_name_on_equal_recency() -> None:
    residents = [r(n, loaded=False, recency=7) for n in ("d", "b", "a", "c")]
    assert decide(200 * MiB, residents, now=0).keep == ("a", "b")
    assert decide(200 * MiB, list(reversed(residents)), now=0).keep == ("a", "b")


def test_effective_memory_is_the_declaration_raised_by_the_measure() -> None:
    assert residency.effective_memory(100, 0) == 100
    assert residency.effective_memory(100, 40) == 100  # an RSS delta below the declaration does not shrink it
    assert residency.effective_memory(100, 400) == 400  # an under-declared model is corrected
    assert residency.effective_memory(0, 50) == 50


def test_wakes_coalesce_and_expire() -> None:
    book = ResidencyBook()
    assert book.wake("ns", "m", 0.0) is True
    assert all(book.wake("ns", "m", t) is False for t in (1.0, 2.0, 50.0))  # a flood: one wake
    assert book.wakes_total["ns"] == 1
    assert book.woken("ns", "m", 10.0) == 0.0
    assert book.woken("ns", "m", residency.WAKE_TTL_S + 1) is None
    assert book.pending_wakes(residency.WAKE_TTL_S + 1) == 0
    assert book.wake("ns", "m", residency.WAKE_TTL_S + 1) is True


def test_a_load_ends_the_wake_it_answered() -> None:
    book = ResidencyBook()
    book.wake("ns", "m", 10.0)
    book.loaded(("ns", "m", "srv/0"), 12.0)
    assert book.woken("ns", "m", 13.0) is None
    assert book.loaded_at[("ns", "m", "srv/0")] == 12.0


def test_a_failed_load_ends_the_wake_it_answered() -> None:
    book = ResidencyBook()
    book.wake("ns", "m", 10.0)
    book.failed("ns", "m")
    assert book.woken("ns", "m", 11.0) is None  # no room held for a load that failed
    assert book.wake("ns", "m", 12.0)  # a later request wakes it afresh (not coalesced into the old wake)


def test_annotation_problems_name_the_field() -> None:
    assert residency.annotation_problems("Server", {"berth.io/overcommit": "50"}) == []
    [problem] = residency.annotation_problems("Server", {"berth.io/overcommit": "lots"})
    assert problem.startswith("metadata.annotations[berth.io/overcommit]: expected a whole number of percent")
    [problem] = residency.annotation_problems("Server", {"berth.io/overcommit": "5000"})
    assert "from 0 to 1000" in problem
    [problem] = residency.annotation_problems("Model", {"berth.io/pinned": "yes"})
    assert problem == "metadata.annotations[berth.io/pinned]: expected \"true\" or \"false\", got 'yes'"
    assert residency.annotation_problems("Model", {"berth.io/pinned": "True"}) == []
    assert residency.server_overcommit({"berth.io/overcommit": "250"}) == 250
    assert residency.server_overcommit({}) is None
    assert residency.pinned({"berth.io/pinned": "true"}) and not residency.pinned({"berth.io/pinned": "false"})
