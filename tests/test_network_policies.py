"""Who can reach whom, computed from the NetworkPolicies deploy would apply (tests/netpol.py),
against the intended matrix: only Open WebUI reaches PostgreSQL:5432 and Redis:6379 (and the scheduled
backup's pods PostgreSQL, nothing else; nothing reaches them); Ollama:11434
only from Open WebUI and the in-cluster pull Job; Open WebUI:8080 only from Traefik; the Netdata
parent's :19999 (the dashboard, no login of its own) only from Traefik and Netdata's own pods;
nothing else. A policy widened (a `from` to every pod, a namespace instead of Traefik) fails here."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from k3stack import deploy as stack
from k3stack import pulljob, settings
from tests.netpol import Pod, allowed, selects

STACK, MONITORING = "llm-stack", "monitoring"
SETTINGS = {
    "DOMAIN": "203.0.113.10.sslip.io",
    "ACME_EMAIL": "ops@example.com",
    "STACK_NAMESPACE": STACK,
    "MONITORING_NAMESPACE": MONITORING,
}
SERVICES = {"postgres": 5432, "redis": 6379, "ollama": 11434, "open-webui": 8080, "netdata-parent": 19999}
INTENDED = {
    ("open-webui", "postgres"),
    ("postgres-backup", "postgres"),
    ("open-webui", "redis"),
    ("open-webui", "ollama"),
    ("ollama-pull", "ollama"),
    ("traefik", "open-webui"),
    ("traefik", "netdata-parent"),
    ("netdata-k8s-state", "netdata-parent"),
}
# The pods Netdata's chart makes (release `netdata`), with the labels of its templates.
NETDATA = {
    "netdata-parent": {"app": "netdata", "release": "netdata", "role": "parent"},
    "netdata-k8s-state": {"app": "netdata", "release": "netdata", "role": "k8sState"},
}


def pod_template(workload: dict) -> dict:
    """The pod template of a workload (a CronJob's inside its job template)."""
    spec = workload["spec"]
    return (spec["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else spec)["template"]


@pytest.fixture(scope="module")
def cluster():
    loaded = settings.load(env_dir=Path("/nonexistent"), environ=SETTINGS)
    objects = [m.obj for m in stack.make_plan(loaded, lambda namespace, name: None).manifests]
    objects.append(pulljob.job_manifest(loaded, ["llama3.2:1b"]).obj)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = [
        Pod.of(
            o["metadata"]["labels"].get("app.kubernetes.io/name", o["metadata"]["name"]),
            o["metadata"]["namespace"],
            pod_template(o)["metadata"]["labels"],
        )
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
        and o["metadata"]["namespace"] == STACK
    ]
    others = [
        Pod.of(
            "traefik",
            "kube-system",
            {"app.kubernetes.io/name": "traefik", "app.kubernetes.io/instance": "traefik-kube-system"},
        ),
        Pod.of("coredns", "kube-system", {"k8s-app": "kube-dns"}),
        Pod.of("stranger", STACK, {"app": "debug"}),
        Pod.of("other-team", "default", {"app.kubernetes.io/name": "open-webui"}),  # same labels, other namespace
        *(Pod.of(name, MONITORING, labels) for name, labels in NETDATA.items()),
        Pod.of("monitoring-stranger", MONITORING, {"app": "debug"}),
        Pod.of("other-netdata", "default", NETDATA["netdata-k8s-state"]),  # Netdata's labels, other namespace
        Pod.of("another-release", MONITORING, {"app": "netdata", "release": "other", "role": "child"}),
    ]
    namespaces = {ns: {"kubernetes.io/metadata.name": ns} for ns in ("kube-system", "default", STACK, "monitoring")}
    return policies, pods + others, namespaces


def test_the_stack_pods_are_all_known(cluster):
    _, pods, _ = cluster
    assert {p.name for p in pods} >= {"postgres", "redis", "ollama", "open-webui", "ollama-pull", "postgres-backup"}


def test_who_reaches_whom_is_exactly_the_intended_matrix(cluster):
    policies, pods, namespaces = cluster
    reached = {
        (source.name, destination.name)
        for source, destination in itertools.product(pods, pods)
        if destination.namespace in (STACK, MONITORING)
        and destination.name in SERVICES
        and source is not destination
        and allowed(policies, source, destination, SERVICES[destination.name], namespaces=namespaces)
    }
    assert reached == INTENDED, f"unexpected: {sorted(reached - INTENDED)}; missing: {sorted(INTENDED - reached)}"


def test_other_ports_are_closed_even_for_allowed_peers(cluster):
    policies, pods, namespaces = cluster
    by_name = {p.name: p for p in pods}
    assert not allowed(policies, by_name["open-webui"], by_name["postgres"], 22, namespaces=namespaces)
    assert not allowed(policies, by_name["traefik"], by_name["open-webui"], 9090, namespaces=namespaces)
    assert not allowed(policies, by_name["traefik"], by_name["netdata-parent"], 8125, namespaces=namespaces)
    # the backup reaches PostgreSQL's port only; nothing reaches the backup's pods
    assert not allowed(policies, by_name["postgres-backup"], by_name["redis"], 6379, namespaces=namespaces)
    assert not allowed(policies, by_name["postgres-backup"], by_name["postgres"], 22, namespaces=namespaces)
    for source in ("open-webui", "postgres", "traefik", "stranger"):
        for port in (22, 5432, 8080):
            assert not allowed(policies, by_name[source], by_name["postgres-backup"], port, namespaces=namespaces)
    # the rest of the monitoring namespace takes nothing (default deny), not even from Traefik
    assert not allowed(policies, by_name["traefik"], by_name["netdata-k8s-state"], 19999, namespaces=namespaces)


# -- the evaluator itself ----------------------------------------------------------------------------
def policy(namespace, selector, ingress=None, types=None, egress=None):
    spec = {"podSelector": selector}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    if types:
        spec["policyTypes"] = types
    return {"metadata": {"namespace": namespace, "name": "p"}, "spec": spec}


NS = {"a": {"kubernetes.io/metadata.name": "a"}, "b": {"kubernetes.io/metadata.name": "b", "team": "x"}}
WEB, DB, B_POD = Pod.of("web", "a", {"app": "web"}), Pod.of("db", "a", {"app": "db"}), Pod.of("b", "b", {"app": "web"})


def test_no_policy_allows_everything_and_an_empty_ingress_list_denies():
    assert allowed([], WEB, DB, 5432, namespaces=NS)
    assert not allowed([policy("a", {}, ingress=[])], WEB, DB, 5432, namespaces=NS)
    assert not allowed([policy("a", {})], WEB, DB, 5432, namespaces=NS)  # policyTypes defaults to Ingress


def test_peers_pod_selector_is_namespaced_and_both_selectors_must_match():
    only_web = policy(
        "a", {"matchLabels": {"app": "db"}}, ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]
    )
    assert allowed([only_web], WEB, DB, 1, namespaces=NS)
    assert not allowed([only_web], B_POD, DB, 1, namespaces=NS)  # same labels, other namespace
    both = policy(
        "a",
        {},
        ingress=[
            {
                "from": [
                    {"namespaceSelector": {"matchLabels": {"team": "x"}}, "podSelector": {"matchLabels": {"app": "db"}}}
                ]
            }
        ],
    )
    assert not allowed([both], B_POD, DB, 1, namespaces=NS)
    assert allowed([both], Pod.of("bdb", "b", {"app": "db"}), DB, 1, namespaces=NS)


def test_ports_and_egress():
    port = policy("a", {}, ingress=[{"ports": [{"port": 5432, "protocol": "TCP"}]}])
    assert allowed([port], B_POD, DB, 5432, namespaces=NS)
    assert not allowed([port], B_POD, DB, 5433, namespaces=NS)
    assert not allowed([port], B_POD, DB, 5432, namespaces=NS, protocol="UDP")
    no_egress = policy("a", {"matchLabels": {"app": "web"}}, types=["Egress"])
    assert not allowed([no_egress], WEB, DB, 5432, namespaces=NS)


def test_selector_expressions():
    labels = {"tier": "db", "env": "prod"}
    assert selects({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db", "cache"]}]}, labels)
    assert not selects({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}, labels)
    assert selects({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, labels)
    assert selects({}, labels)
    assert not selects(None, labels)
