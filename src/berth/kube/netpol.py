"""NetworkPolicy evaluation: may this flow pass, and if not, which policy blocks it and which rule would admit it.

Pure: documents in, verdicts out.  A flow passes when both ends let it: the source pod's egress and the
destination pod's ingress.  For each direction, as the Kubernetes API defines it:

- the pod is *isolated* in that direction when a NetworkPolicy of its namespace selects it
  (``spec.podSelector``) and lists the direction in ``policyTypes`` (default: ``Ingress``, plus ``Egress``
  when the policy has an ``egress`` section);
- an isolated pod admits the flow when some rule of some of those policies admits it: a peer matches
  (``podSelector`` in the policy's namespace, ``namespaceSelector`` against the namespaces' real labels,
  both together, or ``ipBlock``; no peers: everyone) and a port matches (``protocol`` default TCP, a number,
  a range with ``endPort``, or a named port of the destination pod; no ports: every port).

A blocked direction is explained in one line naming the policy and, when a rule comes close, what stops it
(the wrong port; a namespaceSelector on a label the namespace does not carry), with the rule that would
admit the flow (:attr:`Side.admitting_rule`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from berth.kube.selectors import Labels, matches, missing, render, render_labels

Direction = Literal["ingress", "egress"]
NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server (1.21+)


@dataclass(frozen=True)
class Endpoint:
    """One end of a flow: pods of a namespace with these labels, or an address outside the cluster."""

    description: str  # "agent pods of Server mlserver"
    namespace: str | None  # None: not a pod (a client outside the cluster)
    labels: Labels = field(default_factory=dict)
    ip: str | None = None
    ports: Mapping[str, int] = field(default_factory=dict)  # named container ports (destination side)


@dataclass(frozen=True)
class Flow:
    name: str  # "agent → control plane"
    source: Endpoint
    dest: Endpoint
    port: int
    protocol: str = "TCP"

    @property
    def port_text(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Side:
    """The verdict of one direction (the source's egress, or the destination's ingress)."""

    direction: Direction
    allowed: bool
    isolating: tuple[str, ...] = ()  # namespace/name of the policies that select the pod for this direction
    admitted_by: str | None = None  # "ns/policy ingress rule 2"
    reason: str = ""  # one line, for a blocked direction
    admitting_rule: dict[str, Any] | None = None  # a rule that would admit the flow
    add_to: str | None = None  # the policy to add it to


@dataclass(frozen=True)
class Verdict:
    flow: Flow
    egress: Side
    ingress: Side

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed

    def lines(self) -> list[str]:
        """One line per blocked direction (none when the flow passes)."""
        head = f"{self.flow.name} ({self.flow.port_text})"
        return [f"{head}: {side.reason}" for side in (self.egress, self.ingress) if not side.allowed]


def _policy_id(policy: Mapping[str, Any]) -> str:
    meta = policy.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def policy_types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy.get("spec") or {}
    if spec.get("policyTypes"):
        return [str(t) for t in spec["policyTypes"]]
    return ["Ingress", "Egress"] if spec.get("egress") is not None else ["Ingress"]


def _selects(policy: Mapping[str, Any], pod: Endpoint, direction: Direction) -> bool:
    meta = policy.get("metadata") or {}
    spec = policy.get("spec") or {}
    return (pod.namespace is not None and meta.get("namespace", "default") == pod.namespace
            and direction.capitalize() in policy_types(policy)
            and matches(spec.get("podSelector") or {}, pod.labels, f"{_policy_id(policy)} spec.podSelector"))


def _peer_miss(peer: Mapping[str, Any], other: Endpoint, policy_ns: str,
               namespaces: Mapping[str, Labels]) -> str | None:
    """None when ``peer`` matches ``other``, else why not (one clause)."""
    if "ipBlock" in peer:
        block = peer["ipBlock"] or {}
        if other.ip is None:
            return f"ipBlock {block.get('cidr')} matches addresses and {other.description} has none known"
        addr = ipaddress.ip_address(other.ip)
        if addr not in ipaddress.ip_network(str(block.get("cidr")), strict=False):
            return f"ipBlock {block.get('cidr')} does not contain {other.ip}"
        for cidr in block.get("except") or []:
            if addr in ipaddress.ip_network(str(cidr), strict=False):
                return f"ipBlock excepts {cidr}, which contains {other.ip}"
        return None
    if other.namespace is None:
        return f"pod and namespace selectors match pods only, and {other.description} is outside the cluster"
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is not None:
        ns_labels = namespaces.get(other.namespace, {NAME_LABEL: other.namespace})
        if not matches(ns_sel, ns_labels):
            return (f"namespaceSelector {render(ns_sel)} does not match namespace {other.namespace} "
                    f"(its labels: {render_labels(ns_labels)}; missing {', '.join(missing(ns_sel, ns_labels))})")
    elif other.namespace != policy_ns:
        return f"a podSelector alone matches pods of {policy_ns} only, not of {other.namespace}"
    pod_sel = peer.get("podSelector")
    if pod_sel is not None and not matches(pod_sel, other.labels):
        return (f"podSelector {render(pod_sel)} does not match {other.description} "
                f"(labels {render_labels(other.labels)})")
    return None


def _port_matches(entry: Mapping[str, Any], flow: Flow) -> bool:
    if str(entry.get("protocol") or "TCP") != flow.protocol:
        return False
    port = entry.get("port")
    if port is None:
        return True
    if isinstance(port, str) and not port.isdigit():
        return flow.dest.ports.get(port) == flow.port
    low = int(port)
    high = int(entry.get("endPort") or low)
    return low <= flow.port <= high


def _ports_text(ports: Sequence[Mapping[str, Any]]) -> str:
    out = []
    for p in ports:
        number = f"{p.get('port', 'any')}" + (f"-{p['endPort']}" if p.get("endPort") else "")
        out.append(f"{number}/{p.get('protocol') or 'TCP'}")
    return ", ".join(out)


def peer_for(other: Endpoint, policy_ns: str) -> dict[str, Any]:
    """The narrowest peer that admits ``other`` in a policy of ``policy_ns``."""
    if other.namespace is None:
        return {"ipBlock": {"cidr": f"{other.ip}/32" if other.ip else "0.0.0.0/0"}}
    pods: dict[str, Any] = {"matchLabels": dict(other.labels)} if other.labels else {}
    if other.namespace == policy_ns:
        return {"podSelector": pods}
    return {"namespaceSelector": {"matchLabels": {NAME_LABEL: other.namespace}}, "podSelector": pods}


def evaluate_side(flow: Flow, direction: Direction, policies: Sequence[Mapping[str, Any]],
                  namespaces: Mapping[str, Labels]) -> Side:
    pod, other = (flow.dest, flow.source) if direction == "ingress" else (flow.source, flow.dest)
    if pod.namespace is None:  # outside the cluster: no policy applies to it
        return Side(direction, True)
    isolating = [p for p in policies if _selects(p, pod, direction)]
    if not isolating:
        return Side(direction, True)
    ids = tuple(_policy_id(p) for p in isolating)
    peers_key = "from" if direction == "ingress" else "to"
    near: list[tuple[int, str, str]] = []  # (rank, policy id, clause): lower rank = closer to admitting
    for policy in isolating:
        pid, ns = _policy_id(policy), str((policy.get("metadata") or {}).get("namespace", "default"))
        for index, rule in enumerate((policy.get("spec") or {}).get(direction) or [], start=1):
            peers = rule.get(peers_key) or []
            misses = [_peer_miss(peer, other, ns, namespaces) for peer in peers]
            peer_ok = not peers or any(m is None for m in misses)
            ports = rule.get("ports") or []
            port_ok = not ports or any(_port_matches(p, flow) for p in ports)
            where = f"{pid} {direction} rule {index}"
            if peer_ok and port_ok:
                return Side(direction, True, ids, admitted_by=where)
            if peer_ok:
                near.append((0, pid, f"{where} admits {other.description} but only on ports "
                                     f"{_ports_text(ports)}, not {flow.port_text}; add port {flow.port_text} to it"))
            elif port_ok:
                clause = "; ".join(m for m in misses if m)
                hint = ""
                ns_only = [p for p in peers if set(p) == {"namespaceSelector"}]
                if ns_only and other.namespace == ns and len(ns_only) == len(peers):
                    hint = (f", so even pods of {ns} are refused; a peer `podSelector: {{}}` in this rule would "
                            f"admit pods of {ns} (or label namespace {ns} to match)")
                near.append((1, pid, f"{where} has the port but no peer matching {other.description}: "
                                     f"{clause}{hint}"))
    rule = {peers_key: [peer_for(other, pod.namespace)],
            "ports": [{"protocol": flow.protocol, "port": flow.port}]}
    verb = "leave" if direction == "egress" else "reach"
    subject = f"{direction} of {pod.description}" if direction == "egress" else f"ingress to {pod.description}"
    if near:
        near.sort(key=lambda n: n[0])
        _, add_to, clause = near[0]
        reason = f"blocked ({subject}): NetworkPolicy {clause}"
    else:
        add_to = ids[0]
        ruleless = [i for i, p in zip(ids, isolating, strict=True) if not (p.get("spec") or {}).get(direction)]
        if len(ruleless) == len(ids):
            reason = (f"blocked by NetworkPolicy {', '.join(ids)} ({subject}): it selects {pod.description} and "
                      f"has no {direction} rule, so it denies all {direction}; traffic cannot {verb} it until a "
                      f"rule admits it: {direction}: [{_inline(rule)}]")
        else:
            reason = (f"blocked by NetworkPolicy {', '.join(ids)} ({subject}): no {direction} rule admits "
                      f"{other.description} on {flow.port_text}; add: {direction}: [{_inline(rule)}]")
    return Side(direction, False, ids, reason=reason, admitting_rule=rule, add_to=add_to)


def _inline(value: Any) -> str:
    """YAML flow style on one line: ``{from: [{podSelector: {}}], ports: [{port: 9004}]}``."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return str(value)


def evaluate(flow: Flow, policies: Sequence[Mapping[str, Any]], namespaces: Mapping[str, Labels]) -> Verdict:
    """The verdict on ``flow`` under ``policies`` (of every namespace concerned) and the namespaces' labels."""
    return Verdict(flow, evaluate_side(flow, "egress", policies, namespaces),
                   evaluate_side(flow, "ingress", policies, namespaces))
