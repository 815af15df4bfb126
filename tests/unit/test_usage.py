"""Usage reports: the gateway's meter (answers from Metrics.observe, in-flight samples from the Balancer) and
the control plane's UsageBook (latest report per gateway, combined; stale gateways; bounds).  Pure: an
injected clock, no processes."""

from __future__ import annotations

import random

import pytest

from berth.control.usage import UsageBook
from berth.errors import Unavailable
from berth.gateway.forwarding.balance import Balancer
from berth.gateway.metrics import UNROUTED, Metrics
from berth.gateway.routing.router import Router
from berth.gateway.usage import MAX_LATENCIES, UsageMeter, percentile
from berth.wire.routes import Endpoint, ModelRoute, RoutingTable
from berth.wire.usage import ModelUsage, ReplicaLoad, UsageReport

A, B = "127.0.0.1:8001", "127.0.0.1:8002"


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def table(*models: tuple[str, list[str]]) -> RoutingTable:
    return RoutingTable(revision=1, models=[
        ModelRoute(namespace="default", name=name, state="ModelAvailable",
                   endpoints=[Endpoint(server="mlserver", replica=i, http=a, grpc=a.replace("80", "90"))
                              for i, a in enumerate(addresses)]) for name, addresses in models])


def meter(clock: Clock) -> tuple[UsageMeter, Metrics, Balancer, Router]:
    metrics, balancer = Metrics(), Balancer()
    router = Router(table(("iris", [A, B]), ("wine", [B])))
    return UsageMeter(metrics, balancer, router, clock=clock, rng=random.Random(1)), metrics, balancer, router


def test_percentile_is_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.95) == 95.0
    assert percentile([7.0], 0.95) == 7.0


def test_the_meter_counts_answers_latency_and_last_use_per_model() -> None:
    clock = Clock()
    m, metrics, _, _ = meter(clock)
    iris = ("default", "iris", "", "")
    for i in range(100):
        metrics.observe(iris, "rest", "200", False, (i + 1) / 1000)
    metrics.observe(iris, "grpc", "UNAVAILABLE", True, 0.5)
    metrics.observe(UNROUTED, "rest", "404", True, 0.001)  # unknown names are not reported
    clock.now += 0.5
    m.sample()  # the answers are drained here: their time is this sample's
    clock.now += 1.5
    rep = m.report("gw")
    assert rep.window_s == pytest.approx(2.0)
    (iris_use,) = rep.models
    assert (iris_use.name, iris_use.requests, iris_use.errors) == ("iris", 101, 1)
    assert iris_use.idle_s == pytest.approx(1.5)
    assert iris_use.latency_p50_ms == pytest.approx(51.0) and iris_use.latency_p95_ms == pytest.approx(96.0)
    assert iris_use.inflight_mean == pytest.approx((5.05 + 0.5) / 2.0)  # seconds answering / window (Little)
    assert metrics.usage == []  # drained
    clock.now += 2.0
    assert m.report("gw").models == []  # nothing in the next window, nothing in flight


def test_latencies_kept_per_window_are_bounded() -> None:
    clock = Clock()
    m, metrics, _, _ = meter(clock)
    for _ in range(MAX_LATENCIES * 3):
        metrics.observe(("default", "wine", "", ""), "rest", "200", False, 0.01)
    m.sample()
    assert len(m._windows[("default", "wine")].latencies) == MAX_LATENCIES
    assert m.report("gw").models[0].requests == MAX_LATENCIES * 3


def test_in_flight_is_time_averaged_per_replica_from_samples() -> None:
    clock = Clock()
    m, _, balancer, _ = meter(clock)
    for _ in range(4):
        balancer.acquire(A)  # 4 in flight to A for half the samples, 0 for the other half
    for _ in range(2):
        m.sample()
    for _ in range(4):
        balancer.release(A)
    balancer.acquire(B)  # B stays at 1 throughout the window (a long request: no answer yet)
    m.sample()
    balancer.release(B)
    balancer.acquire(B)
    clock.now += 2.0
    rep = m.report("gw")  # report() takes the fourth sample
    by_name = {u.name: u for u in rep.models}
    assert set(by_name) == {"iris", "wine"}  # no answers, but requests in flight to their replicas
    iris = {r.address: r for r in by_name["iris"].replicas}
    assert iris[A].inflight_mean == pytest.approx(2.0) and iris[A].inflight_max == 4
    assert iris[B].inflight_mean == pytest.approx(0.5)  # B was busy in the last two samples only
    assert by_name["wine"].inflight == 1 and by_name["wine"].requests == 0


def test_a_new_table_changes_the_replicas_sampled() -> None:
    clock = Clock()
    m, _, balancer, router = meter(clock)
    router.set(table(("iris", [A])))
    balancer.acquire(B)
    m.sample()
    clock.now += 1
    assert m.report("gw").models == []  # B no longer serves anything in the table


def test_a_meter_that_stops_stops_the_per_answer_work() -> None:
    m, metrics, _, _ = meter(Clock())
    m.close()
    metrics.observe(("default", "iris", "", ""), "rest", "200", False, 0.01)
    assert metrics.usage is None


# --- the control plane's book -----------------------------------------------------------------------------

def usage(name: str, requests: int = 0, idle_s: float = 0.0, replicas: dict[str, float] | None = None,
          p95: float | None = None, inflight: int = 0) -> ModelUsage:
    return ModelUsage(namespace="default", name=name, requests=requests, idle_s=idle_s, latency_p95_ms=p95,
                      inflight=inflight, inflight_mean=sum((replicas or {}).values()) / 2,
                      replicas=[ReplicaLoad(address=a, inflight_mean=v, inflight_max=int(v))
                                for a, v in (replicas or {}).items()])


def test_the_book_combines_gateways_and_forgets_silent_ones() -> None:
    clock = Clock(1000.0)
    book = UsageBook(clock)
    book.record("g1", UsageReport(window_s=2.0, models=[usage("iris", 20, 0.5, {A: 3.0}, p95=40.0)]))
    book.record("g2", UsageReport(window_s=2.0, models=[usage("iris", 10, 1.0, {A: 1.0, B: 2.0}, p95=90.0)]))
    load = book.load("default", "iris")
    assert load is not None and load.gateways == 2
    assert load.requests_per_s == pytest.approx(15.0)
    assert load.inflight == {A: 4.0, B: 2.0}  # each replica's load, all its models
    assert load.concurrency == pytest.approx(3.0) and load.inflight_per_replica == pytest.approx(1.5)
    assert load.latency_p95_ms == 90.0
    assert book.last_used("default", "iris") == pytest.approx(999.5)
    assert book.load("default", "wine") is None and book.last_used("default", "wine") is None
    clock.now += 7.0
    book.record("g1", UsageReport(window_s=2.0, models=[usage("iris", 2, 1.0, {A: 1.0})]))
    load = book.load("default", "iris")  # g2 is silent for more than 3 windows: its traffic is unknown
    assert load is not None and load.gateways == 1 and load.inflight == {A: 1.0}
    assert book.last_used("default", "iris") == pytest.approx(1006.0)
    assert book.reporting() == 1
    book.forget("default", "iris")
    assert book.last_used("default", "iris") is None


def test_idle_models_do_not_move_last_use() -> None:
    clock = Clock(1000.0)
    book = UsageBook(clock)
    book.record("g1", UsageReport(window_s=2.0, models=[usage("iris", 5, 0.2)]))
    clock.now += 10
    book.record("g1", UsageReport(window_s=2.0, models=[usage("iris", 0, 10.0)]))  # listed, no traffic
    assert book.last_used("default", "iris") == pytest.approx(999.8)


def test_the_book_is_bounded() -> None:
    clock = Clock(1000.0)
    book = UsageBook(clock, max_gateways=2, max_tracked=3)
    book.record("g1", UsageReport(window_s=2.0, models=[usage(f"m{i}", 1, float(10 - i)) for i in range(5)]))
    assert [book.last_used("default", f"m{i}") is not None for i in range(5)] == [False, False, True, True, True]
    book.record("g2", UsageReport(window_s=2.0))
    with pytest.raises(Unavailable, match="at most 2"):
        book.record("g3", UsageReport(window_s=2.0))
    book.record("g1", UsageReport(window_s=2.0))  # a known gateway always replaces its report


def test_only_models_of_the_table_are_reported() -> None:
    clock = Clock()
    m, metrics, _, _ = meter(clock)
    for labels in (("default", "chain.pipeline", "", ""), ("default", "Not_A_Name", "", ""), ("other", "iris", "", "")):
        metrics.observe(labels, "rest", "200", False, 0.01)
    clock.now += 1
    assert m.report("gw").models == []
