"""The dashboard's traffic figures from the gateway's exposition: sums, rates, quantiles, bounded series."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import generate_latest

from berth.control import ui_traffic
from berth.control.tokens import TokenRegistry
from berth.control.ui_traffic import Counts, Traffic, parse, quantile, sample
from berth.gateway.metrics import Metrics


def exposition(calls: list[tuple[tuple[str, str, str, str], str, bool, float]]) -> str:
    m = Metrics()
    for labels, code, error, seconds in calls:
        m.observe(labels, "rest", code, error, seconds)
    return generate_latest(m.registry).decode()


def test_parse_sums_models_and_experiment_splits() -> None:
    text = exposition([(("ns", "a", "", ""), "200", False, 0.004)] * 3
                      + [(("ns", "a", "", ""), "500", True, 0.2)]
                      + [(("ns", "b", "exp", "b"), "200", False, 0.01)] * 2
                      + [(("ns", "a", "exp", "a"), "200", False, 0.01)]
                      + [(("", "", "", ""), "404", True, 0.001)])  # unrouted: no namespace, never a series
    got = parse(text)
    assert set(got) == {("ns", "model", "a"), ("ns", "model", "b"), ("ns", "experiment", "exp")}
    a = got[("ns", "model", "a")]
    assert (a.requests, a.errors) == (5.0, 1.0) and a.split == {}
    assert got[("ns", "experiment", "exp")].split == {"b": 2.0, "a": 1.0}
    assert a.buckets[float("inf")] == 5.0


def test_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.001: 0.0, 0.005: 50.0, 0.01: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.005)
    assert quantile(0.99, buckets) == pytest.approx(0.0099)
    assert quantile(0.5, {float("inf"): 0.0}) is None
    assert quantile(0.5, {0.1: 0.0, float("inf"): 4.0}) == 0.1  # all above the last finite bucket


def test_sample_is_a_rate_between_scrapes() -> None:
    prev = Counts(requests=10, errors=1, buckets={0.01: 10, float("inf"): 10})
    cur = Counts(requests=30, errors=3, buckets={0.01: 30, float("inf"): 30})
    s = sample(prev, cur, 5.0, 1.0)
    assert s["rps"] == 4.0 and s["errors"] == 0.4 and 0 < s["p50"] <= 10.0
    restarted = sample(cur, Counts(requests=2), 5.0, 2.0)  # the gateway restarted: counters went down
    assert restarted["rps"] == 0.0


def test_series_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ui_traffic, "MAX_SERIES", 10)
    monkeypatch.setattr(ui_traffic, "SAMPLES", 3)
    reg = TokenRegistry(None)
    traffic = Traffic(reg, "127.0.0.1:1")
    texts = iter([exposition([((f"ns{i}", f"m{i}", "", ""), "200", False, 0.001) for i in range(25)])] * 6)

    class FakeResponse:
        status_code = 200

        async def __aenter__(self) -> FakeResponse:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def aiter_bytes(self) -> Any:
            yield next(texts).encode()

    class FakeHTTP:  # the gateway's answer; the parsing, rates and bounds are what is tested
        def stream(self, *a: object, **kw: object) -> FakeResponse:
            return FakeResponse()

    async def run() -> None:
        for _ in range(6):
            await traffic.scrape(FakeHTTP())  # type: ignore[arg-type]
            traffic.last_at -= 5.0

    asyncio.run(run())
    assert len(traffic.series) == 10 and all(len(r) <= 3 for r in traffic.series.values())
    assert reg.verify(traffic._token) is not None and reg.get(ui_traffic.METRICS_TOKEN_NAME).grants == {"*": "admin"}
    reg.close()
