"""A small evaluator of Kubernetes NetworkPolicy semantics, for tests: may pod A open a TCP
connection to pod B on port P, given the policies rendered from k8s/?

The rules, from the API reference (networking.k8s.io/v1 NetworkPolicy):
- A pod selected by no policy of a type is non-isolated for that direction: everything allowed.
- A pod selected by at least one policy whose policyTypes include Ingress (Egress) is isolated
  for that direction: a connection is allowed only if some such policy has a rule admitting it.
  policyTypes defaults to [Ingress], plus Egress when the policy has egress rules.
- A rule with no `from`/`to` admits every peer; with no `ports`, every port.
- A peer with only podSelector selects pods in the policy's namespace; only namespaceSelector,
  every pod of the selected namespaces; both, pods matching both; ipBlock selects no pod here
  (cluster pod traffic is judged by selectors).
- A connection needs both the source's egress and the destination's ingress to allow it.
Selectors: matchLabels plus matchExpressions (In, NotIn, Exists, DoesNotExist); {} selects all.
Named ports are not supported (the stack uses numbers); such a port never matches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pod:
    """A pod as policies see it: its namespace and labels (as a sorted tuple, to be hashable)."""

    name: str
    namespace: str
    labels: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def of(cls, name: str, namespace: str, labels: Mapping[str, str] | None = None) -> Pod:
        return cls(name, namespace, tuple(sorted((labels or {}).items())))


def selects(selector: Mapping | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector against a label set; None selects nothing, {} everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _types(policy: Mapping) -> set[str]:
    spec = policy.get("spec") or {}
    declared = spec.get("policyTypes")
    if declared:
        return set(declared)
    return {"Ingress"} | ({"Egress"} if spec.get("egress") else set())


def _peer_selects(peer: Mapping, policy_namespace: str, pod: Pod, namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    pod_selector, namespace_selector = peer.get("podSelector"), peer.get("namespaceSelector")
    if pod_selector is None and namespace_selector is None:
        return False  # ipBlock only
    labels = dict(pod.labels)
    if namespace_selector is None:
        in_namespace = pod.namespace == policy_namespace
    else:
        in_namespace = selects(namespace_selector, namespaces.get(pod.namespace, {}))
    return in_namespace and (pod_selector is None or selects(pod_selector, labels))


def _port_matches(rule: Mapping, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        number = entry.get("port")
        if number is None:
            return True
        if isinstance(number, int) and number <= port <= entry.get("endPort", number):
            return True
    return False


def _direction_allows(
    policies: Iterable[Mapping],
    subject: Pod,
    peer: Pod,
    port: int,
    protocol: str,
    namespaces: Mapping[str, Mapping[str, str]],
    direction: str,
) -> bool:
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    isolating = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and direction in _types(p)
        and selects((p.get("spec") or {}).get("podSelector", {}), dict(subject.labels))
    ]
    if not isolating:
        return True
    for policy in isolating:
        for rule in (policy.get("spec") or {}).get(rules_key) or []:
            peers = rule.get(peers_key)
            if peers and not any(_peer_selects(x, policy["metadata"]["namespace"], peer, namespaces) for x in peers):
                continue
            if _port_matches(rule, port, protocol):
                return True
    return False


def allowed(
    policies: Iterable[Mapping],
    source: Pod,
    destination: Pod,
    port: int,
    *,
    namespaces: Mapping[str, Mapping[str, str]],
    protocol: str = "TCP",
) -> bool:
    """Whether `source` may connect to `destination`:`port`. `namespaces` maps each namespace to
    its labels (kubernetes.io/metadata.name is set by the API server on every namespace)."""
    policies = list(policies)
    return _direction_allows(policies, source, destination, port, protocol, namespaces, "Egress") and (
        _direction_allows(policies, destination, source, port, protocol, namespaces, "Ingress")
    )
