"""The kind registry (k3stack/kinds.py) is the only place per-kind knowledge is written."""

import ast
from pathlib import Path

import yaml

from k3stack import deploy, kinds, readiness, settings
from k3stack import manifests as mf

ROOT = Path(__file__).resolve().parents[2]
BASE = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}


def kinds_in_k8s() -> set[tuple[str, str]]:
    """(apiVersion, kind) of every document under k8s/, templates included (${VAR} is a plain scalar)."""
    found = set()
    for path in (ROOT / "k8s").rglob("*.y*ml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.add((doc["apiVersion"], doc["kind"]))
    return found


def test_every_kind_in_k8s_and_every_generated_kind_is_registered():
    loaded = settings.load(env_dir=Path("/nonexistent"), environ=BASE)
    plan = deploy.make_plan(loaded, lambda namespace, name: None)
    used = kinds_in_k8s() | {(m.obj["apiVersion"], m.kind) for m in plan.manifests}
    assert {("apps/v1", "Deployment"), ("helm.cattle.io/v1", "HelmChart"), ("v1", "Secret")} <= used
    assert used - set(kinds.BY_KEY) == set()


def test_views_are_derived_from_the_registry():
    assert kinds.KNOWN[("apps/v1", "Deployment")].path("ns", "web") == "/apis/apps/v1/namespaces/ns/deployments/web"
    assert kinds.KNOWN[("v1", "Namespace")].path("ignored", "llm") == "/api/v1/namespaces/llm"
    assert {"PersistentVolumeClaim", "Secret", "Namespace"} == kinds.KEPT_KINDS
    assert not {k for k in kinds.PRUNABLE if k[1] in kinds.KEPT_KINDS}, "data and credentials are never pruned"
    assert {"Deployment", "StatefulSet", "DaemonSet", "HelmChart"} == kinds.WAITED_KINDS
    assert kinds.phase("Namespace") == 0 < kinds.phase("Secret") < kinds.phase("Deployment") < kinds.phase("Ingress")
    assert kinds.phase("SomethingNew") == kinds.LAST_PHASE


def test_secrets_and_volumes_come_before_the_workloads_that_mount_them():
    for first in ("Secret", "ConfigMap", "PersistentVolumeClaim", "ServiceAccount", "Service"):
        assert kinds.phase(first) < kinds.phase("Deployment"), first
    assert kinds.phase("NetworkPolicy") > kinds.phase("Namespace")


def test_rendered_manifests_follow_the_registry_phases():
    loaded = settings.load(env_dir=Path("/nonexistent"), environ=BASE)
    plan = deploy.make_plan(loaded, lambda namespace, name: None)
    phased = mf.phases(plan.manifests)
    for number, group in enumerate(phased):
        assert len({kinds.phase(m.kind) for m in group}) == 1, number
    order = [kinds.phase(group[0].kind) for group in phased]
    assert order == sorted(order)


def test_no_other_module_keeps_a_kind_table():
    """A literal collection naming two or more registered kinds outside kinds.py is a second table."""
    names = {k.kind for k in kinds.KINDS}
    offenders = []
    for path in (ROOT / "k3stack").rglob("*.py"):
        if path.name == "kinds.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                strings = {e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(strings & names) >= 2:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_core_and_group_kinds_live_at_their_rest_prefixes():
    assert kinds._core("pods") == kinds.Resource("/api/v1", "pods", True)
    assert kinds._core("nodes", False) == kinds.Resource("/api/v1", "nodes", False)
    assert kinds._group("apps/v1", "deployments") == kinds.Resource("/apis/apps/v1", "deployments", True)
    assert kinds._group(kinds.RBAC, "clusterroles", False) == kinds.Resource(
        "/apis/rbac.authorization.k8s.io/v1", "clusterroles", False
    )
    assert kinds._core("pods").path("llm-stack", "web") == "/api/v1/namespaces/llm-stack/pods/web"
    assert kinds._group("apps/v1", "deployments").path("x") == "/apis/apps/v1/namespaces/x/deployments"


def test_the_readiness_predicate_is_found_by_api_version_and_kind():
    assert kinds.status_of("apps/v1", "Deployment") is readiness.deployment_status
    assert kinds.status_of("batch/v1", "Job") is readiness.plain_job_status
    assert kinds.status_of("v1", "Deployment") is None  # the kind under another apiVersion is another kind
    assert kinds.status_of("apps/v1", "ReplicaSet") is None  # not registered
    assert kinds.status_of("helm.cattle.io/v1", "HelmChart") is None  # judged by its install Job instead
