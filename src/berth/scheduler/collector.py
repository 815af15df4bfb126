"""The cyclic garbage collector around a plan: paused while it runs, its objects sent to the old generation after.

A plan allocates a few objects per model, and nearly all of them survive: they are the plan, kept until the
next one.  Left to CPython's rules, the collector walks them again and again while the plan runs (its full
passes over every live object were a third of a 100,000-model plan's CPU), so :func:`collector_paused` turns it
off for the plan's duration.  Reference counting still frees everything as usual.

Turning it back on has a cost of its own: every object allocated meanwhile is still in the youngest generation,
and the first allocation after the pause triggers a young collection that walks them all, the contents of every
young container included — about 225,000 objects and 130 ms after a 100,000-model plan, and 8-10 ms after a
re-plan of those models (3,750 young objects, but one of them the plan's 100,000-entry dict), with the
interpreter lock held, so every other thread (the event loop's included) waits.  As those objects are known
to be long-lived, the pause ends by *promoting* them at once (:func:`_promote`, a constant-time move of the
generations' lists):

- when nothing is frozen in the process, ``gc.freeze()`` then ``gc.unfreeze()``: the young objects join the
  oldest generation, which a full collection walks as it would have after two young ones;
- when objects are frozen and the process sweeps its frozen objects (the control plane's GC policy,
  ``berth.control.gcpolicy``, says so through :func:`frozen_objects_are_swept`), ``gc.freeze()``: they join the
  frozen ones, as every survivor of a full collection does under that policy; its sweep reclaims any cycle;
- otherwise (objects frozen and no sweep) nothing: a cycle frozen there would never be collected, so the young
  collection runs as usual.

Fewer than :data:`PROMOTE_AT` young objects are left alone (a small plan's young collection costs nothing).
A plan makes no cyclic garbage (``tests/unit/test_scheduler_scale.py`` checks it), so promoting its objects
delays nothing; what other threads allocated during the plan and still hold is promoted with them.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

PROMOTE_AT = 1_000  # young objects (net allocations of tracked objects) from which promotion pays

_lock = threading.Lock()
_pausers = 0  # plans running with the collector paused (plans of several namespaces may overlap)
_was_enabled = False
_swept = False  # frozen objects are swept (collected) from time to time by the process's GC policy
promotions = 0  # how many times a pause ended by promoting (tests and benchmarks read it)


def frozen_objects_are_swept(swept: bool) -> None:
    """Whether this process's frozen objects are collected from time to time (the control plane's GC policy
    sets it while it runs): a plan's objects may then be frozen with them when it ends."""
    global _swept
    _swept = swept


def _promote() -> None:
    global promotions
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()  # everything tracked is now in the oldest generation
    elif _swept:
        gc.freeze()
    else:
        return
    promotions += 1


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a plan runs; when the last overlapping plan ends, promote what
    was allocated meanwhile (see the module docstring) and resume the collector if it was running."""
    global _pausers, _was_enabled
    with _lock:
        if _pausers == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pausers += 1
    try:
        yield
    finally:
        with _lock:
            _pausers -= 1
            if _pausers == 0 and _was_enabled:
                if gc.get_count()[0] >= PROMOTE_AT:
                    _promote()
                gc.enable()
