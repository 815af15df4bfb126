"""Where the control plane's event loop goes: garbage collections timed, loop lag measured, stalls traced.

Everything the control plane serves (``/healthz``, the API, the agents' WebSockets, the routes watch) waits
while its one event loop is held.  A :class:`LoopWatch` says by how much and why:

- **garbage collections**: a ``gc.callbacks`` hook times every collection, by generation (a collection
  stops every thread of the process, the loop's included);
- **loop lag**: a heartbeat on the loop every ``interval`` seconds measures how late it wakes;
- **stalls**: a watchdog thread notices a heartbeat overdue by ``stall`` seconds and samples the loop
  thread's stack meanwhile; a stall over ``report`` seconds is logged once it ends (how long, whether a
  collection ran, where the loop thread was), as asyncio's debug mode reports a slow callback.

:class:`LoopWatchCollector` exports the figures at ``GET /metrics`` (``berth_gc_*``, ``berth_loop_*``);
``bench/responsiveness.py`` prints them beside the latency a client sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("berth.control.loopwatch")
LAG_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)  # seconds
STACK_FRAMES = 4  # innermost frames of the loop thread kept per sample
IDLE_FILES = ("threading.py", "queue.py", "selectors.py")
IDLE_FUNCTIONS = frozenset({"_worker", "dequeue", "_monitor"})
KEEP_PLACES = 500  # distinct stacks ``where`` counts at most (the most sampled are kept)


@dataclass
class GcTimes:
    """Every collection's duration, by generation (0, 1, 2), from ``gc.callbacks``."""
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    seconds: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    longest: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    cpu: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # the collecting thread's CPU time
    longest_cpu: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    running: bool = False  # a collection is under way now
    _start: float = 0.0
    _start_cpu: float = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.running, self._start, self._start_cpu = True, time.perf_counter(), time.thread_time()
            return
        took, cpu = time.perf_counter() - self._start, time.thread_time() - self._start_cpu
        gen = min(2, int(info.get("generation", 2)))
        self.running = False
        self.counts[gen] += 1
        self.seconds[gen] += took
        self.longest[gen] = max(self.longest[gen], took)
        self.cpu[gen] += cpu
        self.longest_cpu[gen] = max(self.longest_cpu[gen], cpu)


@dataclass
class Stall:
    """One time the loop's heartbeat was overdue by more than the watch's ``stall`` seconds."""
    seconds: float
    cpu: float  # the loop thread's CPU time meanwhile (much less than ``seconds``: it was waiting, not working)
    in_gc: bool  # a collection ran during it
    where: str  # the loop thread's innermost frames, most sampled first ("" when never sampled)
    others: str = ""  # the other threads seen busy meanwhile (they hold the interpreter lock the loop waits for)


class LoopWatch:
    """Times collections and the loop's lag; samples the loop thread's stack while it stalls."""

    def __init__(self, *, interval: float = 0.01, stall: float = 0.02, report: float = 0.1) -> None:
        self.interval, self.stall, self.report = interval, stall, report
        self.gc = GcTimes()
        self.lag_buckets = [0] * len(LAG_BUCKETS)  # cumulative, as Prometheus wants them
        self.lag_count, self.lag_sum, self.lag_max = 0, 0.0, 0.0
        self.stalls: list[Stall] = []  # the last ``keep`` ones, newest last
        self.keep = 50
        self.quiet_lag = 0.005  # seconds: a heartbeat later than this ends a quiet spell
        self._late_at = time.perf_counter()  # when the heartbeat was last later than ``quiet_lag``
        self.where: Counter[str] = Counter()  # every stall sample's stack, over the watch's life
        self._beat = time.perf_counter()  # the heartbeat's last wake-up (written on the loop, read by the watchdog)
        self._samples: Counter[str] = Counter()  # the stall under way (watchdog thread only): the loop thread
        self._others: Counter[str] = Counter()  # ... and the other threads that were not waiting
        self._gcs_at_stall = 0
        self._loop_thread: int | None = None
        self._loop_clock: int | None = None  # the loop thread's CPU clock (None where the platform has none)
        self._cpu_at_stall = 0.0
        self._task: asyncio.Task[None] | None = None
        self._watchdog: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start on the running loop (its thread is the one sampled)."""
        self._loop_thread = threading.get_ident()
        with contextlib.suppress(AttributeError, OSError):  # Linux has it; not every platform does
            self._loop_clock = time.pthread_getcpuclockid(self._loop_thread)
        gc.callbacks.append(self.gc.callback)
        self._beat = time.perf_counter()
        self._task = asyncio.get_running_loop().create_task(self._heartbeat(), name="loopwatch")
        self._watchdog = threading.Thread(target=self._watch, name="berth-loopwatch", daemon=True)
        self._watchdog.start()

    async def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.gc.callback)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._watchdog is not None:
            await asyncio.to_thread(self._watchdog.join, 1.0)

    async def _heartbeat(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            self._beat = now = time.perf_counter()
            self._lag(max(0.0, now - before - self.interval))

    def quiet(self, seconds: float) -> bool:
        """Whether the loop's heartbeat has been late by no more than ``quiet_lag`` for the last ``seconds``."""
        return time.perf_counter() - self._late_at >= seconds

    def _lag(self, lag: float) -> None:
        self.lag_count += 1
        self.lag_sum += lag
        self.lag_max = max(self.lag_max, lag)
        if lag > self.quiet_lag:
            self._late_at = time.perf_counter()
        for i, bound in enumerate(LAG_BUCKETS):
            if lag <= bound:
                self.lag_buckets[i] += 1

    def _watch(self) -> None:
        """The watchdog thread: while a heartbeat is overdue, sample where the loop thread is."""
        stalled_since: float | None = None
        while not self._stopped.wait(self.interval):
            if time.perf_counter() - self._beat - self.interval > self.stall:
                if stalled_since is None:
                    stalled_since, self._gcs_at_stall = self._beat, sum(self.gc.counts)
                    self._cpu_at_stall = self._loop_cpu()
                    self._samples.clear()
                    self._others.clear()
                self._sample()
                continue
            if stalled_since is not None:
                self._ended(self._beat - stalled_since - self.interval)
                stalled_since = None

    def _loop_cpu(self) -> float:
        return time.clock_gettime(self._loop_clock) if self._loop_clock is not None else 0.0

    def _sample(self) -> None:
        frames = sys._current_frames()
        frame = frames.get(self._loop_thread or 0)
        self._samples["gc" if self.gc.running else _where(frame) if frame is not None else ""] += 1
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, other in frames.items():
            if ident not in (self._loop_thread, threading.get_ident()) and not _idle(other):
                self._others[f"{names.get(ident, ident)} at {_where(other, 2)}"] += 1

    def _ended(self, seconds: float) -> None:
        cpu = self._loop_cpu() - self._cpu_at_stall
        in_gc = sum(self.gc.counts) != self._gcs_at_stall or self._samples.get("gc", 0) > 0
        where = self._samples.most_common(1)[0][0] if self._samples else ""
        others = "; ".join(what for what, _ in self._others.most_common(2))
        self.where.update(self._samples)
        if len(self.where) > KEEP_PLACES:  # bounded over a long life: the most sampled half stays
            self.where = Counter(dict(self.where.most_common(KEEP_PLACES // 2)))
        self.stalls = [*self.stalls[-(self.keep - 1):], Stall(seconds, cpu, in_gc, where, others)]
        if seconds >= self.report:
            log.warning("the event loop stalled %.0f ms (its thread's CPU %.0f ms)%s; the loop thread was at %s%s",
                        seconds * 1000, cpu * 1000, " (a garbage collection ran meanwhile)" if in_gc else "",
                        where or "(not sampled)", f"; busy meanwhile: {others}" if others else "")

    def summary(self) -> dict[str, Any]:
        """The figures so far, as plain data."""
        return {"gc": {"counts": list(self.gc.counts), "seconds": list(self.gc.seconds),
                       "longest": list(self.gc.longest), "cpu": list(self.gc.cpu),
                       "longest_cpu": list(self.gc.longest_cpu)},
                "lag": {"count": self.lag_count, "sum": self.lag_sum, "max": self.lag_max},
                "stalls": len(self.stalls), "where": self.where.most_common(5)}


def _where(frame: Any, n: int = STACK_FRAMES) -> str:
    """The ``n`` innermost frames of a stack, innermost first, as ``file:line function`` (berth's own files
    from ``berth/``, others by file name).  Read from the frames alone: no source file is opened."""
    rows: list[str] = []
    while frame is not None and len(rows) < n:
        path = frame.f_code.co_filename
        short = path[path.rindex("berth/"):] if "berth/" in path else path.rsplit("/", 1)[-1]
        rows.append(f"{short}:{frame.f_lineno} {frame.f_code.co_name}")
        frame = frame.f_back
    return " < ".join(rows)


def _idle(frame: Any) -> bool:
    """Whether a thread waits: its innermost frame is a lock's, a queue's or a selector's, or a worker's
    (a thread pool's, the log writer's) between two pieces of work."""
    return frame.f_code.co_filename.endswith(IDLE_FILES) or frame.f_code.co_name in IDLE_FUNCTIONS


class LoopWatchCollector(Collector):
    """A :class:`LoopWatch`'s figures for Prometheus."""

    def __init__(self, watch: LoopWatch) -> None:
        self.watch = watch

    def collect(self) -> Iterator[Metric]:
        w = self.watch
        counts = CounterMetricFamily("berth_gc_collections", "Garbage collections, by generation",
                                     labels=["generation"])
        seconds = CounterMetricFamily("berth_gc_seconds", "Time spent in garbage collections, by generation",
                                      labels=["generation"])
        longest = GaugeMetricFamily("berth_gc_longest_seconds", "The longest garbage collection, by generation",
                                    labels=["generation"])
        cpu = CounterMetricFamily("berth_gc_cpu_seconds", "CPU time of the thread that collected, by generation",
                                  labels=["generation"])
        longest_cpu = GaugeMetricFamily("berth_gc_longest_cpu_seconds", "The longest garbage collection in CPU "
                                        "time, by generation", labels=["generation"])
        for gen in range(3):
            counts.add_metric([str(gen)], w.gc.counts[gen])
            seconds.add_metric([str(gen)], w.gc.seconds[gen])
            longest.add_metric([str(gen)], w.gc.longest[gen])
            cpu.add_metric([str(gen)], w.gc.cpu[gen])
            longest_cpu.add_metric([str(gen)], w.gc.longest_cpu[gen])
        yield from (counts, seconds, longest, cpu, longest_cpu)
        yield GaugeMetricFamily("berth_gc_frozen_objects", "Objects moved out of the collector's reach "
                                "(gc.freeze)", value=gc.get_freeze_count())
        buckets = [(str(b), float(n)) for b, n in zip(LAG_BUCKETS, w.lag_buckets, strict=True)]
        yield HistogramMetricFamily("berth_loop_lag_seconds", "How late the event loop's heartbeat woke",
                                    buckets=[*buckets, ("+Inf", float(w.lag_count))], sum_value=w.lag_sum)
        yield GaugeMetricFamily("berth_loop_lag_max_seconds", "The event loop's longest lag", value=w.lag_max)
