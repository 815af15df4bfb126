"""The routing core: direct models, experiments by name and by default, weighted split, sticky, mirror."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from berth.errors import BerthError, ModelNotReady, NotFound, Unavailable
from berth.gateway.routing.router import Router, weighted_index
from berth.wire.routes import Candidate, Endpoint, ExperimentRoute, ModelRoute, RoutingTable

A, B = "10.0.0.1:9500", "10.0.0.2:9500"


def model(name: str, *addresses: str, namespace: str = "default", state: str = "ModelAvailable",
          reason: str = "") -> ModelRoute:
    return ModelRoute(namespace=namespace, name=name, state=state, reason=reason,
                      endpoints=[Endpoint(server="mlserver", replica=i, http=a, grpc=a.replace("9500", "9501"))
                                 for i, a in enumerate(addresses)])


def experiment(name: str, weights: dict[str, int], *, default: str | None = None, mirror: str | None = None,
               percent: int = 0, ready: bool = True, reason: str = "", namespace: str = "default") -> ExperimentRoute:
    return ExperimentRoute(namespace=namespace, name=name, default=default, mirror=mirror, mirror_percent=percent,
                           candidates=[Candidate(name=n, weight=w) for n, w in weights.items()], ready=ready,
                           reason=reason)


def router(*experiments: ExperimentRoute, seed: int = 7) -> Router:
    models = [model("iris", A, B), model("iris2", A), model("iris3", B), model("shadow", B),
              model("broken", state="LoadFailed", reason="replica mlserver/0: bad model")]
    return Router(RoutingTable(revision=1, models=models, experiments=list(experiments)), rng=random.Random(seed))


def shares(r: Router, name: str, n: int = 10_000, header: str | None = None) -> dict[str, float]:
    counts = Counter(r.decide("default", name, header).candidate for _ in range(n))
    return {k: v / n for k, v in counts.items()}


def test_direct_model_answers_its_own_route_with_precomputed_decision() -> None:
    r = router()
    d = r.decide("default", "iris")
    assert d.target.name == "iris" and d.target.addresses == (A, B)
    assert d.route == ":iris:" and d.mirror is None and d.experiment == "" and d.candidate == ""
    assert d.labels == ("default", "iris", "", "")
    assert r.decide("default", "iris") is d  # nothing allocated per request
    assert d.target.grpc[A] == "10.0.0.1:9501"


def test_unknown_and_not_ready_models_say_why() -> None:
    r = router(experiment("ab", {"iris": 1, "iris2": 1}))
    with pytest.raises(NotFound, match="model nosuch not found in namespace default; models here: broken, iris, "
                                       "iris2, iris3, shadow"):
        r.decide("default", "nosuch")
    with pytest.raises(NotFound, match="namespace other; models here: none"):
        r.decide("other", "iris")
    with pytest.raises(ModelNotReady, match="model broken in namespace default is not ready: LoadFailed: "
                                            "replica mlserver/0: bad model"):
        r.decide("default", "broken")
    with pytest.raises(NotFound, match="experiment nope not found in namespace default; experiments here: ab"):
        r.decide("default", "nope.experiment")
    with pytest.raises(Unavailable, match="no routing table yet"):
        Router().decide("default", "iris")


@pytest.mark.parametrize("weights", [{"iris": 70, "iris2": 30}, {"iris": 50, "iris2": 30, "iris3": 20},
                                     {"iris": 1, "iris2": 1}, {"iris": 999, "iris2": 1}])
def test_weighted_split_over_10000_requests_is_within_2_points(weights: dict[str, int]) -> None:
    r = router(experiment("ab", weights))
    got = shares(r, "ab.experiment")
    total = sum(weights.values())
    for name, weight in weights.items():
        assert abs(got.get(name, 0.0) - weight / total) <= 0.02, (name, got)


def test_weighted_index_edges() -> None:
    cumulative, total = (70.0, 100.0), 100.0
    assert weighted_index(cumulative, total, 0.0) == 0
    assert weighted_index(cumulative, total, 0.6999) == 0
    assert weighted_index(cumulative, total, 0.70) == 1
    assert weighted_index(cumulative, total, 0.999999) == 1
    assert weighted_index((0.0, 5.0, 5.0), 5.0, 0.0) == 1  # a zero weight never wins


def test_zero_weight_candidate_gets_no_traffic_but_stays_reachable_by_sticky_route() -> None:
    r = router(experiment("ab", {"iris": 10, "iris2": 0}))
    assert shares(r, "ab.experiment", 2000) == {"iris": 1.0}
    assert r.decide("default", "ab.experiment", ":ab.experiment:iris2:").candidate == "iris2"


def test_experiment_route_names_experiment_and_candidate_and_sticky_header_returns_there() -> None:
    r = router(experiment("ab", {"iris": 50, "iris2": 50}))
    first = r.decide("default", "ab.experiment")
    assert first.route == f":ab.experiment:{first.candidate}:"
    assert first.labels == ("default", first.candidate, "ab", first.candidate)
    for _ in range(200):
        again = r.decide("default", "ab.experiment", first.route)
        assert again.candidate == first.candidate
    # Seldon's bare form of a model route works as well; a route naming no candidate is ignored
    assert r.decide("default", "ab.experiment", ":iris2:").candidate == "iris2"
    assert set(shares(r, "ab.experiment", 400, header=":unrelated:")) == {"iris", "iris2"}


def test_default_model_is_taken_over_only_while_the_experiment_is_ready() -> None:
    ready = router(experiment("ab", {"iris": 50, "iris2": 50}, default="iris"))
    assert set(shares(ready, "iris", 400)) == {"iris", "iris2"}
    assert ready.decide("default", "iris", ":ab.experiment:iris2:").target.name == "iris2"
    assert ready.decide("default", "iris2").route == ":iris2:"  # a candidate by its own name is direct
    waiting = router(experiment("ab", {"iris": 50, "iris2": 50}, default="iris", ready=False,
                                reason="candidate model iris2 is not ready: ModelProgressing"))
    d = waiting.decide("default", "iris")
    assert d.route == ":iris:" and d.experiment == ""
    with pytest.raises(BerthError) as info:
        waiting.decide("default", "ab.experiment")
    err = info.value
    assert err.code == "ExperimentNotReady" and err.http_status == 503
    assert err.message.startswith("experiment ab in namespace default is not ready: candidate model iris2 is not "
                                  "ready: ModelProgressing")
    assert err.details == {"experiment": "ab", "namespace": "default",
                           "reason": "candidate model iris2 is not ready: ModelProgressing"}


def test_experiment_naming_a_model_missing_from_the_table_is_not_ready() -> None:
    r = router(experiment("ab", {"iris": 1, "ghost": 1}))
    with pytest.raises(Unavailable, match=r"model\(s\) ghost not in the gateway's routing table"):
        r.decide("default", "ab.experiment")


def test_candidate_without_replicas_is_model_not_ready() -> None:
    r = router(experiment("ab", {"broken": 1}))
    with pytest.raises(ModelNotReady, match="model broken in namespace default is not ready"):
        r.decide("default", "ab.experiment")


@pytest.mark.parametrize("percent", [0, 25, 100])
def test_mirror_gets_its_percent_of_requests(percent: int) -> None:
    r = router(experiment("ab", {"iris": 1, "iris2": 1}, mirror="shadow", percent=percent))
    n = 4000
    decisions = [r.decide("default", "ab.experiment") for _ in range(n)]
    mirrored = [d for d in decisions if d.mirror is not None]
    assert abs(len(mirrored) / n - percent / 100) <= 0.03
    assert all(d.mirror is not None and d.mirror.name == "shadow" for d in mirrored)
    assert all(d.mirror_labels == ("default", "shadow", "ab", "") for d in mirrored)


def test_experiments_stay_in_their_namespace_and_a_new_table_replaces_the_old() -> None:
    r = router(experiment("ab", {"iris": 1, "iris2": 1}))
    with pytest.raises(NotFound):
        r.decide("prod", "ab.experiment")
    called: list[int] = []
    r.listeners.append(lambda: called.append(r.revision))
    r.set(RoutingTable(revision=2, models=[model("iris", A)]))
    assert called == [2]
    with pytest.raises(NotFound, match="experiments here: none"):
        r.decide("default", "ab.experiment")
    assert r.decide("default", "iris").target.addresses == (A,)
    assert r.grpc_addresses == frozenset({"10.0.0.1:9501"})
