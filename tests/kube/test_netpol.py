"""The NetworkPolicy evaluator on the cases `berth doctor` must explain in one line each."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from berth.errors import InvalidInput
from berth.kube.flows import CONTROL_PLANE, GATEWAY, REPLICA, check, needed_flows, pod_labels
from berth.kube.netpol import Endpoint, Flow, evaluate
from berth.kube.selectors import matches, render

NS, SYS = "financial-ml", "berth-system"
NAMESPACES = {NS: {"kubernetes.io/metadata.name": NS, "team": "risk"},
              SYS: {"kubernetes.io/metadata.name": SYS}}
GATEWAY_PODS = Endpoint("gateway pods", NS, pod_labels(GATEWAY), ports={"http": 9000, "grpc": 9001})
REPLICAS = Endpoint("mlserver pods", NS, pod_labels(REPLICA, "mlserver"), ports={"http": 8080, "grpc": 8081})
CONTROL = Endpoint("control-plane pods", SYS, pod_labels(CONTROL_PLANE), ports={"http": 9004})


def policy(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec}
    kubernetes_validate.validate(doc, "1.30.0", strict=True)  # every case is a policy the API server accepts
    return doc


DEFAULT_DENY = policy("default-deny", NS, {"podSelector": {}, "policyTypes": ["Ingress"]})


def test_no_policy_admits_everything() -> None:
    verdict = evaluate(Flow("gateway → replicas", GATEWAY_PODS, REPLICAS, 8080), [], NAMESPACES)
    assert verdict.allowed and verdict.lines() == []


def test_default_deny_names_the_policy_and_the_rule_that_would_admit() -> None:
    verdict = evaluate(Flow("gateway → replicas", GATEWAY_PODS, REPLICAS, 8080), [DEFAULT_DENY], NAMESPACES)
    assert not verdict.allowed and verdict.egress.allowed
    [line] = verdict.lines()
    assert "financial-ml/default-deny" in line and "has no ingress rule" in line and "8080" in line
    assert verdict.ingress.add_to == "financial-ml/default-deny"
    # the suggested rule really admits the flow once added
    fixed = policy("default-deny", NS, {"podSelector": {}, "policyTypes": ["Ingress"],
                                        "ingress": [verdict.ingress.admitting_rule]})
    assert evaluate(verdict.flow, [fixed], NAMESPACES).allowed


def test_namespace_selector_on_a_label_the_namespace_lacks() -> None:
    rule = policy("from-ml", NS, {"podSelector": {}, "policyTypes": ["Ingress"],
                                  "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"name": NS}}}]}]})
    verdict = evaluate(Flow("gateway → replicas", GATEWAY_PODS, REPLICAS, 8080), [rule], NAMESPACES)
    [line] = verdict.lines()
    assert "financial-ml/from-ml ingress rule 1" in line
    assert f"namespaceSelector name={NS} does not match namespace {NS}" in line
    assert "missing name=financial-ml" in line
    assert "even pods of financial-ml are refused" in line and "`podSelector: {}`" in line
    # and that hint is right: podSelector {} beside it admits the same-namespace gateway
    fixed = policy("from-ml", NS, {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"name": NS}}}, {"podSelector": {}}]}]})
    assert evaluate(verdict.flow, [fixed], NAMESPACES).allowed
    # as does the label on the namespace
    labelled = {**NAMESPACES, NS: {**NAMESPACES[NS], "name": NS}}
    assert evaluate(verdict.flow, [rule], labelled).allowed


def test_wrong_port() -> None:
    rule = policy("gw-in", NS, {"podSelector": {"matchLabels": pod_labels(REPLICA, "mlserver")},
                                "ingress": [{"from": [{"podSelector": {"matchLabels": pod_labels(GATEWAY)}}],
                                             "ports": [{"port": 9000}]}]})
    verdict = evaluate(Flow("gateway → replicas", GATEWAY_PODS, REPLICAS, 8080), [rule], NAMESPACES)
    [line] = verdict.lines()
    assert "financial-ml/gw-in ingress rule 1 admits gateway pods but only on ports 9000/TCP, not 8080/TCP" in line
    assert "add port 8080/TCP" in line
    # named ports and ranges are understood
    named = policy("gw-in", NS, {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]})
    assert evaluate(verdict.flow, [named], NAMESPACES).allowed
    assert not evaluate(Flow("g", GATEWAY_PODS, REPLICAS, 8081), [named], NAMESPACES).allowed
    ranged = policy("r", NS, {"podSelector": {}, "ingress": [{"ports": [{"port": 8000, "endPort": 8090}]}]})
    assert evaluate(verdict.flow, [ranged], NAMESPACES).allowed
    udp = policy("u", NS, {"podSelector": {}, "ingress": [{"ports": [{"port": 8080, "protocol": "UDP"}]}]})
    assert not evaluate(verdict.flow, [udp], NAMESPACES).allowed


def test_egress_blocked_from_the_agents_pods() -> None:
    deny_out = policy("no-egress", NS, {"podSelector": {"matchExpressions": [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["server"]}]},
        "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]})
    verdict = evaluate(Flow("agent → control plane", REPLICAS, CONTROL, 9004), [deny_out], NAMESPACES)
    assert verdict.ingress.allowed and not verdict.egress.allowed
    [line] = verdict.lines()
    assert "financial-ml/no-egress" in line and "egress of mlserver pods" in line
    assert verdict.egress.admitting_rule == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": SYS}},
                "podSelector": {"matchLabels": pod_labels(CONTROL_PLANE)}}],
        "ports": [{"protocol": "TCP", "port": 9004}]}
    fixed = policy("no-egress", NS, {"podSelector": {}, "policyTypes": ["Egress"],
                                     "egress": [verdict.egress.admitting_rule]})
    assert evaluate(verdict.flow, [fixed], NAMESPACES).allowed
    # a pod the policy does not select (the gateway) is not isolated by it
    assert evaluate(Flow("gateway → control", GATEWAY_PODS, CONTROL, 9004), [deny_out], NAMESPACES).allowed


def test_peer_in_another_namespace_needs_a_namespace_selector() -> None:
    only_pods = policy("cp-in", SYS, {"podSelector": {}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": pod_labels(REPLICA, "mlserver")}}]}]})
    verdict = evaluate(Flow("agent → control plane", REPLICAS, CONTROL, 9004), [only_pods], NAMESPACES)
    assert "a podSelector alone matches pods of berth-system only, not of financial-ml" in verdict.lines()[0]
    both = policy("cp-in", SYS, {"podSelector": {}, "ingress": [{"from": [{
        "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "server"}}}]}]})
    assert evaluate(verdict.flow, [both], NAMESPACES).allowed


def test_clients_outside_the_cluster_and_ip_blocks() -> None:
    outside = Endpoint("client 203.0.113.7", None, ip="203.0.113.7")
    rule = policy("gw", NS, {"podSelector": {"matchLabels": pod_labels(GATEWAY)}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.0/29"]}}]}]})
    verdict = evaluate(Flow("client → gateway", outside, GATEWAY_PODS, 9000), [rule], NAMESPACES)
    assert "ipBlock excepts 203.0.113.0/29, which contains 203.0.113.7" in verdict.lines()[0]
    far = Endpoint("client 203.0.113.70", None, ip="203.0.113.70")
    assert evaluate(Flow("client → gateway", far, GATEWAY_PODS, 9000), [rule], NAMESPACES).allowed


def test_berths_flows_all_checked() -> None:
    flows = needed_flows(NS, ["mlserver", "triton"], control_namespace=SYS)
    names = [f.name for f in flows]
    assert "agent of mlserver → control plane" in names and "gateway → triton replicas (gRPC)" in names
    assert len(flows) == 1 + 3 * 2 + 2
    assert all(v.allowed for v in check(NS, ["mlserver"], [], NAMESPACES, control_namespace=SYS))
    verdicts = check(NS, ["mlserver"], [DEFAULT_DENY], NAMESPACES, control_namespace=SYS)
    blocked = [v.flow.name for v in verdicts if not v.allowed]
    # default-deny in the tenant namespace blocks what enters it, not what leaves it for the control plane
    assert blocked == ["gateway → mlserver replicas (REST)", "gateway → mlserver replicas (gRPC)",
                       f"client pods of {NS} → gateway (REST)", f"client pods of {NS} → gateway (gRPC)"]


def test_selectors() -> None:
    labels = {"app": "x", "tier": "web"}
    assert matches({}, labels) and matches(None, labels)
    assert matches({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]},
                                         {"key": "debug", "operator": "DoesNotExist"}]}, labels)
    assert not matches({"matchLabels": {"app": "y"}}, labels)
    assert render({"matchLabels": {"a": "b"}, "matchExpressions": [
        {"key": "t", "operator": "In", "values": ["x", "y"]}, {"key": "d", "operator": "DoesNotExist"}]}) == \
        "a=b,t in (x,y),!d"
    with pytest.raises(InvalidInput, match="operator 'Near'"):
        matches({"matchExpressions": [{"key": "a", "operator": "Near", "values": ["b"]}]}, labels)
