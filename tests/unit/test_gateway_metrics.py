"""Gateway metrics: counters and histogram per route, errors, cached children, bounded labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from berth.errors import ModelNotReady, NotFound, Unavailable
from berth.gateway.metrics import UNROUTED, Metrics, error_labels


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_requests_errors_and_latency_per_route_and_protocol() -> None:
    m = Metrics()
    exp = ("default", "iris2", "ab", "iris2")
    for _ in range(3):
        m.observe(exp, "rest", "200", False, 0.0015)
    m.observe(exp, "grpc", "NOT_FOUND", True, 0.0002)
    got = samples(m)
    labels = (("candidate", "iris2"), ("code", "200"), ("experiment", "ab"), ("model", "iris2"),
              ("namespace", "default"), ("protocol", "rest"))
    assert got[("berth_gateway_requests_total", labels)] == 3
    assert ("berth_gateway_request_errors_total", labels) not in got or \
        got[("berth_gateway_request_errors_total", labels)] == 0
    grpc_labels = tuple(sorted({**dict(labels), "code": "NOT_FOUND", "protocol": "grpc"}.items()))
    assert got[("berth_gateway_request_errors_total", grpc_labels)] == 1
    hist = {k: v for k, v in labels if k != "code"}
    assert got[("berth_gateway_request_duration_seconds_count", tuple(sorted(hist.items())))] == 3
    for le, count in (("0.002", 3), ("0.001", 0)):
        bucket = tuple(sorted({**hist, "le": le}.items()))
        assert got[("berth_gateway_request_duration_seconds_bucket", bucket)] == count


def test_children_are_cached_per_label_set() -> None:
    m = Metrics()
    m.observe(("default", "iris", "", ""), "rest", "200", False, 0.001)
    cached = dict(m._children)
    m.observe(("default", "iris", "", ""), "rest", "200", False, 0.001)
    assert m._children == cached and len(cached) == 1


def test_unknown_names_do_not_become_labels_but_known_not_ready_ones_do() -> None:
    assert error_labels(NotFound("x", details={"model": "random-123", "namespace": "default"})) == UNROUTED
    assert error_labels(Unavailable("no table", details={"model": "random", "namespace": "x"})) == UNROUTED
    assert error_labels(ModelNotReady("m", details={"model": "wine", "namespace": "default"})) == \
        ("default", "wine", "", "")
    assert error_labels(Unavailable("e", details={"experiment": "ab", "namespace": "default"},
                                    code="ExperimentNotReady")) == ("default", "", "ab", "")


def test_mirror_outcomes_are_counted_and_each_gateway_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.mirrored(("default", "shadow", "ab", ""), "rest", "ok")
    a.mirrored(("default", "shadow", "ab", ""), "rest", "dropped")
    got = samples(a)
    key = (("experiment", "ab"), ("model", "shadow"), ("namespace", "default"), ("outcome", "ok"), ("protocol", "rest"))
    assert got[("berth_gateway_mirror_requests_total", key)] == 1
    assert not any(name == "berth_gateway_mirror_requests_total" for name, _ in samples(b))
